"""Tests for rlhfkit.losses.policy against hand-computed values.

Reference formulas:
    ρ = exp(logp - old_logp)
    policy loss  = -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)·A)
        d/dlogp  = -ρA where the unclipped branch is the min (dρ/dlogp = ρ), 0 where clipped
    value loss   = ½·max((V-R)², (clip(V, V_old-c, V_old+c) - R)²)
        d/dV     = V - R where the unclipped term wins, 0 where the saturated clipped term wins
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.losses.policy import aggregate, clipped_surrogate, clipped_value_loss


def _logp_for_ratio(ratios, dtype=torch.float64):
    old = torch.tensor([-1.0, -2.5, -0.3, -4.0, -1.7, -0.9, -2.0, -3.3][: len(ratios)], dtype=dtype)
    logp = (old + torch.log(torch.tensor(ratios, dtype=dtype))).detach().requires_grad_(True)
    return logp, old


# --------------------------------------------------------------------------- clipped surrogate

# ε = 0.2 symmetric; (ρ, A) -> (loss, clipped, d loss / d logp)
#   ρ=1.5, A=+1: ρA=1.5, clip=1.2·1=1.2  -> min 1.2  -> loss -1.2, clipped, grad 0
#   ρ=1.5, A=-1: ρA=-1.5, clip=-1.2      -> min -1.5 -> loss  1.5, free,    grad -ρA = 1.5
#   ρ=0.5, A=+1: ρA=0.5, clip=0.8        -> min 0.5  -> loss -0.5, free,    grad -0.5
#   ρ=0.5, A=-1: ρA=-0.5, clip=-0.8      -> min -0.8 -> loss  0.8, clipped, grad 0
#   ρ=1.1, A=+2: inside range            -> loss -2.2, free, grad -2.2
#   ρ=0.9, A=-2: inside range            -> loss  1.8, free, grad  1.8
#   ρ=3.0, A=0 : both branches 0         -> loss 0, not clipped (nothing removed), grad 0
SYM_RATIOS = [1.5, 1.5, 0.5, 0.5, 1.1, 0.9, 3.0]
SYM_ADV = [1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 0.0]
SYM_LOSS = [-1.2, 1.5, -0.5, 0.8, -2.2, 1.8, 0.0]
SYM_CLIPPED = [True, False, False, True, False, False, False]
SYM_GRAD = [0.0, 1.5, -0.5, 0.0, -2.2, 1.8, 0.0]


def test_surrogate_symmetric_values_mask_grad():
    logp, old = _logp_for_ratio(SYM_RATIOS)
    adv = torch.tensor(SYM_ADV, dtype=torch.float64)
    loss, ratio, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.2)
    np.testing.assert_allclose(ratio.numpy(), SYM_RATIOS, rtol=1e-12)
    np.testing.assert_allclose(loss.detach().numpy(), SYM_LOSS, rtol=1e-12, atol=1e-12)
    assert clipped.tolist() == SYM_CLIPPED
    assert not ratio.requires_grad and not clipped.requires_grad
    loss.sum().backward()
    np.testing.assert_allclose(logp.grad.numpy(), SYM_GRAD, rtol=1e-12, atol=1e-12)
    # gradient is exactly zero on clipped tokens
    assert torch.all(logp.grad[clipped] == 0)


def test_surrogate_default_eps_is_0_2():
    logp, old = _logp_for_ratio(SYM_RATIOS)
    adv = torch.tensor(SYM_ADV, dtype=torch.float64)
    loss, _, clipped = clipped_surrogate(logp, old, adv)
    np.testing.assert_allclose(loss.detach().numpy(), SYM_LOSS, rtol=1e-12, atol=1e-12)
    assert clipped.tolist() == SYM_CLIPPED


# clip-higher: ε_low = 0.2, ε_high = 0.28 -> range [0.8, 1.28]
#   ρ=1.25, A=+1: inside (would be clipped at 1.2 with ε_high=0.2) -> loss -1.25, free, grad -1.25
#   ρ=1.3,  A=+1: clip 1.28 < 1.3       -> loss -1.28, clipped, grad 0
#   ρ=0.75, A=-1: ρA=-0.75, clip=-0.8   -> min -0.8 -> loss 0.8, clipped, grad 0
#   ρ=0.85, A=-1: inside                -> loss 0.85, free, grad 0.85
#   ρ=1.3,  A=-1: ρA=-1.3 < -1.28       -> loss 1.3, free, grad 1.3
ASYM_RATIOS = [1.25, 1.3, 0.75, 0.85, 1.3]
ASYM_ADV = [1.0, 1.0, -1.0, -1.0, -1.0]
ASYM_LOSS = [-1.25, -1.28, 0.8, 0.85, 1.3]
ASYM_CLIPPED = [False, True, True, False, False]
ASYM_GRAD = [-1.25, 0.0, 0.0, 0.85, 1.3]


def test_surrogate_clip_higher():
    logp, old = _logp_for_ratio(ASYM_RATIOS)
    adv = torch.tensor(ASYM_ADV, dtype=torch.float64)
    loss, _, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    np.testing.assert_allclose(loss.detach().numpy(), ASYM_LOSS, rtol=1e-12, atol=1e-12)
    assert clipped.tolist() == ASYM_CLIPPED
    loss.sum().backward()
    np.testing.assert_allclose(logp.grad.numpy(), ASYM_GRAD, rtol=1e-12, atol=1e-12)

    # the same ρ=1.25, A=+1 token is clipped with symmetric ε = 0.2
    logp2, old2 = _logp_for_ratio([1.25])
    loss2, _, clipped2 = clipped_surrogate(logp2, old2, torch.tensor([1.0], dtype=torch.float64))
    assert loss2.item() == pytest.approx(-1.2)
    assert clipped2.tolist() == [True]


def test_surrogate_ratio_exactly_one_on_policy():
    logp = torch.tensor([-0.7, -3.2, -12.0, -0.001], requires_grad=True)
    old = logp.detach().clone()
    adv = torch.tensor([1.5, -0.5, 2.0, 0.0])
    loss, ratio, clipped = clipped_surrogate(logp, old, adv, eps_low=0.1, eps_high=0.3)
    assert torch.equal(ratio, torch.ones(4))
    assert torch.equal(loss.detach(), -adv)
    assert not clipped.any()
    loss.sum().backward()
    # ρ = 1: d/dlogp = -A
    assert torch.allclose(logp.grad, -adv)


def test_surrogate_matches_numpy_on_random():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(200, generator=g, dtype=torch.float64) * 5
    logp = (old + torch.randn(200, generator=g, dtype=torch.float64) * 0.4).requires_grad_(True)
    adv = torch.randn(200, generator=g, dtype=torch.float64)
    el, eh = 0.2, 0.28
    loss, _, clipped = clipped_surrogate(logp, old, adv, eps_low=el, eps_high=eh)
    rho = np.exp(logp.detach().numpy() - old.numpy())
    a = adv.numpy()
    un, cl = rho * a, np.clip(rho, 1 - el, 1 + eh) * a
    np.testing.assert_allclose(loss.detach().numpy(), -np.minimum(un, cl), rtol=1e-12)
    exp_clipped = (cl < un) & ((rho < 1 - el) | (rho > 1 + eh))
    assert clipped.numpy().tolist() == exp_clipped.tolist()
    loss.sum().backward()
    np.testing.assert_allclose(logp.grad.numpy(), np.where(exp_clipped, 0.0, -rho * a), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- value loss

# c = 0.2; (V, V_old, R):
#   a (1.0, 0.5,  0.0): (V-R)²=1,    Vc=0.7, (0.7-0)²=0.49  -> ½·1    = 0.5,   unclipped wins, grad V-R = 1
#   b (1.0, 0.5,  2.0): (V-R)²=1,    Vc=0.7, (0.7-2)²=1.69  -> ½·1.69 = 0.845, clipped wins,   grad 0
#   c (0.6, 0.5,  2.0): inside c: Vc=V, both 1.96            -> 0.98,  not clipped,             grad -1.4
#   d (0.0, 0.5,  1.0): (V-R)²=1,    Vc=0.3, (0.3-1)²=0.49  -> 0.5,   unclipped wins,          grad -1
#   e (0.0, 0.5, -1.0): (V-R)²=1,    Vc=0.3, (0.3+1)²=1.69  -> 0.845, clipped wins,            grad 0
V = [1.0, 1.0, 0.6, 0.0, 0.0]
V_OLD = [0.5, 0.5, 0.5, 0.5, 0.5]
R = [0.0, 2.0, 2.0, 1.0, -1.0]
VL = [0.5, 0.845, 0.98, 0.5, 0.845]
VL_CLIPPED = [False, True, False, False, True]
VL_GRAD = [1.0, 0.0, -1.4, -1.0, 0.0]


def test_value_loss_clipped():
    v = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    loss, mask = clipped_value_loss(v, torch.tensor(V_OLD, dtype=torch.float64),
                                    torch.tensor(R, dtype=torch.float64), clip=0.2)
    np.testing.assert_allclose(loss.detach().numpy(), VL, rtol=1e-12)
    assert mask.tolist() == VL_CLIPPED
    assert mask.dtype == torch.bool
    loss.sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), VL_GRAD, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_value_loss_clip_disabled(clip):
    # ½(V-R)²: a 0.5, b 0.5, c 0.98, d 0.5, e 0.5; grad V-R
    v = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    loss, mask = clipped_value_loss(v, torch.tensor(V_OLD, dtype=torch.float64),
                                    torch.tensor(R, dtype=torch.float64), clip=clip)
    np.testing.assert_allclose(loss.detach().numpy(), [0.5, 0.5, 0.98, 0.5, 0.5], rtol=1e-12)
    assert mask.dtype == torch.bool and not mask.any()
    loss.sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), [1.0, -1.0, -1.4, -1.0, 1.0], rtol=1e-12)


# --------------------------------------------------------------------------- aggregate

# Packed batch of 3 sequences (lengths 3, 2, 4), last token of seq 2 masked out and carrying
# a huge loss that must not leak in; a 4th sequence slot (num_seqs=4) has no tokens at all.
TOKEN_LOSS = [1.0, 2.0, 3.0, 4.0, 6.0, 1.0, 1.0, 1.0, 100.0]
SEQ = [0, 0, 0, 1, 1, 2, 2, 2, 2]
MASK = [1, 1, 1, 1, 1, 1, 1, 1, 0]
#   per-seq masked sums: 6, 10, 3;  masked token counts: 3, 2, 3
#   grpo:    6/3 + 10/2 + 3/3 = 2 + 5 + 1 = 8, count = 3 sequences
#   dr_grpo: (6 + 10 + 3) / max_tokens(=4) = 19/4 = 4.75, count = 3
#   dapo:    19, count = 8 tokens


def _agg_inputs():
    tl = torch.tensor(TOKEN_LOSS, dtype=torch.float64, requires_grad=True)
    return tl, torch.tensor(MASK, dtype=torch.float64), torch.tensor(SEQ)


@pytest.mark.parametrize("num_seqs", [3, 4])
@pytest.mark.parametrize("mode,total,count,grad", [
    # grpo grad: mask / n_seq -> 1/3,1/3,1/3, 1/2,1/2, 1/3,1/3,1/3, 0
    ("grpo", 8.0, 3.0, [1 / 3] * 3 + [0.5] * 2 + [1 / 3] * 3 + [0.0]),
    ("dr_grpo", 4.75, 3.0, [0.25] * 8 + [0.0]),
    ("dapo", 19.0, 8.0, [1.0] * 8 + [0.0]),
])
def test_aggregate_modes(mode, total, count, grad, num_seqs):
    tl, mask, seq = _agg_inputs()
    s, n = aggregate(tl, mask, seq, num_seqs, mode, max_tokens=4)
    assert s.item() == pytest.approx(total, rel=1e-12)
    assert isinstance(n, float) and n == count
    s.backward()
    np.testing.assert_allclose(tl.grad.numpy(), grad, rtol=1e-12, atol=0)


def test_aggregate_fully_masked_sequence_no_nan():
    # seq 1 fully masked: grpo drops it (no 0/0), counts only live sequences
    tl = torch.tensor([1.0, 2.0, 5.0, 7.0, 4.0])
    seq = torch.tensor([0, 0, 1, 1, 2])
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    s, n = aggregate(tl, mask, seq, 3, "grpo")
    assert s.item() == pytest.approx(1.5 + 4.0) and n == 2.0      # mean(1,2) + mean(4)
    s, n = aggregate(tl, mask, seq, 3, "dr_grpo", max_tokens=2)
    assert s.item() == pytest.approx(7.0 / 2) and n == 2.0
    s, n = aggregate(tl, mask, seq, 3, "dapo")
    assert s.item() == pytest.approx(7.0) and n == 3.0
    # everything masked: zero sum, zero count, finite
    for mode in ("grpo", "dr_grpo", "dapo"):
        s, n = aggregate(tl, torch.zeros(5), seq, 3, mode)
        assert torch.isfinite(s) and s.item() == 0.0 and n == 0.0


def test_aggregate_dr_grpo_default_max_tokens_is_one():
    tl, mask, seq = _agg_inputs()
    s, _ = aggregate(tl, mask, seq, 3, "dr_grpo")
    assert s.item() == pytest.approx(19.0)


def test_aggregate_unknown_mode():
    tl, mask, seq = _agg_inputs()
    with pytest.raises(ValueError, match="bogus"):
        aggregate(tl, mask, seq, 3, "bogus")


def test_surrogate_then_aggregate_finite_with_extreme_ratio():
    # a far off-policy token (ρ = e^30) stays finite through the loss and the aggregation
    logp = torch.tensor([0.0, -1.0], requires_grad=True)
    old = torch.tensor([-30.0, -1.0])
    loss, ratio, clipped = clipped_surrogate(logp, old, torch.tensor([1.0, 1.0]))
    assert clipped.tolist() == [True, False]
    s, n = aggregate(loss, torch.ones(2), torch.tensor([0, 0]), 1, "grpo")
    assert s.item() == pytest.approx(-(1.2 + 1.0) / 2) and n == 1.0
    s.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0] == 0
    assert math.isfinite(ratio[0].item())

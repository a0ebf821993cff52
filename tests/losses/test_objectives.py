"""Tests for rlhfkit.losses.objectives: every registered policy loss against values and
gradients computed by hand or in numpy (float64), and the registry.

Reference formulas (Δ = logp − old, ρ = e^Δ, ε = (ε_low, ε_high)):
    ppo        −min(ρA, clip(ρ)A)                 d/dlogp: −ρA on the unclipped branch, else 0
    dual_clip  A<0: −max(min(ρA, clip(ρ)A), cA)   d/dlogp: 0 where cA wins, else as ppo
    cispo      −sg(clip(ρ))·A·logp               d/dlogp: −clip(ρ)·A on every token
    gspo       s = exp(mean_seq Δ), −min(sA, clip(s)A) per sequence
                                                   d/dlogp_t: −A·s/|y| on unclipped sequences
    clip_cov   ppo; picked tokens in [lo, hi] of cov = (lp − mean lp)(A − mean A) lose the gradient
    kl_cov     −ρA + β|Δ| on the top-k cov tokens   d/dlogp: −ρA + β·sign(Δ) there, −ρA elsewhere
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.losses.objectives import (
    POLICY_LOSSES,
    PolicyLossInputs,
    PolicyLossParams,
    check_policy_loss,
    entropy_topq_mask,
    get_policy_loss,
    register_policy_loss,
    token_covariance,
)
from rlhfkit.losses.policy import clipped_surrogate, sequence_clipped_surrogate

F64 = torch.float64

# Two sequences of different length: tokens 0-3 are sequence 0, tokens 4-6 sequence 1; token 6
# is masked out (its values would change every result if they leaked in).
SEQ = [0, 0, 0, 0, 1, 1, 1]
MASK = [1, 1, 1, 1, 1, 1, 0]
OLD = [-1.0, -2.5, -0.3, -4.0, -1.7, -0.9, -2.0]


def inputs(ratios, adv, *, old=OLD, mask=MASK, seq=SEQ, num_seqs=2, **params) -> PolicyLossInputs:
    old_t = torch.tensor(old[: len(ratios)], dtype=F64)
    logp = (old_t + torch.log(torch.tensor(ratios, dtype=F64))).detach().requires_grad_(True)
    return PolicyLossInputs(logp=logp, old_logp=old_t, advantages=torch.tensor(adv, dtype=F64),
                            mask=torch.tensor(mask[: len(ratios)], dtype=F64),
                            seq=torch.tensor(seq[: len(ratios)]), num_seqs=num_seqs,
                            params=PolicyLossParams(**params))


def run(name, x):
    out = get_policy_loss(name).fn(x)
    loss = out.token_loss if out.seq_loss is None else out.seq_loss
    (loss * x.mask).sum().backward() if out.seq_loss is None else loss.sum().backward()
    return out, x.logp.grad.numpy()


def np_ppo(rho, a, el=0.2, eh=0.2):
    un, cl = rho * a, np.clip(rho, 1 - el, 1 + eh) * a
    clipped = (cl < un) & ((rho < 1 - el) | (rho > 1 + eh))
    return -np.minimum(un, cl), np.where(clipped, 0.0, -rho * a), clipped


# --------------------------------------------------------------------------- ppo / seq_ppo

def _random(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, generator=g, dtype=F64) * 4
    logp = (old + torch.randn(n, generator=g, dtype=F64) * 0.3).requires_grad_(True)
    adv = torch.randn(n, generator=g, dtype=F64)
    seq = torch.sort(torch.randint(0, 5, (n,), generator=g)).values
    mask = (torch.rand(n, generator=g) > 0.2).to(F64)
    return logp, old, adv, mask, seq


def test_ppo_is_bit_identical_to_clipped_surrogate():
    logp, old, adv, mask, seq = _random()
    x = PolicyLossInputs(logp, old, adv, mask, seq, 5, params=PolicyLossParams(eps_low=0.2, eps_high=0.28))
    out = get_policy_loss("ppo").fn(x)
    out.token_loss.sum().backward()
    g_spec = logp.grad.clone()
    logp.grad = None
    loss, ratio, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    loss.sum().backward()
    assert torch.equal(out.token_loss, loss) and torch.equal(out.ratio, ratio)
    assert torch.equal(out.clipped, clipped) and out.seq_loss is None
    assert torch.equal(g_spec, logp.grad)
    assert clipped.any() and not clipped.all()  # both branches exercised


def test_seq_ppo_is_bit_identical_to_sequence_clipped_surrogate():
    logp, old, adv, mask, seq = _random(seed=1)
    x = PolicyLossInputs(logp, old, adv, mask, seq, 6, params=PolicyLossParams(eps_low=0.1, eps_high=0.3))
    out = get_policy_loss("seq_ppo").fn(x)
    out.seq_loss.sum().backward()
    g_spec = logp.grad.clone()
    logp.grad = None
    loss, ratio, clipped, live = sequence_clipped_surrogate(logp, old, adv, mask, seq, 6,
                                                            eps_low=0.1, eps_high=0.3)
    loss.sum().backward()
    assert torch.equal(out.seq_loss, loss) and torch.equal(out.ratio, ratio[seq])
    assert torch.equal(out.clipped, clipped[seq]) and torch.equal(g_spec, logp.grad)
    assert torch.equal(out.token_loss, torch.zeros_like(logp)) and not live[5]  # slot 5 has no token


def test_ppo_hand_values():
    # ε = 0.2: (ρ, A) -> loss, grad: (1.5,+1) -1.2,0 | (1.5,-1) 1.5,1.5 | (0.5,+1) -0.5,-0.5
    #          (0.5,-1) 0.8,0 | (1.1,+2) -2.2,-2.2 | (0.9,-2) 1.8,1.8 | masked (3,1) -1.2 (no grad)
    x = inputs([1.5, 1.5, 0.5, 0.5, 1.1, 0.9, 3.0], [1, -1, 1, -1, 2, -2, 1])
    out, grad = run("ppo", x)
    np.testing.assert_allclose(out.token_loss.detach().numpy(), [-1.2, 1.5, -0.5, 0.8, -2.2, 1.8, -1.2],
                               rtol=1e-12)
    np.testing.assert_allclose(grad, [0, 1.5, -0.5, 0, -2.2, 1.8, 0], atol=1e-12)
    assert out.clipped.tolist() == [True, False, False, True, False, False, True]


# --------------------------------------------------------------------------- dual clip

# ε = 0.2, c = 3: (ρ, A) -> loss, grad, clipped, dual
#   (1.5, +1): ppo clipped            -> -1.2, 0,   True,  False
#   (4.0, -1): ppo 4 > -cA = 3        ->  3,   0,   True,  True
#   (2.0, -1): ppo 2 < 3              ->  2,   2,   False, False  (-ρA = 2)
#   (0.5, -1): ppo clipped at 0.8     ->  0.8, 0,   True,  False
#   (1.1, +2): inside                 -> -2.2, -2.2, False, False
#   (5.0, -.5): ppo 2.5 > 1.5         ->  1.5, 0,   True,  True
#   masked (6, -1): would be dual (3), no gradient, not counted in dual_clip_frac
DUAL_R = [1.5, 4.0, 2.0, 0.5, 1.1, 5.0, 6.0]
DUAL_A = [1.0, -1.0, -1.0, -1.0, 2.0, -0.5, -1.0]


def test_dual_clip_hand_values():
    out, grad = run("dual_clip", inputs(DUAL_R, DUAL_A, dual_clip=3.0))
    np.testing.assert_allclose(out.token_loss.detach().numpy(), [-1.2, 3.0, 2.0, 0.8, -2.2, 1.5, 3.0],
                               rtol=1e-12)
    np.testing.assert_allclose(grad, [0, 0, 2.0, 0, -2.2, 0, 0], atol=1e-12)
    assert out.clipped.tolist() == [True, True, False, True, False, True, True]
    assert out.metrics["dual_clip_frac"] == pytest.approx(2 / 6)
    np.testing.assert_allclose(out.ratio.numpy(), DUAL_R, rtol=1e-12)


def test_dual_clip_matches_numpy_and_ppo_for_positive_advantages():
    logp, old, adv, mask, seq = _random(200, seed=3)
    with torch.no_grad():
        logp += torch.linspace(-1.5, 1.5, 200, dtype=F64)  # ratios up to e^1.5 ≈ 4.5 > c
    c = 2.5
    x = PolicyLossInputs(logp, old, adv, mask, seq, 5, params=PolicyLossParams(dual_clip=c))
    out, grad = run("dual_clip", x)
    rho, a = np.exp(logp.detach().numpy() - old.numpy()), adv.numpy()
    ppo, ppo_grad, _ = np_ppo(rho, a)
    dual = (a < 0) & (-c * a < ppo)
    np.testing.assert_allclose(out.token_loss.detach().numpy(), np.where(dual, -c * a, ppo), rtol=1e-12)
    np.testing.assert_allclose(grad, np.where(dual, 0.0, ppo_grad) * mask.numpy(), rtol=1e-12, atol=1e-15)
    assert dual.any()
    m = mask.numpy() > 0
    assert out.metrics["dual_clip_frac"] == pytest.approx(dual[m].mean())


def test_dual_clip_must_exceed_one():
    with pytest.raises(ConfigError, match=r"dual_clip.*> 1"):
        get_policy_loss("dual_clip").fn(inputs(DUAL_R, DUAL_A, dual_clip=1.0))


# --------------------------------------------------------------------------- cispo

def test_cispo_hand_values():
    # ε_low = 0.2, ε_high = 0.28 -> weight range [0.8, 1.28]
    #   ρ:  1.5   0.5   1.1   1.2   3.0   0.9   (masked 2.0)
    #   w:  1.28  0.8   1.1   1.2   1.28  0.9
    #   A:  +1    -1    +2    -2    -1    +0.5
    # loss = -w·A·logp, grad = -w·A (every token, clipped or not)
    r = [1.5, 0.5, 1.1, 1.2, 3.0, 0.9, 2.0]
    a = [1.0, -1.0, 2.0, -2.0, -1.0, 0.5, 1.0]
    w = np.array([1.28, 0.8, 1.1, 1.2, 1.28, 0.9, 1.28])
    x = inputs(r, a, cispo_eps_low=0.2, cispo_eps_high=0.28)
    lp = x.logp.detach().numpy().copy()
    out, grad = run("cispo", x)
    np.testing.assert_allclose(out.token_loss.detach().numpy(), -w * np.array(a) * lp, rtol=1e-12)
    np.testing.assert_allclose(grad, (-w * np.array(a))[:6].tolist() + [0.0], rtol=1e-12)
    assert out.clipped.tolist() == [True, True, False, False, True, False, True]
    assert not out.ratio.requires_grad
    np.testing.assert_allclose(out.ratio.numpy(), r, rtol=1e-12)


def test_cispo_defaults_no_lower_bound_weight_at_most_5():
    p = PolicyLossParams()
    assert 1 - p.cispo_eps_low == 0.0 and 1 + p.cispo_eps_high == 5.0
    # ρ = 0.05 keeps its weight (no floor); ρ = 7 is capped at 5; grads -w·A
    x = inputs([0.05, 7.0, 1.0], [1.0, 1.0, -1.0], mask=[1, 1, 1], seq=[0, 0, 0], num_seqs=1)
    out, grad = run("cispo", x)
    np.testing.assert_allclose(grad, [-0.05, -5.0, 1.0], rtol=1e-12)
    assert out.clipped.tolist() == [False, True, False]


# --------------------------------------------------------------------------- gspo

def test_gspo_hand_values():
    # Δ per token; seq i: tokens; masked tokens (Δ = 5) must not count
    #   seq 0: Δ 2e-4,1e-4,3e-4,2e-4  mean 2e-4  s=e^2e-4 in [1-3e-4, 1+4e-4], A=+1 -> -s, grad -s/4
    #   seq 1: Δ 1e-3,5e-4,(5 masked)  mean 7.5e-4 > 4e-4, A=+0.5    -> clipped: -(1+4e-4)·0.5, grad 0
    #   seq 2: Δ -1e-3                 s=e^-1e-3 < 1-3e-4, A=-1      -> min(-s, -(1-3e-4)) clipped: 0.9997
    #   seq 3: Δ -1e-3,-1e-3           s=e^-1e-3, A=+2               -> sA < clip·A: unclipped -2s, grad -2s/2
    #   seq 4: only a masked token                                   -> loss 0, no gradient
    d = [2e-4, 1e-4, 3e-4, 2e-4, 1e-3, 5e-4, 5.0, -1e-3, -1e-3, -1e-3, 0.7]
    seq = [0, 0, 0, 0, 1, 1, 1, 2, 3, 3, 4]
    mask = [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0]
    adv = [1, 1, 1, 1, 0.5, 0.5, 0.5, -1, 2, 2, 3]
    old = [-1.0 - 0.1 * i for i in range(11)]
    x = inputs(np.exp(d).tolist(), adv, old=old, mask=mask, seq=seq, num_seqs=5)
    out, grad = run("gspo", x)
    s0, s3 = math.exp(2e-4), math.exp(-1e-3)
    want = [-s0, -(1 + 4e-4) * 0.5, 1 - 3e-4, -2 * s3, 0.0]
    np.testing.assert_allclose(out.seq_loss.detach().numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(grad, [-s0 / 4] * 4 + [0.0] * 3 + [0.0] + [-s3] * 2 + [0.0],
                               rtol=1e-9, atol=1e-15)
    assert torch.equal(out.token_loss, torch.zeros(11, dtype=F64))
    seq_ratio = [s0, math.exp(7.5e-4), s3, s3, 1.0]
    np.testing.assert_allclose(out.ratio.numpy(), [seq_ratio[i] for i in seq], rtol=1e-9)
    assert out.clipped.tolist() == [False] * 4 + [True] * 3 + [True] + [False] * 3
    assert out.metrics["seq_clip_frac"] == pytest.approx(2 / 4)


def test_gspo_length_normalised_unlike_seq_ppo():
    # seq of 4 tokens with Δ = 0.05 each: gspo s = e^0.05, seq_ppo ρ = e^0.2; A = 1, wide clip
    x = inputs([math.exp(0.05)] * 4, [1.0] * 4, mask=[1] * 4, seq=[0] * 4, num_seqs=1,
               gspo_eps_low=0.5, gspo_eps_high=0.5, eps_low=0.5, eps_high=0.5)
    out, grad = run("gspo", x)
    assert out.seq_loss.item() == pytest.approx(-math.exp(0.05), rel=1e-12)
    np.testing.assert_allclose(grad, [-math.exp(0.05) / 4] * 4, rtol=1e-12)
    x.logp.grad = None
    out2, grad2 = run("seq_ppo", x)
    assert out2.seq_loss.item() == pytest.approx(-math.exp(0.2), rel=1e-12)
    np.testing.assert_allclose(grad2, [-math.exp(0.2)] * 4, rtol=1e-12)


def test_gspo_default_eps_are_the_papers():
    p = PolicyLossParams()
    assert (p.gspo_eps_low, p.gspo_eps_high) == (3e-4, 4e-4)


# --------------------------------------------------------------------------- covariance losses

# logp of the 7 tokens (token 6 masked) and advantages; masked means: lp -1.78333, A 0.083333
# cov = (lp - mean)(A - mean): 2.4597, -2.3319, -1.7153, 2.4014, 0.3264, 0.4514, (masked)
COV_LP = [-0.5, -3.0, -0.2, -4.0, -1.0, -2.0, -0.1]
COV_A = [2.0, 2.0, -1.0, -1.0, 0.5, -2.0, 5.0]


def cov_inputs(ratios, **params):
    lp = torch.tensor(COV_LP, dtype=F64)
    old = lp - torch.log(torch.tensor(ratios, dtype=F64))
    return PolicyLossInputs(logp=lp.clone().requires_grad_(True), old_logp=old,
                            advantages=torch.tensor(COV_A, dtype=F64), mask=torch.tensor(MASK, dtype=F64),
                            seq=torch.tensor(SEQ), num_seqs=2, params=PolicyLossParams(**params))


def np_cov(lp, a, m):
    k = m > 0
    return np.where(k, (lp - lp[k].mean()) * (a - a[k].mean()), 0.0)


def test_token_covariance_matches_numpy():
    x = cov_inputs([1.0] * 7)
    want = np_cov(np.array(COV_LP), np.array(COV_A), np.array(MASK, float))
    np.testing.assert_allclose(token_covariance(x.logp, x.advantages, x.mask).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(want[:6], [2.4597, -2.3319, -1.7153, 2.4014, 0.3264, 0.4514], atol=1e-4)


R_COV = [1.0, 1.0, 1.0, 1.0, 1.3, 0.7, 1.0]  # tokens 4 (A>0, ρ>1.2) and 5 (A<0, ρ<0.8): ppo-clipped


def test_clip_cov_all_eligible_tokens_lose_gradient():
    # eligible = masked, not ppo-clipped, cov in [1, 5]: tokens 0 and 3; frac 0.5 -> ⌊3⌋ ≥ 2 picks both
    x = cov_inputs(R_COV, clip_cov_frac=0.5)
    out, grad = run("clip_cov", x)
    rho, a = np.array(R_COV), np.array(COV_A)
    ppo, ppo_grad, ppo_clipped = np_ppo(rho, a)
    np.testing.assert_allclose(out.token_loss.detach().numpy(), ppo, rtol=1e-12)  # values unchanged
    sel = np.array([1, 0, 0, 1, 0, 0, 0], bool)
    np.testing.assert_allclose(grad, np.where(sel | ppo_clipped, 0.0, ppo_grad) * np.array(MASK), atol=1e-15)
    assert out.clipped.numpy().tolist() == (sel | ppo_clipped).tolist()
    assert out.metrics["cov_selected_frac"] == pytest.approx(2 / 6)
    # the gradient of the free tokens is -ρA = -A (ρ = 1)
    np.testing.assert_allclose(grad[[1, 2]], [-2.0, 1.0], rtol=1e-12)


def test_clip_cov_skips_ppo_clipped_and_picks_one():
    # token 0 now ppo-clipped (ρ = 1.5, A > 0): token 3 is the only eligible one; default frac -> 1 pick
    r = [1.5] + R_COV[1:]
    out, grad = run("clip_cov", cov_inputs(r))
    assert out.clipped.tolist() == [True, False, False, True, True, True, False]
    assert grad[3] == 0.0 and grad[1] == pytest.approx(-2.0) and grad[2] == pytest.approx(1.0)
    assert out.metrics["cov_selected_frac"] == pytest.approx(1 / 6)


def test_clip_cov_random_pick_uses_the_generator():
    # two eligible tokens (0, 3), one pick: each generator seed picks one of them, reproducibly
    picks = set()
    for seed in range(12):
        outs = []
        for _ in range(2):
            x = cov_inputs(R_COV)
            x.generator = torch.Generator().manual_seed(seed)
            out, grad = run("clip_cov", x)
            outs.append(tuple(np.flatnonzero(grad[:4] == 0)))
        assert outs[0] == outs[1] and len(outs[0]) == 1 and outs[0][0] in (0, 3)
        picks.add(outs[0][0])
    assert picks == {0, 3}
    # no generator: the same pick as a generator seeded with 0, whatever the global RNG state
    y = cov_inputs(R_COV)
    y.generator = torch.Generator().manual_seed(0)
    b, _ = run("clip_cov", y)
    state = torch.get_rng_state()
    try:
        for s in range(8):
            torch.manual_seed(s)
            a, _ = run("clip_cov", cov_inputs(R_COV))
            assert torch.equal(a.clipped, b.clipped)
    finally:
        torch.set_rng_state(state)


def test_clip_cov_bounds_checked():
    with pytest.raises(ConfigError, match="clip_cov_lower must be < clip_cov_upper"):
        get_policy_loss("clip_cov").fn(cov_inputs(R_COV, clip_cov_lower=5.0, clip_cov_upper=1.0))
    with pytest.raises(ConfigError, match="clip_cov_frac"):
        get_policy_loss("clip_cov").fn(cov_inputs(R_COV, clip_cov_frac=0.0))


KL_D = [0.1, -0.2, 0.05, -0.3, 0.2, 0.0, 0.4]


@pytest.mark.parametrize("frac", [0.34, 0.45])
def test_kl_cov_hand_values(frac):
    # top-k cov among masked tokens: 0 (2.46), 3 (2.40), 5, 4, 2, 1 (masked token 6 has 8.3: excluded)
    # frac 0.34 or 0.45 -> k = ⌊2.04⌋ = ⌊2.7⌋ = 2 -> tokens 0, 3 get β|Δ|, β = 0.5
    x = cov_inputs(np.exp(KL_D).tolist(), kl_cov_frac=frac, kl_cov_coef=0.5)
    out, grad = run("kl_cov", x)
    rho, a, d = np.exp(KL_D), np.array(COV_A), np.array(KL_D)
    sel = np.array([1, 0, 0, 1, 0, 0, 0], bool)
    want = -rho * a + np.where(sel, 0.5 * np.abs(d), 0)
    np.testing.assert_allclose(out.token_loss.detach().numpy(), want, rtol=1e-12)
    want_grad = (-rho * a + np.where(sel, 0.5 * np.sign(d), 0)) * np.array(MASK)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12)
    assert not out.clipped.any()  # no ratio clip: token 4 (ρ = e^0.2, A > 0) keeps -ρA
    assert grad[4] == pytest.approx(-math.exp(0.2) * 0.5)
    assert out.metrics["cov_selected_frac"] == pytest.approx(2 / 6)
    # frac 0.84 -> k = 5: every masked token but 1 (cov -2.33); the masked token 6 stays out even
    # though its covariance would be 0 > -1.72 (token 2)
    out5, _ = run("kl_cov", cov_inputs(np.exp(KL_D).tolist(), kl_cov_frac=0.84))
    sel5 = np.array([1, 0, 1, 1, 1, 1, 0], bool)
    want5 = -rho * a + np.where(sel5, np.abs(d), 0)
    np.testing.assert_allclose(out5.token_loss.detach().numpy(), want5, rtol=1e-12)
    # default frac 2e-3 -> k = max(1, 0) = 1: only token 0
    out1, grad1 = run("kl_cov", cov_inputs(np.exp(KL_D).tolist()))
    assert grad1[0] == pytest.approx(-math.exp(0.1) * 2 + 1.0) and grad1[3] == pytest.approx(math.exp(-0.3))


def test_kl_cov_ties_go_to_the_earlier_token():
    # lp = [0, 0, -2, -2], A = [1, 1, -1, -1]: every cov is exactly 1; k = 2 -> tokens 0, 1
    lp = torch.tensor([0.0, 0.0, -2.0, -2.0], dtype=F64)
    d = torch.tensor([0.1, 0.1, 0.1, 0.1], dtype=F64)
    x = PolicyLossInputs(lp.clone().requires_grad_(True), lp - d, torch.tensor([1.0, 1, -1, -1], dtype=F64),
                         torch.ones(4, dtype=F64), torch.zeros(4, dtype=torch.long), 1,
                         params=PolicyLossParams(kl_cov_frac=0.5, kl_cov_coef=1.0))
    out, grad = run("kl_cov", x)
    r = math.exp(0.1)
    np.testing.assert_allclose(grad, [-r + 1, -r + 1, r, r], rtol=1e-12)


# --------------------------------------------------------------------------- entropy top-q

ENT = torch.tensor([0.5, 2.0, 1.0, 2.0, 3.0, 0.1, 9.0])
ENT_MASK = torch.tensor([1.0, 1, 1, 1, 1, 1, 0])


@pytest.mark.parametrize("q,keep", [
    (0.5, [0, 1, 0, 1, 1, 0, 0]),      # ⌈3⌉ = 3: 3.0, 2.0, 2.0 (masked 9.0 never)
    (0.4, [0, 1, 0, 1, 1, 0, 0]),      # ⌈2.4⌉ = 3
    (1 / 3, [0, 1, 0, 0, 1, 0, 0]),    # ⌈2⌉ = 2: 3.0 and the earlier of the tied 2.0s
    (0.1, [0, 0, 0, 0, 1, 0, 0]),      # ⌈0.6⌉ = 1
])
def test_entropy_topq_mask(q, keep):
    out = entropy_topq_mask(ENT, ENT_MASK, q)
    assert out.tolist() == keep and out.dtype == ENT_MASK.dtype


def test_entropy_topq_mask_edges():
    assert torch.equal(entropy_topq_mask(ENT, ENT_MASK, 1.0), ENT_MASK)
    # 0.07·100 is 7.000000000000001 in floating point: still 7 tokens
    assert entropy_topq_mask(torch.arange(100.0), torch.ones(100), 0.07).tolist() == [0] * 93 + [1] * 7
    assert entropy_topq_mask(ENT, torch.zeros(7), 0.5).sum() == 0
    # many ties: the earliest tokens win (an unstable sort would pick others)
    assert entropy_topq_mask(torch.ones(5000), torch.ones(5000), 0.1).tolist() == [1.0] * 500 + [0.0] * 4500
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="top_q"):
            entropy_topq_mask(ENT, ENT_MASK, bad)


# --------------------------------------------------------------------------- registry

def test_registry_specs():
    want = {
        "ppo": ("token", ("eps_low", "eps_high"), None),
        "seq_ppo": ("sequence", ("eps_low", "eps_high"), ("grpo", "dr_grpo")),
        "gspo": ("sequence", ("gspo_eps_low", "gspo_eps_high"), ("grpo", "dr_grpo")),
        "cispo": ("token", ("cispo_eps_low", "cispo_eps_high"), None),
        "dual_clip": ("token", ("eps_low", "eps_high", "dual_clip"), None),
        "clip_cov": ("token", ("eps_low", "eps_high", "clip_cov_frac", "clip_cov_lower", "clip_cov_upper"),
                     None),
        "kl_cov": ("token", ("kl_cov_frac", "kl_cov_coef"), None),
        "sppo": ("sequence", (), ("grpo", "dr_grpo")),
    }
    for name, (imp, params, aggs) in want.items():
        spec = get_policy_loss(name)
        assert (spec.name, spec.importance, spec.params, spec.aggregations) == (name, imp, params, aggs)
        assert not spec.needs_entropy
    assert set(want) <= set(POLICY_LOSSES)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        get_policy_loss("gpso")
    msg = str(e.value)
    assert all(n in msg for n in ("ppo", "gspo", "cispo", "kl_cov")) and "did you mean 'gspo'" in msg


def test_duplicate_and_bad_registrations_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register_policy_loss("ppo", importance="token")(lambda x: None)
    with pytest.raises(ValueError, match="importance"):
        register_policy_loss("x_bad_imp", importance="tokens")
    with pytest.raises(ValueError, match="unknown PolicyLossParams"):
        register_policy_loss("x_bad_param", importance="token", params=("epsilon",))
    assert "x_bad_imp" not in POLICY_LOSSES and "x_bad_param" not in POLICY_LOSSES


def test_check_policy_loss_aggregation_and_params():
    assert check_policy_loss("gspo", loss_agg="grpo").name == "gspo"
    check_policy_loss("ppo", loss_agg="dapo")
    with pytest.raises(ConfigError, match="grpo, dr_grpo"):
        check_policy_loss("seq_ppo", loss_agg="dapo")
    with pytest.raises(ConfigError, match=r"eps_high.*>= 0"):
        check_policy_loss("ppo", PolicyLossParams(eps_high=-0.1))
    check_policy_loss("cispo", PolicyLossParams(eps_high=-0.1))  # cispo does not read eps_high

"""Preference-model and Nash-learning math against float64 numpy written from the equations of
docs/algorithms.md (#preference-model, #sppo, #dno): values, gradients, degenerate cases."""

import math

import numpy as np
import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.losses.nash import (dno_pairs, intransitivity_rate, is_cycle, preference_bce_loss,
                                 preference_logit, sppo_targets, win_rates)
from rlhfkit.losses.objectives import PolicyLossInputs, check_policy_loss, get_policy_loss


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------ preference BCE
def test_bce_value_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7) * 3, rng.normal(size=7) * 3
    y = np.array([1, 1, 0, 0.3, 0.5, 1, 0.0])
    d = (a - b) / 2
    want = -(y * np.log(np_sigmoid(d)) + (1 - y) * np.log(np_sigmoid(-d)))
    ta = torch.tensor(a, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    loss, m = preference_bce_loss(ta, tb, torch.tensor(y))
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    # dL/da = (σ(d) − y)/2, dL/db = −(σ(d) − y)/2
    np.testing.assert_allclose(ta.grad.numpy(), (np_sigmoid(d) - y) / 2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tb.grad.numpy(), -(np_sigmoid(d) - y) / 2, rtol=1e-12, atol=1e-12)
    # accuracy over decided labels (y != 0.5): d on the label's side
    dec = y != 0.5
    assert m["accuracy"] == pytest.approx(float(np.mean((d[dec] > 0) == (y[dec] > 0.5))))


def test_bce_is_antisymmetric_in_the_order():
    a, b = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    l1, _ = preference_bce_loss(a, b, 1.0)
    l2, _ = preference_bce_loss(b, a, 0.0)
    assert torch.equal(l1, l2)
    assert torch.equal(preference_logit(a, b), -preference_logit(b, a))


def test_bce_degenerate_cases():
    eq, m = preference_bce_loss(torch.tensor([0.7, -2.0]), torch.tensor([0.7, -2.0]), 1.0)
    assert torch.allclose(eq, torch.full((2,), math.log(2)))
    assert m["accuracy"] == 0.5
    big = torch.tensor([2000.0], requires_grad=True)
    loss, _ = preference_bce_loss(big, -big, 1.0)  # d = 2000: loss 0, finite gradient
    loss.sum().backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(big.grad).all()
    wrong, _ = preference_bce_loss(torch.tensor([-2000.0]), torch.tensor([2000.0]), 1.0)
    assert float(wrong) == pytest.approx(2000.0)
    empty, m = preference_bce_loss(torch.zeros(0), torch.zeros(0), 1.0)
    assert empty.shape == (0,) and m == {"accuracy": 0.0, "prob": 0.0, "margin": 0.0}


# ------------------------------------------------------------------ intransitivity
RPS = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])     # rock, paper, scissors
TRANSITIVE = torch.tensor([[0.5, 0.9, 0.8], [0.1, 0.5, 0.7], [0.2, 0.3, 0.5]])


def test_intransitivity_on_hand_made_tables():
    assert intransitivity_rate(RPS) == 1.0
    assert intransitivity_rate(RPS.T) == 1.0        # the cycle the other way round
    assert intransitivity_rate(TRANSITIVE) == 0.0
    assert intransitivity_rate(torch.stack([RPS, TRANSITIVE])) == 0.5
    assert intransitivity_rate(torch.full((3, 3), 0.5)) == 0.0   # no preference is no cycle
    assert intransitivity_rate(torch.zeros(0, 3, 3)) == 0.0
    # 4 responses: 0 > 1 > 2 > 0 and 3 loses to all: 1 cyclic triple of C(4,3) = 4
    P = torch.full((4, 4), 0.5)
    for i, j in [(0, 1), (1, 2), (2, 0), (0, 3), (1, 3), (2, 3)]:
        P[i, j], P[j, i] = 0.8, 0.2
    assert intransitivity_rate(P) == 0.25
    # a weak cycle still counts (majority, not strength); one tie breaks it
    weak = torch.tensor([[0.5, 0.51, 0.49], [0.49, 0.5, 0.51], [0.51, 0.49, 0.5]])
    assert bool(is_cycle(weak))
    weak[0, 1] = weak[1, 0] = 0.5
    assert not bool(is_cycle(weak))


# ------------------------------------------------------------------ win-rates, SPPO, DNO
def test_win_rates_sppo_targets_and_dno_pairs_by_hand():
    P = torch.tensor([[0.5, 0.8, 0.6], [0.2, 0.5, 0.1], [0.4, 0.9, 0.5]], dtype=torch.float64)
    w = win_rates(P)
    assert w.tolist() == pytest.approx([0.7, 0.15, 0.65])       # mean over the other two
    assert sppo_targets(w, 2.0).tolist() == pytest.approx([0.4, -0.7, 0.3])
    best, worst, keep = dno_pairs(torch.stack([w, torch.full((3,), 0.5, dtype=torch.float64)]), 0.3)
    assert best.tolist() == [0, 0] and worst.tolist() == [1, 0] and keep.tolist() == [True, False]
    _, _, keep = dno_pairs(w[None], 0.6)                          # gap 0.55 does not pass 0.6
    assert keep.tolist() == [False]
    with pytest.raises(ValueError):
        win_rates(torch.ones(1, 1))


def sppo_inputs(logp, old, adv, mask, seq, n):
    return PolicyLossInputs(logp, old, adv, mask, seq, n)


def test_sppo_loss_value_and_gradient_match_numpy():
    rng = np.random.default_rng(1)
    seq = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=float)
    logp, old = rng.normal(size=9) - 2, rng.normal(size=9) - 2
    target = np.array([0.4, -0.7, 0.0])
    adv = target[seq]
    lr = np.array([((logp - old) * mask)[seq == s].sum() for s in range(3)])
    want = (lr - target) ** 2
    t = torch.tensor(logp, requires_grad=True)
    out = get_policy_loss("sppo").fn(sppo_inputs(t, torch.tensor(old), torch.tensor(adv), torch.tensor(mask),
                                                 torch.tensor(seq), 3))
    np.testing.assert_allclose(out.seq_loss.detach().numpy(), want, rtol=1e-12)
    out.seq_loss.sum().backward()
    # d/dlogp_t (Σ m Δ − A)² = 2 (Σ m Δ − A) m_t
    np.testing.assert_allclose(t.grad.numpy(), 2 * (lr - target)[seq] * mask, rtol=1e-12, atol=1e-15)
    assert (out.token_loss == 0).all()


def test_sppo_loss_degenerate_cases():
    seq = torch.tensor([0, 0, 1])
    # on policy (Δ = 0) the loss is the squared target; a sequence with no masked token is 0
    logp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    out = get_policy_loss("sppo").fn(sppo_inputs(logp, logp.detach(), torch.tensor([0.5, 0.5, 9.0]),
                                                 torch.tensor([1.0, 1.0, 0.0]), seq, 2))
    assert out.seq_loss.tolist() == [0.25, 0.0]
    out.seq_loss.sum().backward()
    assert logp.grad.tolist() == [-1.0, -1.0, 0.0]
    # zero target on policy: zero loss and gradient
    z = get_policy_loss("sppo").fn(sppo_inputs(logp.detach(), logp.detach(), torch.zeros(3), torch.ones(3), seq, 2))
    assert z.seq_loss.tolist() == [0.0, 0.0]
    e = get_policy_loss("sppo").fn(sppo_inputs(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0),
                                               torch.zeros(0, dtype=torch.long), 0))
    assert e.seq_loss.shape == (0,)
    with pytest.raises(ConfigError, match="loss_agg"):
        check_policy_loss("sppo", loss_agg="dapo")

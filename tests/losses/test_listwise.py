"""Tests for rlhfkit.losses.listwise against independent numpy / hand-computed values.

Plackett-Luce, r = β(policy - ref), items sorted best first:
    loss = -Σ_k [r_k - log Σ_{j≥k} exp(r_j)]
K = 3 by hand (β = 1, ref = 0, r = [-1, -2, -3] already in score order):
    (log(e^-1 + e^-2 + e^-3) + 1) + (log(e^-2 + e^-3) + 2) + 0
    = log(1 + e^-1 + e^-2) + log(1 + e^-1) = 0.40760596 + 0.31326169 = 0.72086765
LiPO-λ, K = 2, scores [1, 0] (G = [1, 0]), r_1 > r_2 (τ = [1, 2]):
    weight = |1 - 0| · |1/log2(2) - 1/log2(3)| = 1 - 1/log2(3) = 0.36907025
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rlhfkit.losses.listwise import plackett_luce_loss
from rlhfkit.losses.preference import PairLogps, get_preference_loss

BETA = 0.5


def np_pl(policy, ref, scores, valid=None, beta=BETA):
    """Loop-based Plackett-Luce loss per list (E,), ties kept in input order."""
    policy, ref, scores = (np.asarray(a, np.float64) for a in (policy, ref, scores))
    out = []
    for e in range(policy.shape[0]):
        idx = [k for k in range(policy.shape[1]) if valid is None or valid[e][k]]
        idx = sorted(idx, key=lambda k: -scores[e, k])          # Python's sort is stable
        r = beta * (policy[e, idx] - ref[e, idx])
        out.append(-sum(r[k] - np.logaddexp.reduce(r[k:]) for k in range(len(r))))
    return np.array(out)


def np_lipo(policy, ref, scores, valid=None, beta=BETA):
    """LiPO-λ per list: Σ_{s_i > s_j} |G_i - G_j| |1/D(τ_i) - 1/D(τ_j)| (-log σ(r_i - r_j))."""
    policy, ref, scores = (np.asarray(a, np.float64) for a in (policy, ref, scores))
    out = []
    for e in range(policy.shape[0]):
        idx = [k for k in range(policy.shape[1]) if valid is None or valid[e][k]]
        r = {k: beta * (policy[e, k] - ref[e, k]) for k in idx}
        tau = {k: pos + 1 for pos, k in enumerate(sorted(idx, key=lambda k: -r[k]))}
        total = 0.0
        for i, j in itertools.permutations(idx, 2):
            if scores[e, i] > scores[e, j]:
                g = abs((2 ** scores[e, i] - 1) - (2 ** scores[e, j] - 1))
                dsc = abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                total += g * dsc * np.logaddexp(0.0, -(r[i] - r[j]))
        out.append(total)
    return np.array(out)


def fd_grad(fn, policy, eps=1e-6):
    """Central finite difference of sum(fn(policy)) w.r.t. every entry of policy."""
    policy = np.asarray(policy, np.float64)
    g = np.zeros_like(policy)
    for idx in np.ndindex(policy.shape):
        up, dn = policy.copy(), policy.copy()
        up[idx] += eps
        dn[idx] -= eps
        g[idx] = (fn(up).sum() - fn(dn).sum()) / (2 * eps)
    return g


def t(x, grad=False, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


POLICY = [[-5.0, -3.0, -10.0, -4.0], [-2.0, -8.0, -6.0, -7.5]]
REF = [[-5.5, -3.2, -9.0, -4.4], [-2.5, -7.0, -6.2, -7.0]]
SCORES = [[2.0, 3.0, 0.0, 1.0], [1.0, 4.0, 2.0, 3.0]]   # unsorted on purpose


# --------------------------------------------------------------------------- Plackett-Luce


def test_k2_is_dpo_sigmoid():
    pc, pr = [-5.0, -3.0, -10.0], [-6.0, -2.0, -10.0]
    rc, rr = [-5.5, -3.0, -9.0], [-5.0, -2.5, -10.5]
    policy = t(np.stack([pc, pr], 1), grad=True)
    ref = t(np.stack([rc, rr], 1))
    loss, m = plackett_luce_loss(policy, ref, t([[1.0, 0.0]] * 3), beta=BETA)
    delta = (np.array(pc) - rc) - (np.array(pr) - rr)
    np.testing.assert_allclose(loss.detach().numpy(), np.logaddexp(0, -BETA * delta), rtol=1e-12)
    pair = PairLogps(t(pc, True), t(pr, True), t(rc), t(rr), t([1.0] * 3), t([1.0] * 3))
    dpo, dm = get_preference_loss("sigmoid")(pair, beta=BETA)
    torch.testing.assert_close(loss, dpo, rtol=1e-14, atol=1e-14)
    loss.sum().backward()
    dpo.sum().backward()
    torch.testing.assert_close(policy.grad[:, 0], pair.policy_chosen.grad)
    torch.testing.assert_close(policy.grad[:, 1], pair.policy_rejected.grad)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"):
        assert m[k] == pytest.approx(dm[k])


def test_k3_hand_value():
    loss, _ = plackett_luce_loss(t([[-1.0, -2.0, -3.0]]), t([[0.0, 0.0, 0.0]]),
                                 t([[3.0, 2.0, 1.0]]), beta=1.0)
    assert float(loss) == pytest.approx(0.7208676519626033, rel=1e-12)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2))
                                        + math.log1p(math.exp(-1)), rel=1e-12)


def test_values_unsorted_scores_match_numpy():
    loss, _ = plackett_luce_loss(t(POLICY), t(REF), t(SCORES), beta=BETA)
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss.numpy(), np_pl(POLICY, REF, SCORES), rtol=1e-12)


def test_column_permutation_invariant():
    perm = [3, 0, 2, 1]
    a, _ = plackett_luce_loss(t(POLICY), t(REF), t(SCORES), beta=BETA)
    P, R, S = (np.asarray(x)[:, perm] for x in (POLICY, REF, SCORES))
    b, _ = plackett_luce_loss(t(P), t(R), t(S), beta=BETA)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradient_matches_finite_differences():
    p = t(POLICY, grad=True)
    loss, _ = plackett_luce_loss(p, t(REF), t(SCORES), beta=BETA)
    loss.sum().backward()
    want = fd_grad(lambda x: np_pl(x, REF, SCORES), POLICY)
    np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-6, atol=1e-9)


def test_valid_mask_equals_shorter_list():
    # list 0 has 3 real entries; the padded slot holds garbage (huge value, NaN score)
    policy = [[-5.0, 1e4, -3.0, -10.0], [-2.0, -8.0, -6.0, -7.5]]
    ref = [[-5.5, 0.0, -3.2, -9.0], [-2.5, -7.0, -6.2, -7.0]]
    scores = [[2.0, float("nan"), 3.0, 0.0], [1.0, 4.0, 2.0, 3.0]]
    valid = [[True, False, True, True], [True, True, True, True]]
    p = t(policy, grad=True)
    loss, m = plackett_luce_loss(p, t(ref), t(scores), torch.tensor(valid), beta=BETA)
    short, _ = plackett_luce_loss(t([[-5.0, -3.0, -10.0]]), t([[-5.5, -3.2, -9.0]]),
                                  t([[2.0, 3.0, 0.0]]), beta=BETA)
    assert float(loss[0].detach()) == pytest.approx(float(short[0]), rel=1e-12)
    np.testing.assert_allclose(loss.detach().numpy(), np_pl(policy, ref, scores, valid),
                               rtol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert float(p.grad[0, 1]) == 0.0
    want = fd_grad(lambda x: np_pl(x, ref, scores, valid), policy)
    np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-6, atol=1e-9)
    assert all(math.isfinite(v) for v in m.values())


def test_single_valid_entry_and_empty():
    loss, m = plackett_luce_loss(t([[-1.0, -2.0]]), t([[0.0, 0.0]]), t([[1.0, 0.0]]),
                                 torch.tensor([[True, False]]), beta=BETA)
    assert float(loss) == 0.0  # one item: log 1
    assert m["rewards/accuracy"] == 0.0 and m["rewards/margin"] == 0.0
    loss, m = plackett_luce_loss(t(np.zeros((0, 3))), t(np.zeros((0, 3))), t(np.zeros((0, 3))))
    assert loss.shape == (0,)
    assert all(v == 0.0 for v in m.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lipo", [False, True])
def test_huge_rewards_finite(dtype, lipo):
    p = t([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], grad=True, dtype=dtype)
    loss, m = plackett_luce_loss(p, torch.zeros(2, 3, dtype=dtype), t([[2.0, 1.0, 0.0]] * 2),
                                 beta=1.0, lipo_lambda=lipo)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert all(math.isfinite(v) for v in m.values())
    if not lipo:
        # list 0: r = [1e4, -1e4, 0] -> 0 + (log(e^-1e4 + 1) + 1e4) + 0 = 1e4
        # list 1: r = [-1e4, 1e4, 0] -> (1e4 + 1e4) + 0 + 0 = 2e4
        np.testing.assert_allclose(loss.detach().double().numpy(), [1e4, 2e4], rtol=1e-6)
        np.testing.assert_allclose(loss.detach().double().numpy(),
                                   np_pl(p.detach().double().numpy(), np.zeros((2, 3)),
                                         [[2.0, 1.0, 0.0]] * 2, beta=1.0), rtol=1e-6)


def test_metrics():
    _, m = plackett_luce_loss(t(POLICY), t(REF), t(SCORES), beta=BETA)
    r = BETA * (np.array(POLICY) - np.array(REF))
    S = np.array(SCORES)
    best = [r[e, S[e].argmax()] for e in range(2)]
    worst = [r[e, S[e].argmin()] for e in range(2)]
    diffs = [r[e, i] - r[e, j] for e in range(2) for i in range(4) for j in range(4)
             if S[e, i] > S[e, j]]
    assert m["rewards/chosen"] == pytest.approx(np.mean(best))
    assert m["rewards/rejected"] == pytest.approx(np.mean(worst))
    assert m["rewards/margin"] == pytest.approx(np.mean(diffs))
    assert m["rewards/accuracy"] == pytest.approx(np.mean(np.array(diffs) > 0))


# --------------------------------------------------------------------------- LiPO-λ


def test_lipo_k2_hand_value():
    # r = β(policy - ref) = [0.5, -0.5]; weight 1 - 1/log2(3); pair loss -log σ(1)
    loss, _ = plackett_luce_loss(t([[1.0, -1.0]]), t([[0.0, 0.0]]), t([[1.0, 0.0]]), beta=BETA,
                                 lipo_lambda=True)
    want = (1 - 1 / math.log2(3)) * math.log1p(math.exp(-1.0))
    assert float(loss) == pytest.approx(want, rel=1e-12)
    assert 1 - 1 / math.log2(3) == pytest.approx(0.36907024642854247, rel=1e-12)


def test_lipo_values_and_gradient_match_numpy():
    p = t(POLICY, grad=True)
    loss, _ = plackett_luce_loss(p, t(REF), t(SCORES), beta=BETA, lipo_lambda=True)
    np.testing.assert_allclose(loss.detach().numpy(), np_lipo(POLICY, REF, SCORES), rtol=1e-12)
    loss.sum().backward()
    # ranks τ are detached: the weights are constants, so finite differences (which do not
    # change the ranks at eps = 1e-6) match autograd
    want = fd_grad(lambda x: np_lipo(x, REF, SCORES), POLICY)
    np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-6, atol=1e-9)


def test_lipo_valid_mask_and_score_ties():
    policy = [[-5.0, 1e4, -3.0, -10.0]]
    ref = [[-5.5, 0.0, -3.2, -9.0]]
    scores = [[2.0, 9.0, 2.0, 0.0]]       # a tie (no pair) and a padded slot
    valid = [[True, False, True, True]]
    p = t(policy, grad=True)
    loss, _ = plackett_luce_loss(p, t(ref), t(scores), torch.tensor(valid), beta=BETA,
                                 lipo_lambda=True)
    np.testing.assert_allclose(loss.detach().numpy(), np_lipo(policy, ref, scores, valid),
                               rtol=1e-12)
    loss.sum().backward()
    assert float(p.grad[0, 1]) == 0.0

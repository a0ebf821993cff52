"""Tests for rlhfkit.losses.reward against independent numpy / hand-computed values.

Reference formulas (Bradley-Terry with margin m, d = r_w - r_l):
    L(d)       = -log sigmoid(d - m) = log(1 + exp(-(d - m)))
    dL/dr_w    = -(1 - sigmoid(d - m))
    dL/dr_l    = +(1 - sigmoid(d - m))
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from rlhfkit.losses.reward import bradley_terry_loss, listwise_bt_loss, ranked_pairs

CHOSEN = [2.0, 0.5, -1.0]
REJECTED = [1.0, 0.5, 3.0]


def np_sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-x))


def np_bt(d, m):
    """-log sigmoid(d - m) = logaddexp(0, -(d - m)), stable for large |d|."""
    return np.logaddexp(0.0, -(np.asarray(d, np.float64) - m))


# --------------------------------------------------------------------------- pairwise


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_bt_loss_values_small_batch(margin):
    chosen = torch.tensor(CHOSEN, dtype=torch.float64)
    rejected = torch.tensor(REJECTED, dtype=torch.float64)
    loss, _ = bradley_terry_loss(chosen, rejected, margin)
    d = np.array(CHOSEN) - np.array(REJECTED)  # [1, 0, -4]
    expected = -np.log(np_sigmoid(d - margin))
    assert loss.shape == (3,)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bt_loss_hand_values_margin0():
    # d = [1, 0, -4]:
    #   -log sigmoid(1)  = log(1 + e^-1) = 0.31326168751822286
    #   -log sigmoid(0)  = log 2         = 0.6931471805599453
    #   -log sigmoid(-4) = log(1 + e^4)  = 4.0181499279178094
    chosen = torch.tensor(CHOSEN, dtype=torch.float64)
    rejected = torch.tensor(REJECTED, dtype=torch.float64)
    loss, _ = bradley_terry_loss(chosen, rejected, 0.0)
    np.testing.assert_allclose(
        loss.numpy(), [0.31326168751822286, 0.6931471805599453, 4.0181499279178094], rtol=1e-12)


def test_bt_loss_hand_values_margin_half():
    # d - m = [0.5, -0.5, -4.5]
    expected = [math.log1p(math.exp(-0.5)), math.log1p(math.exp(0.5)), math.log1p(math.exp(4.5))]
    # = [0.47407698418010663, 0.9740769841801067, 4.511047744848594]
    chosen = torch.tensor(CHOSEN, dtype=torch.float64)
    rejected = torch.tensor(REJECTED, dtype=torch.float64)
    loss, _ = bradley_terry_loss(chosen, rejected, 0.5)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(expected, [0.47407698418010663, 0.9740769841801067,
                                          4.511047744848594], rtol=1e-12)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_bt_loss_gradients(margin):
    chosen = torch.tensor(CHOSEN, dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor(REJECTED, dtype=torch.float64, requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected, margin)
    loss.sum().backward()
    d = np.array(CHOSEN) - np.array(REJECTED)
    s = np_sigmoid(d - margin)
    np.testing.assert_allclose(chosen.grad.numpy(), -(1 - s), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rejected.grad.numpy(), +(1 - s), rtol=1e-12, atol=1e-14)


def test_bt_loss_gradients_weighted_upstream():
    # upstream weights g: dL/dr_w = -g (1 - s), dL/dr_l = +g (1 - s)
    g = np.array([0.3, -2.0, 1.5])
    chosen = torch.tensor(CHOSEN, dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor(REJECTED, dtype=torch.float64, requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected, 0.25)
    gc, gr = torch.autograd.grad(loss, (chosen, rejected), torch.tensor(g))
    s = np_sigmoid(np.array(CHOSEN) - np.array(REJECTED) - 0.25)
    np.testing.assert_allclose(gc.numpy(), -g * (1 - s), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gr.numpy(), g * (1 - s), rtol=1e-12, atol=1e-14)


def test_bt_loss_per_row_tensor_margin():
    m = np.array([0.0, -1.0, 2.0])
    chosen = torch.tensor(CHOSEN, dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor(REJECTED, dtype=torch.float64, requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected, torch.tensor(m))
    d = np.array(CHOSEN) - np.array(REJECTED)
    np.testing.assert_allclose(loss.detach().numpy(), -np.log(np_sigmoid(d - m)), rtol=1e-12)
    # row-wise: d - m = [1, 1, -6]
    np.testing.assert_allclose(loss.detach().numpy(),
                               [math.log1p(math.exp(-1)), math.log1p(math.exp(-1)),
                                math.log1p(math.exp(6))], rtol=1e-12)
    loss.sum().backward()
    s = np_sigmoid(d - m)
    np.testing.assert_allclose(chosen.grad.numpy(), -(1 - s), rtol=1e-12)
    np.testing.assert_allclose(rejected.grad.numpy(), 1 - s, rtol=1e-12)


def test_bt_metrics():
    chosen = torch.tensor(CHOSEN)
    rejected = torch.tensor(REJECTED)
    _, m = bradley_terry_loss(chosen, rejected, 0.5)
    # d = [1, 0, -4]: strictly positive in 1 of 3 rows (the tie does not count as correct)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["margin"] == pytest.approx((1 + 0 - 4) / 3)  # mean r_w - r_l, margin m not subtracted
    assert m["chosen"] == pytest.approx((2.0 + 0.5 - 1.0) / 3)
    assert m["rejected"] == pytest.approx((1.0 + 0.5 + 3.0) / 3)
    assert all(isinstance(v, float) for v in m.values())


def test_bt_metrics_all_correct():
    _, m = bradley_terry_loss(torch.tensor([1.0, 5.0]), torch.tensor([0.0, -5.0]))
    assert m["accuracy"] == 1.0
    assert m["margin"] == pytest.approx(5.5)


def test_bt_equal_rewards_is_log2():
    r = torch.tensor([0.0, 3.7, -12.5], dtype=torch.float64, requires_grad=True)
    r2 = r.detach().clone().requires_grad_(True)
    loss, m = bradley_terry_loss(r, r2)
    np.testing.assert_allclose(loss.detach().numpy(), [math.log(2)] * 3, rtol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(r.grad.numpy(), [-0.5] * 3, rtol=1e-12)
    np.testing.assert_allclose(r2.grad.numpy(), [0.5] * 3, rtol=1e-12)
    assert m["accuracy"] == 0.0
    assert m["margin"] == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bt_large_differences_finite(dtype):
    # d = +1e4 (loss ~ 0, grad ~ 0) and d = -1e4 (loss ~ 1e4, grad ~ -/+1)
    chosen = torch.tensor([1e4, -1e4, 0.0, 0.0], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=dtype, requires_grad=True)
    margin = torch.tensor([0.0, 0.0, 1e4, -1e4], dtype=dtype)  # d - m = [1e4, -1e4, -1e4, 1e4]
    loss, m = bradley_terry_loss(chosen, rejected, margin)
    assert torch.isfinite(loss).all()
    np.testing.assert_allclose(loss.detach().double().numpy(), np_bt([1e4, -1e4, 0, 0],
                                                                     np.array([0, 0, 1e4, -1e4])),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss.detach().double().numpy(), [0.0, 1e4, 1e4, 0.0], rtol=1e-6,
                               atol=1e-6)
    loss.sum().backward()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    np.testing.assert_allclose(chosen.grad.double().numpy(), [0.0, -1.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(rejected.grad.double().numpy(), [0.0, 1.0, 1.0, 0.0], atol=1e-6)
    assert all(math.isfinite(v) for v in m.values())


def test_bt_scalar_float_margin_large():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected, 1e4)
    assert float(loss.detach()) == pytest.approx(1e4, rel=1e-6)
    loss.sum().backward()
    assert float(chosen.grad) == pytest.approx(-1.0)
    assert float(rejected.grad) == pytest.approx(1.0)


# --------------------------------------------------------------------------- ranked lists


def _pairs(scores, valid=None):
    e, i, j = ranked_pairs(scores, valid)
    assert e.shape == i.shape == j.shape
    return Counter(zip(e.tolist(), i.tolist(), j.tolist()))


def np_pairs(scores, valid=None):
    """Independent enumeration of (e, i, j) with scores[e, i] > scores[e, j] over valid entries."""
    scores = np.asarray(scores)
    out = []
    for e in range(scores.shape[0]):
        for i in range(scores.shape[1]):
            for j in range(scores.shape[1]):
                if valid is not None and not (valid[e][i] and valid[e][j]):
                    continue
                if scores[e, i] > scores[e, j]:
                    out.append((e, i, j))
    return Counter(out)


def test_ranked_pairs_k3():
    got = _pairs(torch.tensor([[3.0, 1.0, 2.0]]))
    # 3 > 2 > 1: index 0 beats 2 and 1, index 2 beats 1
    assert got == Counter([(0, 0, 2), (0, 0, 1), (0, 2, 1)])


def test_ranked_pairs_k4_all_orderings():
    got = _pairs(torch.tensor([[0.5, 4.0, -1.0, 2.0]]))
    assert sum(got.values()) == math.comb(4, 2) == 6
    # order: 1 (4.0) > 3 (2.0) > 0 (0.5) > 2 (-1.0)
    assert got == Counter([(0, 1, 3), (0, 1, 0), (0, 1, 2), (0, 3, 0), (0, 3, 2), (0, 0, 2)])


def test_ranked_pairs_ties_give_no_pair():
    assert sum(_pairs(torch.tensor([[1.0, 1.0]])).values()) == 0
    got = _pairs(torch.tensor([[2.0, 1.0, 2.0, 0.0]]))
    # 0 and 2 tie (no pair between them); both beat 1 and 3; 1 beats 3 -> 5 pairs
    assert got == Counter([(0, 0, 1), (0, 0, 3), (0, 2, 1), (0, 2, 3), (0, 1, 3)])


def test_ranked_pairs_valid_mask_excludes_padding():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0],
                           [1.0, 0.0, 0.0, 9.0]])  # row 1: only 2 valid entries, padding has 9 / 0
    valid = torch.tensor([[True, True, True, True],
                          [True, True, False, False]])
    got = _pairs(scores, valid)
    assert got == Counter([(0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 1, 3), (0, 2, 1), (0, 2, 3),
                           (1, 0, 1)])
    assert got == np_pairs(scores.numpy(), valid.tolist())
    # without the mask, padding would add pairs
    assert sum(_pairs(scores).values()) > sum(got.values())


def test_ranked_pairs_random_vs_numpy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        E, K = rng.integers(1, 4), rng.integers(1, 6)
        scores = rng.integers(0, 3, size=(E, K)).astype(np.float32)  # many ties
        valid = rng.random((E, K)) < 0.8
        assert _pairs(torch.tensor(scores), torch.tensor(valid)) == np_pairs(scores, valid.tolist())
        assert _pairs(torch.tensor(scores)) == np_pairs(scores)


def _multiset_close(got, expected, tol=1e-12):
    got = np.sort(np.asarray(got, dtype=np.float64))
    expected = np.sort(np.asarray(expected, dtype=np.float64))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_listwise_loss_k3():
    rewards = torch.tensor([[0.7, -0.2, 1.5]], dtype=torch.float64)
    scores = torch.tensor([[3.0, 1.0, 2.0]])
    loss, m = listwise_bt_loss(rewards, scores)
    r = [0.7, -0.2, 1.5]
    # pairs (0,2), (0,1), (2,1): -log sigmoid(r_i - r_j)
    expected = [-math.log(1 / (1 + math.exp(-(r[0] - r[2])))),
                -math.log(1 / (1 + math.exp(-(r[0] - r[1])))),
                -math.log(1 / (1 + math.exp(-(r[2] - r[1]))))]
    _multiset_close(loss.numpy(), expected)
    assert float(loss.mean()) == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert float(loss.sum()) == pytest.approx(sum(expected), rel=1e-12)
    # pairwise accuracy: (0,2) wrong (0.7 < 1.5), (0,1) right, (2,1) right
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["margin"] == pytest.approx(((r[0] - r[2]) + (r[0] - r[1]) + (r[2] - r[1])) / 3)


def test_listwise_loss_padded_batch_with_margin_and_grads():
    rewards_np = np.array([[0.3, 1.2, -0.5, 2.0],
                           [1.0, -1.0, 5.0, 5.0]])
    scores = torch.tensor([[2.0, 4.0, 1.0, 3.0],
                           [1.0, 0.0, 7.0, 7.0]])
    valid = torch.tensor([[True, True, True, True],
                          [True, True, False, False]])
    margin = 0.3
    rewards = torch.tensor(rewards_np, requires_grad=True)
    loss, _ = listwise_bt_loss(rewards, scores, valid, margin)
    pairs = np_pairs(scores.numpy(), valid.tolist())
    assert sum(pairs.values()) == 6 + 1
    exp_losses, exp_grad = [], np.zeros_like(rewards_np)
    for (e, i, j) in pairs:
        x = rewards_np[e, i] - rewards_np[e, j] - margin
        exp_losses.append(np.logaddexp(0.0, -x))
        s = np_sigmoid(x)
        exp_grad[e, i] += -(1 - s)
        exp_grad[e, j] += (1 - s)
    _multiset_close(loss.detach().numpy(), exp_losses)
    loss.sum().backward()
    np.testing.assert_allclose(rewards.grad.numpy(), exp_grad, rtol=1e-12, atol=1e-14)
    # padded entries get no gradient
    assert rewards.grad[1, 2] == 0 and rewards.grad[1, 3] == 0


def test_listwise_per_list_margin_applies_to_each_of_its_pairs():
    rewards_np = np.array([[0.3, 1.2, -0.5],
                           [1.0, -1.0, 4.0]])
    scores = torch.tensor([[2.0, 3.0, 1.0],
                           [1.0, 0.0, 1.0]])          # list 1: a tie between 0 and 2 gives no pair
    margins = np.array([0.5, 2.0])
    rewards = torch.tensor(rewards_np, requires_grad=True)
    loss, _ = listwise_bt_loss(rewards, scores, None, torch.tensor(margins))
    # ordered pairs by hand: list 0: (1,0) (1,2) (0,2); list 1: (0,1) (2,1)
    pairs = [(0, 1, 0), (0, 1, 2), (0, 0, 2), (1, 0, 1), (1, 2, 1)]
    exp_losses, exp_grad = [], np.zeros_like(rewards_np)
    for e, i, j in pairs:
        x = rewards_np[e, i] - rewards_np[e, j] - margins[e]
        exp_losses.append(np.logaddexp(0.0, -x))
        exp_grad[e, i] += -(1 - np_sigmoid(x))
        exp_grad[e, j] += 1 - np_sigmoid(x)
    _multiset_close(loss.detach().numpy(), exp_losses)
    loss.sum().backward()
    np.testing.assert_allclose(rewards.grad.numpy(), exp_grad, rtol=1e-12, atol=1e-14)
    # margins of zero are the plain loss; a list whose pairs are all ties contributes nothing
    plain, _ = listwise_bt_loss(rewards.detach(), scores, None, torch.zeros(2, dtype=torch.float64))
    _multiset_close(plain.numpy(), listwise_bt_loss(rewards.detach(), scores)[0].numpy())
    none, m = listwise_bt_loss(rewards.detach(), torch.ones(2, 3), None, torch.tensor(margins))
    assert none.numel() == 0 and all(math.isfinite(v) for v in m.values())


def test_listwise_pair_equals_bt():
    rewards = torch.tensor([[2.0, 1.0], [0.5, 0.5], [-1.0, 3.0]], dtype=torch.float64)
    scores = torch.tensor([[1.0, 0.0]] * 3)
    loss, _ = listwise_bt_loss(rewards, scores)
    _multiset_close(loss.numpy(), np_bt(np.array(CHOSEN) - np.array(REJECTED), 0.0))


def test_listwise_all_ties_metrics_finite():
    loss, m = listwise_bt_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 1.0]]))
    assert loss.numel() == 0
    assert all(math.isfinite(v) for v in m.values()), m

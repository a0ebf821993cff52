"""Tests for rlhfkit.losses.unpaired.dro_loss against float64 numpy and hand values.

Batch: policy = [-5, -3, -10, -4], ref = [-5.5, -3, -9, -4.2] -> h = [0.5, 0, -1, 0.2];
values V = [0.3, -0.1, 0.6, 0.0]; rewards r = [1, 0, 1, 0.25]; τ = 0.5.
    t = r - V - τh = [1 - 0.3 - 0.25, 0 + 0.1 - 0, 1 - 0.6 + 0.5, 0.25 - 0 - 0.1]
      = [0.45, 0.1, 0.9, 0.15]
    loss = ½ t² = [0.10125, 0.005, 0.405, 0.01125]
Gradients (Richemond et al. 2024, eqs. 7 and 8):
    ∂/∂V      = -t
    ∂/∂policy = -τ·t             (exact gradient of ½ t²)
              = -t                (DRO-V: policy gradient rescaled by 1/τ)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.losses.unpaired import UNPAIRED_LOSSES, dro_loss, get_unpaired_loss, kto_loss

POLICY = [-5.0, -3.0, -10.0, -4.0]
REF = [-5.5, -3.0, -9.0, -4.2]
VALUES = [0.3, -0.1, 0.6, 0.0]
REWARDS = [1.0, 0.0, 1.0, 0.25]
TAU = 0.5
T_HAND = [0.45, 0.1, 0.9, 0.15]


def t(x, grad=False, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


def np_residual(policy=POLICY, ref=REF, values=VALUES, rewards=REWARDS, tau=TAU):
    h = np.asarray(policy, np.float64) - np.asarray(ref, np.float64)
    return np.asarray(rewards, np.float64) - np.asarray(values, np.float64) - tau * h


def run(policy=POLICY, ref=REF, values=VALUES, rewards=REWARDS, grad=True, **kw):
    p, r, v = t(policy, grad), t(ref, grad), t(values, grad)
    loss, m = dro_loss(p, r, v, t(rewards), **{"tau": TAU, **kw})
    return loss, m, (p, r, v)


def test_registered_next_to_kto():
    assert get_unpaired_loss("dro") is dro_loss and UNPAIRED_LOSSES["kto"] is kto_loss
    with pytest.raises(ConfigError, match="unpaired loss must be one of"):
        get_unpaired_loss("drop")


@pytest.mark.parametrize("rescale", [True, False])
def test_values_by_hand_and_numpy(rescale):
    loss, _, _ = run(rescale_policy=rescale)
    np.testing.assert_allclose(np_residual(), T_HAND, rtol=1e-12)
    # the 1/τ rescaling changes gradients only, never the value
    np.testing.assert_allclose(loss.detach().numpy(), 0.5 * np.square(T_HAND), rtol=1e-12)
    assert float(loss[2].detach()) == pytest.approx(0.405, rel=1e-12)


def test_exact_gradients_without_rescaling():
    loss, _, (p, r, v) = run(rescale_policy=False)
    loss.sum().backward()
    res = np_residual()
    h = np.array(POLICY) - np.array(REF)
    r_minus_v = np.array(REWARDS) - np.array(VALUES)
    np.testing.assert_allclose(v.grad.numpy(), -res, rtol=1e-12)               # eq. 7
    np.testing.assert_allclose(p.grad.numpy(), -TAU * res, rtol=1e-12)
    # eq. 8, term by term: -τ(r - V)·∇log π  +  (τ²/2)·∇(log π/π_ref)²
    np.testing.assert_allclose(p.grad.numpy(), -TAU * r_minus_v + TAU ** 2 * h, rtol=1e-12)
    np.testing.assert_allclose(r.grad.numpy(), TAU * res, rtol=1e-12)


def test_dro_v_policy_gradient_rescaled_by_one_over_tau():
    loss, _, (p, _, v) = run(rescale_policy=True)
    loss.sum().backward()
    res = np_residual()
    h = np.array(POLICY) - np.array(REF)
    # Algorithm 1: -(r - V)·∇log π + (τ/2)·∇(log π/π_ref)²
    np.testing.assert_allclose(p.grad.numpy(), -(np.array(REWARDS) - np.array(VALUES)) + TAU * h,
                               rtol=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), -res, rtol=1e-12)
    np.testing.assert_allclose(v.grad.numpy(), -res, rtol=1e-12)               # V unchanged


def test_gradients_finite_differences():
    loss, _, (p, _, v) = run(rescale_policy=False)
    loss.sum().backward()
    eps = 1e-6
    f = lambda pol, val: 0.5 * np.square(np_residual(policy=pol, values=val))  # noqa: E731
    pol, val = np.array(POLICY), np.array(VALUES)
    np.testing.assert_allclose(p.grad.numpy(), (f(pol + eps, val) - f(pol - eps, val)) / (2 * eps),
                               rtol=1e-6)
    np.testing.assert_allclose(v.grad.numpy(), (f(pol, val + eps) - f(pol, val - eps)) / (2 * eps),
                               rtol=1e-6)


@pytest.mark.parametrize("rescale", [True, False])
def test_optimum_gives_zero_loss_and_zero_gradient(rescale):
    # r = V + τh exactly: the optimality condition of eq. 3 holds for every example
    h = np.array(POLICY) - np.array(REF)
    rewards = list(np.array(VALUES) + TAU * h)
    loss, m, (p, r, v) = run(rewards=rewards, rescale_policy=rescale)
    loss.sum().backward()
    assert float(loss.detach().abs().max()) < 1e-24
    for g in (p.grad, r.grad, v.grad):
        assert float(g.abs().max()) < 1e-12
    assert m["residual"] == pytest.approx(0.0, abs=1e-12)


def test_policy_equal_to_reference_regresses_reward_on_value():
    # h = 0 (first step): the loss is the value head's squared error only
    loss, _, _ = run(policy=REF, ref=REF)
    np.testing.assert_allclose(loss.detach().numpy(),
                               0.5 * np.square(np.array(REWARDS) - np.array(VALUES)), rtol=1e-12)


def test_metrics():
    _, m, _ = run()
    h = np.array(POLICY) - np.array(REF)
    assert m["residual"] == pytest.approx(np.mean(T_HAND), rel=1e-12)
    assert m["value"] == pytest.approx(np.mean(VALUES), rel=1e-12)
    assert m["reward"] == pytest.approx(np.mean(REWARDS), rel=1e-12)
    assert m["logratio"] == pytest.approx(h.mean(), rel=1e-12)
    assert m["rewards/implicit"] == pytest.approx(TAU * h.mean(), rel=1e-12)
    target = np.array(REWARDS) - TAU * h
    ev = 1 - np.var(target - np.array(VALUES), ddof=1) / np.var(target, ddof=1)
    assert m["value/explained_variance"] == pytest.approx(ev, rel=1e-12)
    assert all(isinstance(x, float) for x in m.values())


def test_empty_batch():
    loss, m, (p, _, v) = run(policy=[], ref=[], values=[], rewards=[])
    assert loss.shape == (0,)
    loss.sum().backward()
    assert p.grad.shape == (0,) and v.grad.shape == (0,)
    assert all(x == 0.0 for x in m.values())


def test_constant_target_has_zero_explained_variance_not_nan():
    _, m, _ = run(policy=REF, ref=REF, rewards=[1.0] * 4)
    assert m["value/explained_variance"] == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_log_ratios_finite(dtype):
    p = torch.tensor([1e4, -1e4], dtype=dtype, requires_grad=True)
    v = torch.zeros(2, dtype=dtype, requires_grad=True)
    loss, m = dro_loss(p, torch.zeros(2, dtype=dtype), v, torch.tensor([1.0, 0.0], dtype=dtype), tau=1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(p.grad).all() and torch.isfinite(v.grad).all()
    assert all(math.isfinite(x) for x in m.values())
    # t = r - 0 - h = [1 - 1e4, 1e4]
    np.testing.assert_allclose(loss.detach().double().numpy(), [0.5 * (1 - 1e4) ** 2, 0.5 * 1e8], rtol=1e-6)

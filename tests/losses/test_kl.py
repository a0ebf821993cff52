"""Tests for rlhfkit.losses.kl.kl_estimate against hand-computed values.

With r = ref_logp - logp (= log(π_ref/π)):
    k1 = log(π/π_ref)                = -r                  d/dlogp = +1
    k2 = ½ (log(π/π_ref))²            = ½ r²                d/dlogp = -r = logp - ref_logp
    k3 = π_ref/π - log(π_ref/π) - 1   = exp(r) - r - 1      d/dlogp = 1 - exp(r)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.losses.kl import KL_ESTIMATORS, kl_estimate

LOGP = [-1.0, -2.0, -0.5, -3.0]
REF = [-1.5, -1.0, -0.5, -0.7]
# r = REF - LOGP = [-0.5, 1.0, 0.0, 2.3]

E = math.e
K1 = [0.5, -1.0, 0.0, -2.3]
K2 = [0.125, 0.5, 0.0, 0.5 * 2.3 ** 2]                 # 2.645
K3 = [
    math.exp(-0.5) + 0.5 - 1.0,                        # 0.6065306597 - 0.5 = 0.1065306597
    E - 1.0 - 1.0,                                     # 0.7182818285
    0.0,                                               # exp(0) - 0 - 1
    math.exp(2.3) - 2.3 - 1.0,                         # 9.9741824548 - 3.3 = 6.6741824548
]
DK1 = [1.0, 1.0, 1.0, 1.0]
DK2 = [0.5, -1.0, 0.0, -2.3]                           # logp - ref
DK3 = [1.0 - math.exp(-0.5), 1.0 - E, 0.0, 1.0 - math.exp(2.3)]


def _inputs(dtype=torch.float64):
    logp = torch.tensor(LOGP, dtype=dtype, requires_grad=True)
    ref = torch.tensor(REF, dtype=dtype)
    return logp, ref


@pytest.mark.parametrize("kind,expected,dexpected", [("k1", K1, DK1), ("k2", K2, DK2), ("k3", K3, DK3)])
def test_values_and_grad(kind, expected, dexpected):
    logp, ref = _inputs()
    out = kl_estimate(logp, ref, kind)
    assert out.shape == logp.shape
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    np.testing.assert_allclose(logp.grad.numpy(), dexpected, rtol=1e-12, atol=1e-12)


def test_k3_grad_through_ref():
    # d k3 / d ref = exp(r) - 1
    logp = torch.tensor(LOGP, dtype=torch.float64)
    ref = torch.tensor(REF, dtype=torch.float64, requires_grad=True)
    kl_estimate(logp, ref, "k3").sum().backward()
    r = np.array(REF) - np.array(LOGP)
    np.testing.assert_allclose(ref.grad.numpy(), np.exp(r) - 1.0, rtol=1e-12)


def test_default_is_k3():
    logp, ref = _inputs()
    torch.testing.assert_close(kl_estimate(logp, ref), kl_estimate(logp, ref, "k3"))


def test_identical_policies_give_zero():
    x = torch.tensor([-0.1, -5.0, -20.0])
    for kind in KL_ESTIMATORS:
        assert torch.equal(kl_estimate(x, x.clone(), kind), torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k2_k3_nonnegative_on_grid(dtype):
    # r from -30 to 30 including tiny |r| where exp(r) - r - 1 suffers cancellation
    r = torch.cat([torch.linspace(-30, 30, 2001, dtype=dtype),
                   torch.tensor([1e-8, -1e-8, 1e-6, -1e-6, 1e-4, -1e-4, 3e-3, -3e-3], dtype=dtype)])
    logp = torch.full_like(r, -2.0)
    ref = logp + r
    for kind in ("k2", "k3"):
        out = kl_estimate(logp, ref, kind)
        assert torch.isfinite(out).all()
        assert (out >= 0).all(), kind


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_extreme_inputs_finite(dtype):
    # ref - logp = 50 (π_ref/π = e^50), = 1e4, and = -50 (π ≫ π_ref)
    logp = torch.tensor([-60.0, -1e4, 0.0], dtype=dtype, requires_grad=True)
    ref = torch.tensor([-10.0, 0.0, -50.0], dtype=dtype)
    out = kl_estimate(logp, ref, "k3")
    assert torch.isfinite(out).all()
    assert (out >= 0).all()
    # huge ratio: large but finite (the estimator is capped, not inf)
    assert out[0] > 1e8 and out[1] > 1e8
    # r = -50: exp(-50) + 50 - 1 = 49 (to float precision)
    assert out[2].item() == pytest.approx(49.0, rel=1e-6)
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()
    # r = -50: d/dlogp = 1 - exp(-50) ≈ 1
    assert logp.grad[2].item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("kind", ["k1", "k2"])
def test_k1_k2_extreme_finite(kind):
    logp = torch.tensor([-60.0, 0.0])
    ref = torch.tensor([-10.0, -50.0])
    out = kl_estimate(logp, ref, kind)
    expected = [-50.0, 50.0] if kind == "k1" else [1250.0, 1250.0]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_unknown_kind_raises():
    logp, ref = _inputs()
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")

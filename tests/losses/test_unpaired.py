"""Tests for rlhfkit.losses.unpaired.kto_loss against hand / numpy values.

Batch: policy = [-5, -3, -10, -4], ref = [-5.5, -3, -9, -4.2] -> h = [0.5, 0, -1, 0.2],
labels = [desirable, undesirable, desirable, undesirable].
KL pairs: policy [-6, -7, -8] vs ref [-6.5, -7.2, -8.1] -> z0 = mean(0.5, 0.2, 0.1) = 0.8/3.
Per example (β = 0.5, λ_D = 1.5, λ_U = 0.7):
    desirable    λ_D (1 - σ(β(h - z0)))     d/dh = -λ_D β σ'(β(h - z0))
    undesirable  λ_U (1 - σ(β(z0 - h)))     d/dh = +λ_U β σ'(β(z0 - h))
with σ'(x) = σ(x)(1 - σ(x)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.losses.unpaired import kto_loss

POLICY = [-5.0, -3.0, -10.0, -4.0]
REF = [-5.5, -3.0, -9.0, -4.2]
LABELS = [True, False, True, False]
KL_P = [-6.0, -7.0, -8.0]
KL_R = [-6.5, -7.2, -8.1]
BETA, LD, LU = 0.5, 1.5, 0.7


def sig(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def t(x, grad=False, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


def np_kto(policy, ref, labels, z0, beta=BETA, ld=LD, lu=LU):
    h = np.asarray(policy) - np.asarray(ref)
    lab = np.asarray(labels, bool)
    return np.where(lab, ld * (1 - sig(beta * (h - z0))), lu * (1 - sig(beta * (z0 - h))))


def run(policy=POLICY, ref=REF, labels=LABELS, kl_p=KL_P, kl_r=KL_R, grad=False, **kw):
    p, r = t(policy, grad), t(ref, grad)
    kp, kr = t(kl_p, grad), t(kl_r, grad)
    kw = {"beta": BETA, "desirable_weight": LD, "undesirable_weight": LU, **kw}
    loss, m = kto_loss(p, r, torch.as_tensor(labels), kp, kr, **kw)
    return loss, m, (p, r, kp, kr)


def test_values_mixed_labels():
    loss, m, _ = run()
    z0 = 0.8 / 3
    assert m["kl"] == pytest.approx(z0, rel=1e-12)
    np.testing.assert_allclose(loss.detach().numpy(), np_kto(POLICY, REF, LABELS, z0), rtol=1e-12)
    # row 0 by hand: desirable, h = 0.5 -> 1.5 (1 - σ(0.5 (0.5 - 0.26667)))
    x = 0.5 * (0.5 - z0)
    assert float(loss[0].detach()) == pytest.approx(1.5 * (1 - 1 / (1 + math.exp(-x))), rel=1e-12)
    # row 1: undesirable, h = 0 -> 0.7 (1 - σ(0.5 z0))
    assert float(loss[1].detach()) == pytest.approx(0.7 / (1 + math.exp(0.5 * z0)), rel=1e-12)


def test_gradients_analytic_and_z0_detached():
    loss, _, (p, r, kp, kr) = run(grad=True)
    loss.sum().backward()
    z0 = 0.8 / 3
    h = np.array(POLICY) - np.array(REF)
    lab = np.array(LABELS)
    sd, su = sig(BETA * (h - z0)), sig(BETA * (z0 - h))
    want = np.where(lab, -LD * BETA * sd * (1 - sd), LU * BETA * su * (1 - su))
    np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(r.grad.numpy(), -want, rtol=1e-12)
    # z0 is a detached reference point: nothing flows into the mismatched-pair log-probs
    assert kp.grad is None and kr.grad is None


def test_gradients_finite_differences():
    loss, _, (p, _, _, _) = run(grad=True)
    loss.sum().backward()
    z0, eps = 0.8 / 3, 1e-6
    pol = np.array(POLICY)
    fd = (np_kto(pol + eps, REF, LABELS, z0) - np_kto(pol - eps, REF, LABELS, z0)) / (2 * eps)
    np.testing.assert_allclose(p.grad.numpy(), fd, rtol=1e-6)


def test_z0_clamped_at_zero():
    # mismatched pairs more likely under the reference: mean log-ratio -0.4 -> z0 = 0
    loss, m, _ = run(kl_p=[-7.0, -7.0], kl_r=[-6.5, -6.7])
    assert m["kl"] == 0.0
    np.testing.assert_allclose(loss.detach().numpy(), np_kto(POLICY, REF, LABELS, 0.0),
                               rtol=1e-12)
    # with z0 = 0 and h = 0 (row 1) the undesirable loss is λ_U (1 - σ(0)) = λ_U / 2
    assert float(loss[1].detach()) == pytest.approx(LU / 2, rel=1e-12)


def test_weights_scale_each_side():
    base, _, _ = run(desirable_weight=1.0, undesirable_weight=1.0)
    loss, _, _ = run(desirable_weight=2.0, undesirable_weight=0.25)
    np.testing.assert_allclose(loss.detach().numpy(),
                               base.detach().numpy() * np.array([2.0, 0.25, 2.0, 0.25]),
                               rtol=1e-12)


def test_metrics():
    loss, m, _ = run()
    # βh = [0.25, 0, -0.5, 0.1]: desirable rows 0, 2; undesirable rows 1, 3
    assert m["rewards/chosen"] == pytest.approx((0.25 - 0.5) / 2)
    assert m["rewards/rejected"] == pytest.approx((0.0 + 0.1) / 2)
    assert m["rewards/margin"] == pytest.approx(-0.125 - 0.05)
    assert m["logps/chosen"] == pytest.approx(-7.5)
    assert m["logps/rejected"] == pytest.approx(-3.5)
    assert m["count/chosen"] == 2.0 and m["count/rejected"] == 2.0
    assert all(isinstance(v, float) for v in m.values())


def test_one_sided_and_empty_batches_no_nan():
    _, m, _ = run(labels=[True] * 4)
    assert m["rewards/rejected"] == 0.0 and m["rewards/margin"] == 0.0
    assert m["count/rejected"] == 0.0
    loss, m, _ = run(policy=[], ref=[], labels=torch.zeros(0, dtype=torch.bool), kl_p=[], kl_r=[])
    assert loss.shape == (0,)
    assert all(v == 0.0 for v in m.values())


def test_int_labels_and_empty_kl():
    loss, m, _ = run(labels=[1, 0, 1, 0], kl_p=[], kl_r=[])
    assert m["kl"] == 0.0
    np.testing.assert_allclose(loss.detach().numpy(), np_kto(POLICY, REF, LABELS, 0.0),
                               rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_log_ratios_finite(dtype):
    p = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=dtype, requires_grad=True)
    r = torch.zeros(4, dtype=dtype)
    loss, m = kto_loss(p, r, torch.tensor(LABELS), torch.tensor([1e4], dtype=dtype),
                       torch.zeros(1, dtype=dtype), beta=BETA)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert all(math.isfinite(v) for v in m.values())
    # z0 = 1e4: desirable h = 1e4 sits on the reference point -> 1/2; undesirable h = -1e4 -> ~0
    np.testing.assert_allclose(loss.detach().double().numpy(), [0.5, 0.0, 0.5, 0.0], atol=1e-6)

"""Tests for rlhfkit.losses.sft against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.losses.sft import sft_loss


def test_sft_loss_values_and_masking():
    logps = [-0.5, -1.25, -3.0, -0.1, -2.0]
    mask = [1.0, 0.0, 1.0, 1.0, 0.0]
    loss, m = sft_loss(torch.tensor(logps, dtype=torch.float64), torch.tensor(mask, dtype=torch.float64))
    # NLL = -logp where mask = 1, exactly 0 elsewhere
    np.testing.assert_allclose(loss.numpy(), [0.5, 0.0, 3.0, 0.1, 0.0], rtol=1e-15, atol=0)
    assert loss[1].item() == 0.0 and loss[4].item() == 0.0
    # masked mean: (0.5 + 3.0 + 0.1) / 3 = 1.2
    assert m["nll"] == pytest.approx(1.2, rel=1e-12)
    assert m["tokens"] == 3.0


def test_sft_loss_gradient_is_minus_mask():
    rng = np.random.default_rng(1)
    logps = torch.tensor(-rng.random(11) * 4, dtype=torch.float64, requires_grad=True)
    mask_np = (rng.random(11) < 0.6).astype(np.float64)
    mask_np[0] = 1.0
    loss, _ = sft_loss(logps, torch.tensor(mask_np))
    loss.sum().backward()
    np.testing.assert_array_equal(logps.grad.numpy(), -mask_np)


def test_sft_loss_gradient_weighted_upstream():
    logps = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0])
    loss, _ = sft_loss(logps, mask)
    (g,) = torch.autograd.grad(loss, logps, torch.tensor([2.0, 5.0, -0.5]))
    np.testing.assert_allclose(g.numpy(), [-2.0, 0.0, 0.5])


def test_sft_loss_masked_inf_logp_gives_zero():
    # a masked token may carry any finite value; masked positions contribute exactly 0
    loss, m = sft_loss(torch.tensor([-1e30, -0.5]), torch.tensor([0.0, 1.0]))
    assert loss.tolist() == [0.0, 0.5]
    assert m["nll"] == pytest.approx(0.5)


def test_sft_loss_bool_mask():
    loss, m = sft_loss(torch.tensor([-2.0, -4.0, -6.0]), torch.tensor([True, False, True]))
    np.testing.assert_allclose(loss.numpy(), [2.0, 0.0, 6.0])
    assert m["nll"] == pytest.approx(4.0)
    assert m["tokens"] == 2.0


def test_sft_loss_empty_mask_no_nan():
    loss, m = sft_loss(torch.tensor([-1.0, -2.0]), torch.zeros(2))
    assert loss.tolist() == [0.0, 0.0]
    assert m["nll"] == 0.0 and m["tokens"] == 0.0
    assert all(math.isfinite(v) for v in m.values())


def test_sft_loss_random_vs_numpy():
    rng = np.random.default_rng(7)
    lp = -rng.exponential(2.0, size=64)
    mk = (rng.random(64) < 0.5).astype(np.float64)
    loss, m = sft_loss(torch.tensor(lp), torch.tensor(mk))
    np.testing.assert_allclose(loss.numpy(), np.where(mk > 0, -lp, 0.0), rtol=1e-15)
    assert m["nll"] == pytest.approx(float((-lp * mk).sum() / mk.sum()), rel=1e-12)

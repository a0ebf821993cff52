"""The training loop's AdamW: the fused kernel against a float64 numpy AdamW written from the
formula, and the fused and default implementations against each other in a real run."""

import numpy as np
import pytest
import torch

from rlhfkit.config import TrainConfig
from rlhfkit.train import sft
from rlhfkit.train.loop import make_optimizer
from test_recipes import data, quiet, sft_cfg  # noqa: F401  (module fixture)


def numpy_adamw(p, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """Decoupled weight decay Adam (Loshchilov & Hutter), bias-corrected, in float64."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p *= 1 - lr * wd
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_the_formula(fused):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((7, 5)).astype(np.float32)
    grads = [rng.standard_normal((7, 5)).astype(np.float32) * s for s in (1.0, 0.1, 3.0, 0.01, 1.0)]
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = make_optimizer([param], TrainConfig(lr=0.05, weight_decay=0.1, fused_optimizer=fused), param.device)
    assert opt.defaults.get("fused") is (True if fused else None)
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        opt.step()
    want = numpy_adamw(p0, [g.astype(np.float64) for g in grads], lr=0.05, wd=0.1)
    np.testing.assert_allclose(param.detach().numpy(), want, rtol=0, atol=2e-6)
    assert np.abs(want - p0).max() > 0.1  # the updates are large enough to tell a wrong formula apart


def test_fused_and_default_adamw_train_the_same(tiny_dir, data, tmp_path):  # noqa: F811
    """Three SFT steps with each implementation: the same losses and the same final weights."""
    runs = []
    for fused in (True, False):
        torch.manual_seed(0)
        t = sft.build(sft_cfg(tiny_dir, data, tmp_path / str(fused), max_steps=3, fused_optimizer=fused,
                              weight_decay=0.01), log=quiet)
        assert t.optimizer.defaults.get("fused") is (True if fused else None)
        t.model.train()
        losses = [t._train_step(s)["train/loss"] for s in range(3)]
        runs.append((losses, [p.detach().clone() for p in t.model.parameters()]))
    (l1, w1), (l2, w2) = runs
    assert l1 == pytest.approx(l2, abs=1e-5)
    assert l1[2] != pytest.approx(l1[0], abs=1e-3)  # the weights did move between steps
    assert max(float((a - b).abs().max()) for a, b in zip(w1, w2)) < 1e-5

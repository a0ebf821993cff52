"""log Σ_v p_v² from the chunked LM-head pass (WPO's per-token normaliser), against float64 numpy
from explicit logits; requesting it changes neither the log-probs, the entropy nor their gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.models.logprobs import chunked_logprob_stats, chunked_logprobs

N, H, V = 29, 12, 97


def np_log_sum_sq(h, w, b=None, t=1.0):
    logits = (h @ w.T + (0 if b is None else b)) / t
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.log((p ** 2).sum(-1))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return (rng.normal(size=(N, H)), rng.normal(size=(V, H)) * 0.8, rng.normal(size=V),
            rng.integers(0, V, size=N), rng.normal(size=N))


@pytest.mark.parametrize("chunk", [1, 4, 29, 512])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("entropy", [False, True])
def test_values_vs_numpy(data, chunk, use_bias, temperature, entropy):
    h, w, b, y, _ = data
    logp, ent, lsq = chunked_logprob_stats(torch.tensor(h), torch.tensor(w), torch.tensor(y),
                                           bias=torch.tensor(b) if use_bias else None, chunk=chunk,
                                           temperature=temperature, entropy=entropy, log_sum_sq=True)
    want = np_log_sum_sq(h, w, b if use_bias else None, temperature)
    np.testing.assert_allclose(lsq.numpy(), want, rtol=1e-5, atol=1e-5)
    assert (lsq <= 0).all() and not lsq.requires_grad
    ref_logp, ref_ent = chunked_logprobs(torch.tensor(h), torch.tensor(w), torch.tensor(y),
                                         bias=torch.tensor(b) if use_bias else None, chunk=chunk,
                                         temperature=temperature, entropy=entropy)
    assert torch.equal(logp, ref_logp)
    assert (ent is None) == (not entropy) and (ent is None or torch.equal(ent, ref_ent))


def test_one_hot_and_uniform_rows():
    """A one-hot row has Σp² = 1 (log 0); a uniform row over V has Σp² = 1/V."""
    w = torch.eye(4, dtype=torch.float64)                    # (V=4, H=4)
    h = torch.tensor([[1e4, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    _, _, lsq = chunked_logprob_stats(h, w, torch.tensor([0, 2]), log_sum_sq=True)
    np.testing.assert_allclose(lsq.numpy(), [0.0, -math.log(4)], atol=1e-6)


def test_gradients_unchanged_and_none_through_the_normaliser(data):
    h, w, b, y, g = data
    grads = []
    for want in (False, True):
        ht, wt = torch.tensor(h, requires_grad=True), torch.tensor(w, requires_grad=True)
        logp, ent, lsq = chunked_logprob_stats(ht, wt, torch.tensor(y), chunk=5, entropy=True, log_sum_sq=want)
        ((logp * torch.tensor(g)).sum() + ent.sum()).backward()
        grads.append((ht.grad.clone(), wt.grad.clone()))
        if want:
            assert lsq.grad_fn is None and not lsq.requires_grad
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)


def test_empty_and_off():
    w = torch.randn(5, 3)
    logp, ent, lsq = chunked_logprob_stats(torch.zeros(0, 3), w, torch.zeros(0, dtype=torch.long), log_sum_sq=True)
    assert logp.numel() == 0 and ent is None and lsq.numel() == 0
    _, _, off = chunked_logprob_stats(torch.randn(2, 3), w, torch.tensor([0, 1]))
    assert off is None

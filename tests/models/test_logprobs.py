"""Tests for rlhfkit.models.logprobs against an independent float64 numpy log-softmax.

``chunked_logprobs`` computes its logits in float32 (documented: "logp (N,) fp32"), even for
float64 inputs, so the comparisons use float32-level tolerances (values ~1e-5 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhfkit.models.logprobs import chunked_logprobs, naive_logprobs

N, H, V = 37, 16, 101
TOL = dict(rtol=1e-5, atol=1e-5)


def np_log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    mx = logits.max(-1, keepdims=True)
    return logits - mx - np.log(np.exp(logits - mx).sum(-1, keepdims=True))


def np_ref(h, w, y, b=None, t=1.0):
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    logits = logits / t
    lsm = np_log_softmax(logits)
    logp = lsm[np.arange(len(y)), y]
    p = np.exp(lsm)
    ent = -(p * lsm).sum(-1)
    return logp, ent


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1234)
    h = rng.normal(size=(N, H))
    w = rng.normal(size=(V, H)) * 0.5
    b = rng.normal(size=V)
    y = rng.integers(0, V, size=N)
    g = rng.normal(size=N)
    return h, w, b, y, g


def _t(x, dtype=torch.float64, grad=False):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy", [True, False])  # without entropy the forward works in place
def test_values_vs_numpy(data, chunk, use_bias, temperature, entropy):
    h, w, b, y, _ = data
    exp_logp, exp_ent = np_ref(h, w, y, b if use_bias else None, temperature)
    for dtype in (torch.float32, torch.float64):
        logp, ent = chunked_logprobs(_t(h, dtype), _t(w, dtype), torch.tensor(y),
                                     bias=_t(b, dtype) if use_bias else None, chunk=chunk,
                                     temperature=temperature, entropy=entropy)
        assert logp.shape == (N,) and logp.dtype == torch.float32
        np.testing.assert_allclose(logp.double().numpy(), exp_logp, **TOL)
        assert (logp <= 0).all()
        if entropy:
            assert ent.shape == (N,)
            np.testing.assert_allclose(ent.double().numpy(), exp_ent, **TOL)
            assert (ent >= -1e-6).all() and (ent <= np.log(V) + 1e-5).all()


def test_entropy_none_by_default(data):
    h, w, _, y, _ = data
    logp, ent = chunked_logprobs(_t(h), _t(w), torch.tensor(y), chunk=7)
    assert ent is None
    np.testing.assert_allclose(logp.double().numpy(), np_ref(h, w, y)[0], **TOL)


@pytest.mark.parametrize("uses", ["both", "logp", "entropy"])
def test_entropy_gradient_matches_numpy(uses):
    """An entropy bonus backpropagates: d/dz of H = -sum p log p is -p (log p + H), checked
    against a float64 numpy computation of the same chain rule through logits = h W^T / t.
    Also with only one of the two outputs in the loss (the other gets no gradient: an entropy
    kept as a metric, or an entropy-only objective)."""
    rng = np.random.default_rng(3)
    h, w = rng.normal(size=(5, 4)), rng.normal(size=(9, 4))
    y, t = np.array([0, 3, 8, 2, 2]), 0.8
    a, c = rng.normal(size=5), rng.normal(size=5)          # upstream grads of logp and entropy
    a, c = (a if uses != "entropy" else 0 * a), (c if uses != "logp" else 0 * c)
    ht, wt = torch.tensor(h, dtype=torch.float32, requires_grad=True), torch.tensor(w, dtype=torch.float32, requires_grad=True)
    logp, ent = chunked_logprobs(ht, wt, torch.tensor(y), chunk=2, temperature=t, entropy=True)
    loss = 0
    if uses != "entropy":
        loss = loss + (logp * torch.tensor(a, dtype=torch.float32)).sum()
    if uses != "logp":
        loss = loss + (ent * torch.tensor(c, dtype=torch.float32)).sum()
    loss.backward()
    z = h @ w.T / t
    logq = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    p = np.exp(logq)
    H = -(p * logq).sum(1)
    onehot = np.eye(9)[y]
    gz = a[:, None] * (onehot - p) + c[:, None] * (-p * (logq + H[:, None]))
    np.testing.assert_allclose(ent.detach().numpy(), H, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ht.grad.numpy(), gz @ w / t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(wt.grad.numpy(), gz.T @ h / t, rtol=1e-4, atol=1e-5)


def test_entropy_uniform_and_one_hot():
    # zero weights -> uniform softmax over V: entropy = log V, logp = -log V
    h = torch.randn(4, 3)
    w = torch.zeros(10, 3)
    logp, ent = chunked_logprobs(h, w, torch.tensor([0, 3, 9, 5]), chunk=3, entropy=True)
    np.testing.assert_allclose(logp.numpy(), [-np.log(10)] * 4, rtol=1e-6)
    np.testing.assert_allclose(ent.numpy(), [np.log(10)] * 4, rtol=1e-6)
    # huge bias on one token -> near one-hot: entropy ~ 0, logp(target) ~ 0
    b = torch.zeros(10)
    b[3] = 100.0
    logp, ent = chunked_logprobs(h, w, torch.tensor([3, 3, 3, 3]), bias=b, entropy=True)
    assert torch.isfinite(ent).all()
    np.testing.assert_allclose(ent.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(logp.numpy(), 0.0, atol=1e-6)


def _reference_grads(h, w, b, y, g, t):
    """Autograd through the plain full-logits float64 computation."""
    ht, wt = _t(h, grad=True), _t(w, grad=True)
    bt = _t(b, grad=True) if b is not None else None
    logits = ht @ wt.T
    if bt is not None:
        logits = logits + bt
    lsm = torch.log_softmax(logits / t, -1)
    logp = lsm.gather(1, torch.tensor(y)[:, None]).squeeze(1)
    grads = torch.autograd.grad(logp, [x for x in (ht, wt, bt) if x is not None], _t(g))
    return [x.numpy() for x in grads]


def _np_grads(h, w, b, y, g, t):
    """Closed form: d logp / d logits = (onehot(y) - softmax) / t, then the chain rule."""
    logits = h @ w.T + (b if b is not None else 0.0)
    p = np.exp(np_log_softmax(logits / t))
    G = -p
    G[np.arange(len(y)), y] += 1.0
    G *= g[:, None] / t
    out = [G @ w, G.T @ h]
    if b is not None:
        out.append(G.sum(0))
    return out


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_vs_autograd(data, chunk, use_bias, temperature):
    h, w, b, y, g = data
    bb = b if use_bias else None
    ref = _reference_grads(h, w, bb, y, g, temperature)
    closed = _np_grads(h, w, bb, y, g, temperature)
    for r, c in zip(ref, closed):  # the two references agree to float64 precision
        np.testing.assert_allclose(r, c, rtol=1e-10, atol=1e-10)

    for dtype in (torch.float32, torch.float64):
        ht, wt = _t(h, dtype, True), _t(w, dtype, True)
        bt = _t(b, dtype, True) if use_bias else None
        logp, _ = chunked_logprobs(ht, wt, torch.tensor(y), bias=bt, chunk=chunk,
                                   temperature=temperature)
        logp.backward(torch.tensor(g, dtype=logp.dtype))
        got = [ht.grad, wt.grad] + ([bt.grad] if use_bias else [])
        for x, grad in zip([ht, wt, bt], got):
            assert grad is not None and grad.dtype == dtype and grad.shape == x.shape
        for grad, r in zip(got, ref):
            np.testing.assert_allclose(grad.double().numpy(), r, rtol=1e-5, atol=1e-5)


def test_gradient_only_hidden_or_only_weight(data):
    h, w, b, y, g = data
    ref_h, ref_w, ref_b = _reference_grads(h, w, b, y, g, 1.0)
    ht = _t(h, grad=True)
    logp, _ = chunked_logprobs(ht, _t(w), torch.tensor(y), bias=_t(b), chunk=4)
    logp.backward(_t(g).float())
    np.testing.assert_allclose(ht.grad.numpy(), ref_h, **TOL)
    wt, bt = _t(w, grad=True), _t(b, grad=True)
    logp, _ = chunked_logprobs(_t(h), wt, torch.tensor(y), bias=bt, chunk=4)
    logp.backward(_t(g).float())
    np.testing.assert_allclose(wt.grad.numpy(), ref_w, **TOL)
    np.testing.assert_allclose(bt.grad.numpy(), ref_b, **TOL)


def test_gradcheck_tiny():
    # The function computes logits and returns logp in float32 even for float64 inputs, so
    # finite differences are float32-limited: use a larger eps and float32-level tolerances.
    torch.manual_seed(0)
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2])

    def f(h, w, b):
        return chunked_logprobs(h, w, y, bias=b, chunk=2, temperature=0.7)[0].double()

    assert torch.autograd.gradcheck(f, (h, w, b), eps=1e-3, atol=2e-3, rtol=2e-3)


def test_gradcheck_plain_reference():
    # sanity of the reference path used above: gradcheck of naive float64 log-softmax is exact
    torch.manual_seed(0)
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 1, 3])

    def f(h, w):
        return torch.log_softmax(h @ w.T, -1).gather(1, y[:, None]).squeeze(1)

    assert torch.autograd.gradcheck(f, (h, w))


@pytest.mark.parametrize("entropy", [False, True])
def test_empty_input(entropy):
    h = torch.zeros(0, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    logp, ent = chunked_logprobs(h, w, torch.zeros(0, dtype=torch.long), chunk=5, entropy=entropy)
    assert logp.shape == (0,)
    assert logp.dtype == torch.float32
    if entropy:
        assert ent.shape == (0,)
    else:
        assert ent is None
    # a loss built from it still back-propagates (zero gradient) without error
    logp.sum().backward()
    assert w.grad is None or torch.count_nonzero(w.grad) == 0


def test_empty_input_with_bias():
    logp, _ = chunked_logprobs(torch.zeros(0, 3), torch.randn(4, 3), torch.zeros(0, dtype=torch.long),
                               bias=torch.randn(4))
    assert logp.shape == (0,)


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_naive_logprobs_agrees(data, use_bias, temperature):
    h, w, b, y, _ = data
    exp_logp, _ = np_ref(h, w, y, b if use_bias else None, temperature)
    naive = naive_logprobs(_t(h), _t(w), torch.tensor(y), bias=_t(b) if use_bias else None,
                           temperature=temperature)
    np.testing.assert_allclose(naive.double().numpy(), exp_logp, **TOL)
    chunked, _ = chunked_logprobs(_t(h), _t(w), torch.tensor(y), bias=_t(b) if use_bias else None,
                                  temperature=temperature, chunk=6)
    np.testing.assert_allclose(chunked.numpy(), naive.numpy(), rtol=1e-5, atol=1e-6)


def test_chunk_zero_or_negative_is_clamped(data):
    h, w, _, y, _ = data
    exp_logp, _ = np_ref(h[:5], w, y[:5])
    for chunk in (0, -3):
        logp, _ = chunked_logprobs(_t(h[:5]), _t(w), torch.tensor(y[:5]), chunk=chunk)
        np.testing.assert_allclose(logp.double().numpy(), exp_logp, **TOL)


def test_large_logits_stable():
    # logits of order 1e4: a naive exp would overflow; log-softmax must stay finite and exact
    h = torch.tensor([[100.0, 0.0], [0.0, 100.0]], dtype=torch.float64)
    w = torch.tensor([[100.0, 0.0], [0.0, 100.0], [99.0, 99.0]], dtype=torch.float64,
                     requires_grad=True)
    logp, ent = chunked_logprobs(h, w, torch.tensor([0, 2]), entropy=True)
    exp_logp, exp_ent = np_ref(h.numpy(), w.detach().numpy(), np.array([0, 2]))
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    np.testing.assert_allclose(logp.detach().double().numpy(), exp_logp, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ent.detach().double().numpy(), exp_ent, atol=1e-4)
    logp.sum().backward()
    assert torch.isfinite(w.grad).all()

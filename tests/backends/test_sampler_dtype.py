"""The cpu engine's bf16 and int8 weight copies: their arithmetic against float64 re-derivations
of its definition, row independence (batch invariance), their size, and rollouts whose
log-probs are the sampler's own (close to, not equal to, the fp32 training forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhfkit.backends import RuntimeOptions, make_engine
from rlhfkit.backends.base import SamplingParams
from rlhfkit.backends.cpu.packed import packed_linear_available
from rlhfkit.backends.cpu.weights import Bf16Linear, DecoderWeights, Embedding, Int8Linear, quantize_rows
from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Example
from rlhfkit.models.forward import completion_logprobs
from rlhfkit.models.loading import tiny_model


def data(rows: int = 6, k: int = 48, n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g) * 0.1, torch.randn(n, generator=g)


def np_quantize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: scale = max|row| / 127, q = round(a / scale)."""
    scale = np.abs(a).max(axis=1) / 127.0
    return np.clip(np.rint(a / scale[:, None]), -127, 127), scale


def test_quantize_rows_is_symmetric_per_row():
    _, w, _ = data()
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    wn = w.double().numpy()
    assert np.allclose(s.double().numpy(), np.abs(wn).max(1) / 127, rtol=1e-6)
    assert (q.abs().amax(1) == 127).all()                       # each row's largest weight maps to ±127
    err = np.abs(wn - q.double().numpy() * s.double().numpy()[:, None])
    assert (err <= s.double().numpy()[:, None] / 2 + 1e-7).all()  # within half a step


def test_int8_linear_equals_the_float64_derivation():
    x, w, b = data()
    got = Int8Linear(w, b)(x).double().numpy()
    qw, sw = np_quantize(w.double().numpy())
    qx, sx = np_quantize(x.double().numpy())
    want = (qx @ qw.T) * sx[:, None] * sw[None, :] + b.double().numpy()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)
    exact = (x.double() @ w.double().T + b.double()).numpy()
    assert np.abs(got - exact).max() > 1e-4                     # it is int8 arithmetic, not fp32
    assert np.abs(got - exact).mean() < 0.02 * np.abs(exact - b.double().numpy()).mean()


def test_int8_rows_do_not_depend_on_the_rest_of_the_batch():
    x, w, b = data(rows=9)
    lin = Int8Linear(w, b)
    whole = lin(x)
    x2 = x.clone()
    x2[1:] *= 50.0  # other rows far larger: a per-batch scale would change row 0
    assert torch.equal(lin(x2)[0], whole[0])
    assert torch.equal(lin(x[:1])[0], whole[0])


@pytest.mark.parametrize("packed", [True, False])
def test_bf16_linear_equals_the_bf16_rounded_product(packed):
    if packed and not packed_linear_available():
        pytest.skip("no oneDNN")
    x, w, b = data(rows=8)
    got = Bf16Linear(w, b, rows=8, packed=packed)(x).double()
    xb = x.to(torch.bfloat16).double()
    wb = w.to(torch.bfloat16).double()
    ref = xb @ wb.T                                             # exact product of the bf16 operands
    want = ref + b.double()
    # one bf16 rounding of the product (relative 2^-8) on top of the fp32 accumulation
    assert ((got - want).abs() <= ref.abs() * 2.0**-8 + 1e-5).all()
    assert (got - (x.double() @ w.double().T + b.double())).abs().max() > 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_embedding_rows(dtype):
    _, w, _ = data(n=30)
    e = Embedding(w, dtype, copy=True)
    ids = torch.tensor([[3, 0], [29, 3]])
    got = e(ids)
    assert got.shape == (4, w.shape[1]) and got.dtype == torch.float32
    if dtype == "fp32":
        want = w[[3, 0, 29, 3]]
        assert torch.equal(got, want) and e.table.data_ptr() != w.data_ptr()
    elif dtype == "bf16":
        assert torch.equal(got, w[[3, 0, 29, 3]].to(torch.bfloat16).float())
    else:
        q, s = np_quantize(w.double().numpy())
        want = q[[3, 0, 29, 3]] * s[[3, 0, 29, 3], None]
        assert np.allclose(got.double().numpy(), want, rtol=1e-6, atol=1e-7)


def test_copies_shrink_with_the_precision(tok):
    lm = tiny_model(tok, seed=5)
    size = {d: DecoderWeights(lm, d, rows=8, packed=False).nbytes() for d in ("fp32", "bf16", "int8")}
    params = sum(p.numel() for p in lm.parameters())
    assert size["fp32"] >= 4 * params          # every weight copied (the tied head twice: as head and table)
    assert 0.45 < size["bf16"] / size["fp32"] < 0.55
    assert 0.2 < size["int8"] / size["fp32"] < 0.3


@pytest.mark.parametrize("dtype,tol", [("bf16", 0.02), ("int8", 0.05)])
def test_low_precision_rollouts_return_their_own_logprobs(tok, dtype, tol):
    lm = tiny_model(tok, seed=5).eval()
    prompts = [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hi")]
    ro = make_engine("cpu", lm, tok, runtime=RuntimeOptions(sampler_dtype=dtype)).generate(
        prompts, SamplingParams(max_new_tokens=10, n=2), generator=torch.Generator().manual_seed(3))
    exs = [Example(i, p, ro.completion_ids[2 * i:2 * i + 2]) for i, p in enumerate(prompts)]
    b = collate(exs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(lm, b).token_logps
    mine = torch.tensor([lp for s in range(b.num_sequences)
                         for lp in ro.logprobs[2 * int(b.seq_example[s]) + int(b.seq_completion[s])]])
    drift = (trainer - mine).abs()
    assert 1e-6 < float(drift.mean()) < tol

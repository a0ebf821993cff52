"""Decode-time packed linears: same outputs as F.linear, fresh weights on every entry, and the
rollout engine gives the same samples and log-probs with and without them (without modifying
the model's modules)."""

import pytest
import torch
from torch import nn

from rlhfkit.backends.cpu import packed
from rlhfkit.models.loading import tiny_model
from rlhfkit.models.packed import packed_linear_available, packed_linears
from rlhfkit.rl.rollout import HFBackend, SamplingParams

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 4, 8, 17])
def test_packed_linear_equals_plain_linear(rows, bias):
    torch.manual_seed(rows)
    lin = nn.Linear(48, 80, bias=bias)
    x = torch.randn(rows, 1, 48)
    want = x.double() @ lin.weight.double().T + (lin.bias.double() if bias else 0)
    with packed_linears(lin, rows=8), torch.no_grad():
        got = lin(x)
        assert "forward" in lin.__dict__
    assert got.shape == (rows, 1, 80)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)
    assert "forward" not in lin.__dict__  # restored on exit


def test_packed_weights_are_current_and_autograd_takes_the_plain_path():
    torch.manual_seed(0)
    lin = nn.Linear(16, 24, bias=False)
    x = torch.randn(5, 16)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # an "optimizer step" before the next rollout
    with packed_linears(lin, rows=5):
        with torch.no_grad():
            assert torch.allclose(lin(x), x @ lin.weight.T, atol=1e-5)
        y = lin(x)  # grad mode: plain linear, gradients flow
        y.sum().backward()
    assert y.requires_grad
    assert torch.allclose(lin.weight.grad, x.sum(0).expand(24, 16), atol=1e-5)


def test_disabled_is_a_no_op():
    lin = nn.Linear(4, 4)
    with packed_linears(lin, enabled=False):
        assert "forward" not in lin.__dict__


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rollout_same_with_and_without_packed_weights(tok, temperature, monkeypatch):
    lm = tiny_model(tok, seed=5).eval()
    calls = []
    plain = packed.packed_matmul
    monkeypatch.setattr(packed, "packed_matmul", lambda *a: calls.append(1) or plain(*a))
    prompts = [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hello there, how are you doing?", "Hi")]
    sp = SamplingParams(max_new_tokens=12, temperature=temperature, n=3)
    a = HFBackend(lm, tok, packed_weights=True, lean_decode=False).generate(prompts, sp, generator=torch.Generator().manual_seed(1))
    n_packed = len(calls)
    b = HFBackend(lm, tok, packed_weights=False, lean_decode=False).generate(prompts, sp, generator=torch.Generator().manual_seed(1))
    assert n_packed > 12 and len(calls) == n_packed  # every decode step went through it; off = none
    assert a.completion_ids == b.completion_ids
    diff = max(abs(x - y) for la, lb in zip(a.logprobs, b.logprobs) for x, y in zip(la, lb))
    assert diff < 1e-5
    assert not any("forward" in m.__dict__ for m in lm.modules())


def test_probing_for_onednn_leaves_the_global_rng_alone(monkeypatch):
    """A seeded or resumed run must draw the same numbers whether or not the probe ran."""
    monkeypatch.setattr(packed, "_SUPPORTED", None)
    state = torch.get_rng_state()
    assert packed.packed_linear_available()
    assert torch.equal(torch.get_rng_state(), state)


def test_few_rows_take_the_plain_path_and_more_take_onednn(monkeypatch):
    lin = nn.Linear(16, 24)
    plain_calls = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: plain_calls.append(a[0].shape) or real(*a))
    with packed_linears(lin, rows=8), torch.no_grad():
        for rows in (1, 2, 3, 4, 8):
            lin(torch.randn(rows, 1, 16))
    assert [s[0] for s in plain_calls] == [1, 2, 3]  # packed.MIN_ROWS = 4
    assert packed.MIN_ROWS == 4


def test_generate_text_with_packed_weights_equals_plain_generate(tok):
    from rlhfkit.models.generate import generate_text

    lm = tiny_model(tok, seed=6).eval()
    prompts = ["What is 2 + 3?", "Hello there, how are you doing today?", "Hi", "Name a colour."]
    got = generate_text(lm, tok, prompts, max_new_tokens=8, batch_size=4)
    want = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        seq = lm.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id)
        want.append(tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True))
    assert got == want and any(got)

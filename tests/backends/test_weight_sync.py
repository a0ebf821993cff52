"""The weight contract: an engine with its own copy samples from the weights it was last given.

Each test perturbs the policy in place (as an optimizer step does) and checks, against the
training forward of an independent copy of the old and of the new weights, which weights the
engine's log-probs come from: the old ones until ``update_weights``, the new ones after."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit.backends import RuntimeOptions, make_engine
from rlhfkit.backends.base import SamplingParams
from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Example
from rlhfkit.models.forward import completion_logprobs
from rlhfkit.models.loading import tiny_model
from rlhfkit.rl.rollout import HFBackend

# mean |Δ log p| allowed between a sampler and the fp32 training forward of the same weights
TOL = {"fp32": 1e-5, "bf16": 0.01, "int8": 0.02}


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hello there, how are you doing?", "Hi")]


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def mean_drift(model, tok, prompts, ro) -> float:
    """Mean |training-forward log-prob − rollout log-prob| over the sampled tokens."""
    n = ro.n
    exs = [Example(i, p, ro.completion_ids[n * i:n * i + n]) for i, p in enumerate(prompts)]
    b = collate(exs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        got = completion_logprobs(model, b).token_logps
    want = torch.tensor([lp for s in range(b.num_sequences)
                         for lp in ro.logprobs[n * int(b.seq_example[s]) + int(b.seq_completion[s])]])
    return float((got - want).abs().mean())


def optimizer_step(model) -> None:
    """An in-place change of every weight, as an optimizer step makes (but larger)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


SP = SamplingParams(max_new_tokens=10, n=2)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_cpu_engine_samples_the_new_weights_only_after_update_weights(tok, prompts, dtype):
    lm = tiny_model(tok, seed=5).eval()
    engine = make_engine("cpu", lm, tok, runtime=RuntimeOptions(sampler_dtype=dtype))
    assert not engine.shares_weights
    before = engine.generate(prompts, SP, generator=seeded())
    old = copy.deepcopy(lm)
    optimizer_step(lm)
    tol = TOL[dtype]

    stale = engine.generate(prompts, SP, generator=seeded())
    assert stale.completion_ids == before.completion_ids and stale.logprobs == before.logprobs
    assert mean_drift(old, tok, prompts, stale) < tol          # still the old weights ...
    assert mean_drift(lm, tok, prompts, stale) > 10 * tol      # ... not the new ones

    engine.update_weights(lm)
    fresh = engine.generate(prompts, SP, generator=seeded())
    assert mean_drift(lm, tok, prompts, fresh) < tol
    assert mean_drift(old, tok, prompts, fresh) > 10 * tol
    assert fresh.completion_ids != before.completion_ids
    if dtype == "fp32":  # and exactly what the plain forward of the new weights samples
        plain = make_engine("hf", lm, tok).generate(prompts, SP, generator=seeded())
        assert fresh.completion_ids == plain.completion_ids


def test_update_weights_drops_the_copy_and_the_next_generate_remakes_it(tok, prompts):
    lm = tiny_model(tok, seed=5).eval()
    engine = make_engine("cpu", lm, tok)
    engine.generate(prompts, SP, generator=seeded())
    first = engine.decoder_weights()
    engine.update_weights(lm)
    assert engine._weights is None  # nothing held through the update itself
    engine.generate(prompts, SP, generator=seeded())
    assert engine.decoder_weights() is not first and engine.build_seconds > 0


@pytest.mark.parametrize("make", [lambda lm, tok: make_engine("hf", lm, tok),
                                  lambda lm, tok: make_engine("cpu", lm, tok, runtime=RuntimeOptions(lean_decode=False)),
                                  lambda lm, tok: HFBackend(lm, tok)],
                         ids=["hf", "cpu-fallback", "HFBackend"])
def test_engines_on_the_live_module_follow_the_new_weights_at_once(tok, prompts, make):
    lm = tiny_model(tok, seed=5).eval()
    engine = make(lm, tok)
    assert engine.shares_weights
    engine.generate(prompts, SP, generator=seeded())
    optimizer_step(lm)
    ro = engine.generate(prompts, SP, generator=seeded())  # no update_weights needed
    assert mean_drift(lm, tok, prompts, ro) < 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_evaluation_decodes_from_the_exact_weights(tok, prompts, dtype):
    """A bf16 sampling copy is replaced for evaluation by an engine on the exact fp32 weights,
    whose greedy tokens equal a plain fp32 engine's; an exact engine is kept as it is."""
    from rlhfkit.rl.config import RolloutConfig
    from rlhfkit.train.rl import exact_engine

    lm = tiny_model(tok, seed=5).eval()
    engine = make_engine("cpu", lm, tok, runtime=RuntimeOptions(sampler_dtype=dtype))
    got = exact_engine(engine, lm, tok, RolloutConfig(), RuntimeOptions(sampler_dtype=dtype))
    assert (got is engine) == (dtype == "fp32") and got.runtime.sampler_dtype == "fp32"
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    want = make_engine("cpu", lm, tok, runtime=RuntimeOptions()).generate(prompts, greedy)
    assert got.generate(prompts, greedy).completion_ids == want.completion_ids

"""The engine registry, RuntimeOptions checks, and the hf / cpu engines against independent
references: HF ``generate`` for greedy tokens, the training forward for log-probs, and the
former ``HFBackend`` path for sampled tokens."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.backends import ENGINES, RuntimeOptions, make_engine
from rlhfkit.backends.base import SamplingParams
from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Example
from rlhfkit.errors import ConfigError
from rlhfkit.models.forward import completion_logprobs
from rlhfkit.models.loading import tiny_model
from rlhfkit.rl.rollout import HFBackend


@pytest.fixture(scope="module")
def lm(tok):
    return tiny_model(tok, seed=5).eval()


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hello there, how are you doing?", "Hi")]


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def training_logprobs(model, tok, prompts, ro) -> tuple[torch.Tensor, torch.Tensor]:
    """(training forward's log-probs, the rollout's) of every sampled token, aligned."""
    n = ro.n
    exs = [Example(i, p, ro.completion_ids[n * i:n * i + n]) for i, p in enumerate(prompts)]
    b = collate(exs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        got = completion_logprobs(model, b).token_logps
    want = torch.tensor([lp for s in range(b.num_sequences)
                         for lp in ro.logprobs[n * int(b.seq_example[s]) + int(b.seq_completion[s])]])
    return got, want


def test_registry_names_and_unknown_engine(lm, tok):
    assert sorted(ENGINES) == ["cpu", "hf", "ray", "vllm"]
    with pytest.raises(ConfigError, match="unknown rollout.backend 'nope'; use one of cpu, hf, ray, vllm"):
        make_engine("nope", lm, tok)
    hf, cpu = make_engine("hf", lm, tok), make_engine("cpu", lm, tok)
    assert (hf.name, hf.shares_weights) == ("hf", True)
    assert (cpu.name, cpu.shares_weights) == ("cpu", False)  # Llama fp32: its own copy


@pytest.mark.parametrize("field,value,match", [
    ("sampler_dtype", "fp16", "sampler_dtype must be one of fp32, bf16, int8"),
    ("packed_weights", "yes", "packed_weights must be true or false"),
    ("lean_decode", 1, "lean_decode must be true or false"),
    ("shared_prefill", None, "shared_prefill must be true or false"),
    ("return_freed_memory", "no", "return_freed_memory must be true or false"),
    ("vllm_gpu_memory_utilization", 0.0, r"vllm_gpu_memory_utilization must be in \(0, 1\]"),
    ("vllm_gpu_memory_utilization", 1.5, r"vllm_gpu_memory_utilization must be in \(0, 1\]"),
])
def test_runtime_options_are_validated(lm, tok, field, value, match):
    RuntimeOptions().validate()
    rt = RuntimeOptions(**{field: value})
    with pytest.raises(ConfigError, match="runtime." + match):
        rt.validate()
    with pytest.raises(ConfigError, match=match):
        make_engine("cpu", lm, tok, runtime=rt)


@pytest.mark.parametrize("name", ["hf", "cpu"])
def test_greedy_matches_hf_generate(lm, tok, prompts, name):
    ro = make_engine(name, lm, tok).generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    for p, c in zip(prompts, ro.completion_ids):
        ref = lm.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert ref[0, len(p):].tolist() == c


@pytest.mark.parametrize("name", ["hf", "cpu"])
def test_sampled_logprobs_equal_the_training_forward(lm, tok, prompts, name):
    ro = make_engine(name, lm, tok).generate(prompts, SamplingParams(max_new_tokens=12, n=3), generator=seeded())
    got, want = training_logprobs(lm, tok, prompts, ro)
    assert got.numel() == 9 * 12
    assert torch.allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("lean", [True, False])
def test_cpu_engine_gives_the_tokens_of_the_former_path(lm, tok, prompts, temperature, lean):
    """Same seed, same tokens as HFBackend (weights re-read per call) and as the hf engine (the
    plain forward); rows end early at a stop string, so dropped rows are covered."""
    sp = SamplingParams(max_new_tokens=12, temperature=temperature, n=3, stop=["e"])
    rt = RuntimeOptions(lean_decode=lean)
    got = make_engine("cpu", lm, tok, runtime=rt).generate(prompts, sp, generator=seeded())
    former = HFBackend(lm, tok, lean_decode=lean).generate(prompts, sp, generator=seeded())
    plain = make_engine("hf", lm, tok).generate(prompts, sp, generator=seeded())
    assert got.completion_ids == former.completion_ids == plain.completion_ids
    assert got.finished == former.finished and got.texts == former.texts
    diff = max(abs(x - y) for la, lb in zip(got.logprobs, plain.logprobs) for x, y in zip(la, lb))
    assert diff < 1e-5
    if temperature > 0:
        assert len({len(c) for c in got.completion_ids}) > 1


def test_cpu_engine_is_batch_invariant(lm, tok, prompts):
    be, sp = make_engine("cpu", lm, tok), SamplingParams(max_new_tokens=8, n=2)
    whole = be.generate(prompts, sp, generator=seeded(7))
    tail = be.generate(prompts[1:], sp, generator=seeded(7), row_offset=2)
    assert tail.completion_ids == whole.completion_ids[2:]
    small = make_engine("cpu", lm, tok, batch_size=1).generate(prompts, sp, generator=seeded(7))
    assert small.completion_ids == whole.completion_ids
    assert be.generate(prompts, sp, generator=seeded(8)).completion_ids != whole.completion_ids


def test_cpu_engine_never_runs_or_patches_the_live_modules(lm, tok, prompts):
    """The lean path decodes from the engine's own copy: no module of the policy that holds
    parameters is called (the parameter-free rotary module computes cos/sin of positions), and
    no module gets a per-instance forward."""
    calls = []
    holders = [m for m in lm.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in holders]
    try:
        make_engine("cpu", lm, tok).generate(prompts, SamplingParams(max_new_tokens=4, n=2), generator=seeded())
        assert calls == []
        make_engine("hf", lm, tok).generate(prompts, SamplingParams(max_new_tokens=4, n=2), generator=seeded())
        assert calls  # the hf engine runs the module itself: the hooks do fire
    finally:
        for h in handles:
            h.remove()
    assert not any("forward" in m.__dict__ for m in lm.modules())


def test_fallback_models_share_weights_and_refuse_low_precision(tok):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_model(tok, seed=5), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    e = make_engine("cpu", lora, tok)
    assert e.shares_weights and "LoRA" in e.lean_issue
    ro = e.generate([[5, 6, 7]], SamplingParams(max_new_tokens=4, temperature=0))
    assert len(ro.completion_ids[0]) == 4
    assert not any("forward" in m.__dict__ for m in lora.modules())
    with pytest.raises(ConfigError, match="sampler_dtype=int8 needs the lean CPU decoder.*LoRA.*sampler_dtype: fp32"):
        make_engine("cpu", lora, tok, runtime=RuntimeOptions(sampler_dtype="int8"))
    off = make_engine("cpu", tiny_model(tok, seed=5), tok, runtime=RuntimeOptions(lean_decode=False))
    assert off.shares_weights and off.lean_issue == "runtime.lean_decode is false"


@pytest.mark.slow
def test_cpu_engine_on_the_embedded_model_gives_the_former_tokens():
    from rlhfkit.config import ModelConfig
    from rlhfkit.models.loading import load_model

    model, tok = load_model(ModelConfig(name="smollm2-135m"))
    model.eval()
    prompts = [tok(t)["input_ids"] for t in ("What is 12 + 30?", "Name a colour.", "Write a haiku about rain.")]
    sp = SamplingParams(max_new_tokens=16, n=2)
    got = make_engine("cpu", model, tok, batch_size=6).generate(prompts, sp, generator=seeded(4))
    former = HFBackend(model, tok, 6).generate(prompts, sp, generator=seeded(4))
    assert got.completion_ids == former.completion_ids
    got_lp, want_lp = training_logprobs(model, tok, prompts, got)
    assert float((got_lp - want_lp).abs().max()) < 1e-4

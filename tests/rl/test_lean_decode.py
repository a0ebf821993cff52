"""The lean decode forward: the same logits as the Hugging Face forward over its KV cache
(prefill with left padding, decode steps, dropped rows), the same rollouts, and a clear
refusal (fallback) for models it does not cover."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlhfkit.models.loading import tiny_model
from rlhfkit.rl.lean_decode import LeanDecoder, lean_decoder_issue
from rlhfkit.rl.rollout import HFBackend, SamplingParams


def small(kind: str, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    """A random two-layer model of the given family (Qwen2 has biases on q/k/v)."""
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                  pad_token_id=0, eos_token_id=1, attn_implementation="sdpa")
    torch.manual_seed(seed)
    if kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=10000.0))
        with torch.no_grad():  # non-zero biases, so a dropped bias would show
            for layer in m.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
        return m.eval()
    return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True)).eval()


def hf_reference(model, ids, valid, steps):
    """Last-position logits of the HF forward: prefill, then each row of ``steps`` (B,)
    tokens, and each step's selected rows (None = all)."""
    pos = (valid.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=valid, position_ids=pos, use_cache=True)
        logits, cache, attn, nxt = [out.logits[:, -1]], out.past_key_values, valid, pos[:, -1] + 1
        for tok, sel in steps:
            if sel is not None:
                cache.batch_select_indices(sel)
                attn, nxt = attn[sel], nxt[sel]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=nxt[:, None],
                        past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            cache, nxt = out.past_key_values, nxt + 1
    return logits


@pytest.mark.parametrize("kind,heads,kv_heads", [("llama", 4, 2), ("llama", 4, 4), ("llama", 4, 1), ("qwen2", 4, 2)])
@pytest.mark.parametrize("packed", [True, False])
def test_logits_equal_the_hf_forward(kind, heads, kv_heads, packed):
    model = small(kind, heads, kv_heads)
    assert lean_decoder_issue(model) is None
    g = torch.Generator().manual_seed(0)
    B, S = 6, 9
    ids = torch.randint(2, 300, (B, S), generator=g)
    valid = torch.ones(B, S, dtype=torch.long)
    valid[1, :3] = 0
    valid[3, :8] = 0  # a one-token prompt
    ids[valid == 0] = 0
    steps = [(torch.randint(2, 300, (B,), generator=g), None) for _ in range(3)]
    keep = torch.tensor([0, 2, 3, 5])
    steps.append((torch.randint(2, 300, (4,), generator=g), keep))
    steps += [(torch.randint(2, 300, (4,), generator=g), None) for _ in range(2)]
    want = hf_reference(model, ids, valid, steps)
    dec = LeanDecoder(model, rows=B, packed=packed)
    got = [dec.prefill(ids, valid, capacity=S + len(steps))]
    for tok, sel in steps:
        if sel is not None:
            dec.select(sel)
        got.append(dec.step(tok))
    assert len(got) == len(want) == 7
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) < 1e-5
    assert float((want[1] - want[2]).abs().max()) > 1e-2  # each step's logits differ: a real check
    with pytest.raises(ValueError, match="capacity"):
        dec.step(steps[-1][0])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rollout_same_with_and_without_the_lean_decoder(tok, temperature):
    lm = tiny_model(tok, seed=5).eval()
    prompts = [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hello there, how are you doing?", "Hi")]
    sp = SamplingParams(max_new_tokens=12, temperature=temperature, n=3, stop=["e"])  # rows end early
    a = HFBackend(lm, tok, lean_decode=True).generate(prompts, sp, generator=torch.Generator().manual_seed(1))
    b = HFBackend(lm, tok, lean_decode=False).generate(prompts, sp, generator=torch.Generator().manual_seed(1))
    assert a.completion_ids == b.completion_ids
    lengths = {len(c) for c in a.completion_ids}
    if temperature > 0:
        assert len(lengths) > 1  # some rows were dropped from the batch before others
    diff = max(abs(x - y) for la, lb in zip(a.logprobs, b.logprobs) for x, y in zip(la, lb))
    assert diff < 1e-5


def test_the_lean_decoder_is_used_and_can_be_switched_off(tok, monkeypatch):
    from rlhfkit.rl import lean_decode

    lm = tiny_model(tok, seed=5).eval()
    built = []
    real = lean_decode.LeanDecoder.__init__
    monkeypatch.setattr(lean_decode.LeanDecoder, "__init__", lambda self, *a, **k: built.append(1) or real(self, *a, **k))
    sp = SamplingParams(max_new_tokens=3, temperature=1.0, n=2)
    HFBackend(lm, tok).generate([[5, 6, 7]], sp)
    assert built == [1]
    HFBackend(lm, tok, lean_decode=False).generate([[5, 6, 7]], sp)
    assert built == [1]


def test_unsupported_models_are_named_and_fall_back(tok):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    assert "model type 'gpt2'" in lean_decoder_issue(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)))
    assert "bfloat16" in lean_decoder_issue(small("llama").to(torch.bfloat16))
    lora = get_peft_model(small("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert "LoRA" in lean_decoder_issue(lora)
    win = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, hidden_act="gelu"))
    assert "SiLU" in lean_decoder_issue(win)
    # a LoRA policy still samples, through its own forward
    lm = get_peft_model(tiny_model(tok, seed=5), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    ro = HFBackend(lm, tok).generate([[5, 6, 7]], SamplingParams(max_new_tokens=4, temperature=0))
    assert len(ro.completion_ids[0]) == 4


def test_input_embedding_hooks_do_not_fire(tok):
    """A checkpointing model makes its input embeddings require grad through a forward hook;
    decoding must neither trigger it nor trip tools that track modules (the FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    lm = tiny_model(tok, seed=5)
    lm.gradient_checkpointing_enable()
    lm.enable_input_require_grads()
    lm.train()
    fired = []
    lm.get_input_embeddings().register_forward_hook(lambda *a: fired.append(1))
    sp = SamplingParams(max_new_tokens=3, temperature=0)
    with FlopCounterMode(display=False) as fc:
        a = HFBackend(lm, tok).generate([[5, 6, 7, 8]], sp)
    assert fired == [] and fc.get_total_flops() > 0
    b = HFBackend(lm, tok, lean_decode=False).generate([[5, 6, 7, 8]], sp)
    assert a.completion_ids == b.completion_ids and lm.training


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_same_rollout_and_prefills_each_prompt_once(tok, monkeypatch, lean, temperature):
    """A prompt sampled n times is prefilled once (3 distinct prompts -> 3 prefill rows, not 9,
    with a repeated prompt in the list counted once) and the rollout equals per-row prefill:
    same tokens, log-probs within 1e-5, on both decode engines."""
    from rlhfkit.rl import rollout

    lm = tiny_model(tok, seed=5).eval()
    prompts = [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hi", "Hello there, how are you doing?", "Hi")]
    sp = SamplingParams(max_new_tokens=10, temperature=temperature, n=3, stop=["e"])
    rows = []
    for cls in (LeanDecoder, rollout._HFStepper):
        real = cls.prefill
        monkeypatch.setattr(cls, "prefill", lambda self, ids, *a, _r=real, **k: rows.append(ids.shape[0]) or _r(self, ids, *a, **k))
    run = {s: HFBackend(lm, tok, lean_decode=lean, shared_prefill=s).generate(
        prompts, sp, generator=torch.Generator().manual_seed(3)) for s in (True, False)}
    assert rows == [3, 12]
    assert run[True].completion_ids == run[False].completion_ids
    assert len(run[True].completion_ids) == 12
    diff = max(abs(x - y) for la, lb in zip(run[True].logprobs, run[False].logprobs) for x, y in zip(la, lb))
    assert diff < 1e-5
    if temperature > 0:  # the copies of one prompt draw their own samples
        assert len({tuple(c) for c in run[True].completion_ids[:3]}) > 1

"""The rollout engine: exact agreement with HF generate and with training-time log-probs."""

import pytest
import torch

from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Example
from rlhfkit.errors import ConfigError
from rlhfkit.models.forward import completion_logprobs
from rlhfkit.models.loading import tiny_model
from rlhfkit.rl.rollout import HFBackend, SamplingParams, make_backend, sample_tokens


@pytest.fixture(scope="module")
def lm(tok):
    return tiny_model(tok, seed=3).eval()


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hello there, how are you doing today?", "Hi")]


def test_greedy_matches_hf_generate(lm, tok, prompts):
    ro = HFBackend(lm, tok).generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    for p, c in zip(prompts, ro.completion_ids):
        ref = lm.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert ref[0, len(p):].tolist() == c
    assert ro.finished == [False, False, False]  # the random model never says EOS in 10 tokens
    assert ro.texts[0] == tok.decode(ro.completion_ids[0], skip_special_tokens=True)


def test_sampled_logprobs_equal_training_forward(lm, tok, prompts):
    torch.manual_seed(0)
    ro = HFBackend(lm, tok).generate(prompts, SamplingParams(max_new_tokens=12, temperature=1.0, n=3))
    assert len(ro.completion_ids) == 9 and all(len(c) == 12 for c in ro.completion_ids)
    exs = [Example(i, p, ro.completion_ids[3 * i:3 * i + 3]) for i, p in enumerate(prompts)]
    b = collate(exs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        got = completion_logprobs(lm, b).token_logps
    want = torch.tensor([lp for s in range(b.num_sequences)
                         for lp in ro.logprobs[3 * int(b.seq_example[s]) + int(b.seq_completion[s])]])
    assert torch.allclose(got, want, atol=2e-5)


def test_sampling_is_batch_invariant(lm, tok, prompts):
    """A prompt gets the same samples in a batch, alone with its global row offset (as a
    data-parallel shard would generate it), or with a different decode batch size."""
    be, sp = HFBackend(lm, tok), SamplingParams(max_new_tokens=8, temperature=1.0, n=2)
    whole = be.generate(prompts, sp, generator=torch.Generator().manual_seed(7))
    tail = be.generate(prompts[1:], sp, generator=torch.Generator().manual_seed(7), row_offset=2)
    assert tail.completion_ids == whole.completion_ids[2:]
    small = HFBackend(lm, tok, batch_size=1).generate(prompts, sp, generator=torch.Generator().manual_seed(7))
    assert small.completion_ids == whole.completion_ids
    other = be.generate(prompts, sp, generator=torch.Generator().manual_seed(8))
    assert other.completion_ids != whole.completion_ids


def test_gumbel_sampling_follows_the_distribution():
    """Per-row Gumbel-max draws match the softmax probabilities (chi-square-free check:
    frequencies within 4 standard errors over 4000 draws)."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = torch.softmax(logits, -1)[0]
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    toks = torch.cat([sample_tokens(logits, SamplingParams(), row_generators=[g])[0] for g in gens])
    freq = torch.bincount(toks, minlength=4).double() / 4000
    se = (p * (1 - p) / 4000).sqrt()
    assert torch.all((freq - p).abs() < 4 * se)


def test_finished_rows_leave_the_batch_and_others_continue_unchanged(lm, tok, prompts):
    params = SamplingParams(max_new_tokens=10, temperature=0)
    full = HFBackend(lm, tok).generate(prompts, params)
    # pretend a token only one row emits is EOS: that row stops there, the others go on
    be = HFBackend(lm, tok)
    r, stop_tok = next((r, t) for r, c in enumerate(full.completion_ids) for t in c
                       if all(t not in o for j, o in enumerate(full.completion_ids) if j != r))
    be.eos_ids = [stop_tok]
    ro = be.generate(prompts, params)
    first = full.completion_ids[r].index(stop_tok)
    assert ro.completion_ids[r] == full.completion_ids[r][:first + 1] and ro.finished[r]
    others = [j for j in range(3) if j != r]
    assert [ro.completion_ids[j] for j in others] == [full.completion_ids[j] for j in others]
    assert [ro.finished[j] for j in others] == [False, False]
    assert all(len(a) == len(b) for a, b in zip(ro.logprobs, ro.completion_ids))


def test_stop_string_ends_sample_and_is_cut_from_text(lm, tok, prompts):
    full = HFBackend(lm, tok).generate(prompts[:1], SamplingParams(max_new_tokens=10, temperature=0))
    text = tok.decode(full.completion_ids[0][:6], skip_special_tokens=True)
    stop = text[-3:] if len(text.strip()) >= 3 else text
    ro = HFBackend(lm, tok).generate(prompts[:1], SamplingParams(max_new_tokens=10, temperature=0, stop=[stop]))
    assert ro.finished[0] and len(ro.completion_ids[0]) <= 6
    assert stop not in ro.texts[0]


def test_sampling_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    g = torch.Generator().manual_seed(0)
    # top-k 1 and a tiny top-p both reduce to greedy with log-prob 0
    for p in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6)):
        tok, lp = sample_tokens(logits, p, g)
        assert tok.item() == 0 and lp.item() == pytest.approx(0.0, abs=1e-6)
    # top-k 2: the log-prob is under the renormalised 2-token distribution
    toks = [sample_tokens(logits, SamplingParams(top_k=2), g) for _ in range(200)]
    assert {t.item() for t, _ in toks} <= {0, 1}
    z = torch.log_softmax(torch.tensor([2.0, 1.0]), 0)
    for t, lp in toks:
        assert lp.item() == pytest.approx(z[t.item()].item(), abs=1e-6)
    # temperature 2: probabilities of softmax(logits / 2)
    t, lp = sample_tokens(logits, SamplingParams(temperature=2.0), g)
    assert lp.item() == pytest.approx(torch.log_softmax(logits[0] / 2, 0)[t.item()].item(), abs=1e-6)


def test_unknown_backend_is_a_config_error(lm, tok):
    with pytest.raises(ConfigError, match="rollout.backend"):
        make_backend("nope", lm, tok)
    with pytest.raises(ConfigError, match="vllm"):
        make_backend("vllm", lm, tok)

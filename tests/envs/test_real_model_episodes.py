"""run_episodes with a real (tiny, random) model, the real HF rollout engine and the real
tokenizer: token history, masks and sampler log-probs agree with a training forward, and the
tokens of tool outputs get no gradient."""

import pytest
import torch

from env_fakes import RecordingEngine
from rlhfkit.envs.base import StepResult
from rlhfkit.envs.episodes import run_episodes
from rlhfkit.models.loading import load_model
from rlhfkit.rl.rollout import HFBackend, SamplingParams

TOOL_TEXT = "RESULT 42"


class ToolEveryTurn:
    """A tool message after each of the first two turns; done after the third."""
    max_turns = 3

    def reset(self, row):
        self.turn = 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, messages, response):
        self.turn += 1
        if self.turn == 3:
            return StepResult(None, 1.0, True, {"turns_seen": 1})
        return StepResult([{"role": "tool", "content": TOOL_TEXT}], 0.0, False, {"turns_seen": 1})


@pytest.fixture(scope="module")
def run(tiny_dir):
    model, tok = load_model(tiny_dir)
    model.eval()
    eng = RecordingEngine(HFBackend(model, tok))
    rows = [{"prompt": "Compute 347 * 29."}, {"prompt": "Hello"}]
    eps = run_episodes(eng, tok, ToolEveryTurn(), rows, SamplingParams(max_new_tokens=6, temperature=1.0, n=2),
                       generator=torch.Generator().manual_seed(0))
    return model, tok, eng, eps


def expected(tok, eng, j):
    """Episode j's completion, span by span, from the engine's recorded samples and the
    template's text between turns written out by hand: [(ids, is_policy)]."""
    spans = []
    for t, call in enumerate(eng.calls):
        ro = call["rollout"]
        spans.append((ro.completion_ids[j], True))
        if t < 2:
            ended = ro.finished[j] and ro.completion_ids[j][-1] == tok.eos_token_id
            text = ("\n" if ended else "<|im_end|>\n") + f"<|im_start|>tool\n{TOOL_TEXT}<|im_end|>\n<|im_start|>assistant\n"
            spans.append((tok(text, add_special_tokens=False)["input_ids"], False))
    return spans


def test_history_masks_and_logps(run):
    model, tok, eng, eps = run
    assert len(eps) == 4 and [len(c["prompts"]) for c in eng.calls] == [4, 4, 4]
    for j, ep in enumerate(eps):
        spans = expected(tok, eng, j)
        assert ep.completion_ids == [i for s, _ in spans for i in s]
        assert ep.loss_mask == [int(p) for s, p in spans for _ in s]
        want_lp = [lp for t, c in enumerate(eng.calls) for lp in c["rollout"].logprobs[j]]
        assert [lp for lp, m in zip(ep.sampler_logps, ep.loss_mask) if m] == pytest.approx(want_lp)
        assert all(lp == 0.0 for lp, m in zip(ep.sampler_logps, ep.loss_mask) if not m)
        assert len(ep.completion_ids) == len(ep.loss_mask) == len(ep.sampler_logps)
        assert ep.turns == 3 and ep.reward == 1.0 and ep.info == {"turns_seen": 3}
        assert ep.finished == eng.calls[2]["rollout"].finished[j]
        # each turn's prompt was the token history so far
        done = ep.prompt_ids + [i for s, _ in spans[:2] for i in s]
        assert eng.calls[1]["prompts"][j] == done
        assert eng.calls[2]["prompts"][j] == done + [i for s, _ in spans[2:4] for i in s]
    assert eps[0].prompt_ids == eps[1].prompt_ids != eps[2].prompt_ids


def _token_logps(model, ep):
    seq = torch.tensor([ep.prompt_ids + ep.completion_ids])
    logits = model(input_ids=seq).logits
    if logits.requires_grad:
        logits.retain_grad()
    logp = torch.log_softmax(logits[0, :-1].float(), -1).gather(1, seq[0, 1:, None]).squeeze(1)
    return logits, logp[len(ep.prompt_ids) - 1:]  # log-prob of each completion token


def test_tool_tokens_get_no_gradient(run):
    model, tok, eng, eps = run
    for j in (0, 3):
        ep = eps[j]
        spans = expected(tok, eng, j)
        env_pos, pos = [], 0
        for s, policy in spans:
            if not policy:
                env_pos += range(pos, pos + len(s))
            pos += len(s)
        policy_pos = [p for p in range(pos) if p not in set(env_pos)]
        P = len(ep.prompt_ids)

        logits, lp = _token_logps(model, ep)
        # the sampler's log-probs are the model's at exactly the masked-in positions
        assert lp[policy_pos].tolist() == pytest.approx([ep.sampler_logps[p] for p in policy_pos], abs=1e-4)
        loss = (lp * torch.tensor(ep.loss_mask, dtype=lp.dtype)).sum()
        loss.backward()
        g = logits.grad[0, P - 1:-1]  # row p predicts completion token p
        assert torch.count_nonzero(g[env_pos]) == 0          # tool/template targets: no gradient at all
        assert all(g[p].abs().sum() > 0 for p in policy_pos)  # every sampled token has one
        model.zero_grad(set_to_none=True)

        # the check can fail: with the tool tokens masked in, their rows get gradient
        logits, lp = _token_logps(model, ep)
        lp.sum().backward()
        assert all(logits.grad[0, P - 1 + p].abs().sum() > 0 for p in env_pos)
        model.zero_grad(set_to_none=True)


def test_changing_tool_token_targets_leaves_the_loss_unchanged(run):
    """Replacing the log-prob of every environment token by anything leaves the masked loss as it was."""
    model, tok, eng, eps = run
    ep = eps[1]
    with torch.no_grad():
        _, lp = _token_logps(model, ep)
    mask = torch.tensor(ep.loss_mask, dtype=lp.dtype)
    env = mask == 0
    assert int(env.sum()) == sum(len(s) for s, p in expected(tok, eng, 1) if not p) > 0
    other = lp.clone()
    other[env] = torch.randn(int(env.sum())) * 10
    assert (other * mask).sum().item() == pytest.approx((lp * mask).sum().item(), abs=1e-6)

"""A scripted stand-in for the rollout engine: fixed responses, known ids and log-probs."""

from __future__ import annotations

from rlhfkit.rl.rollout import Rollout


def fake_logps(n: int) -> list[float]:
    """Distinct, recognisable log-probs of a turn's tokens: -0.01, -0.02, ..."""
    return [-(j + 1) / 100 for j in range(n)]


class ScriptedEngine:
    """``generate`` answers each prompt with ``script(prompt_text, call_index, row)``: a text
    (the turn ends with EOS) or ``(text, finished)`` (``finished=False``: no EOS, as if cut at
    ``max_new_tokens``). The sampled ids are the tokenizer's encoding of the text (plus EOS);
    the ids are cut at ``params.max_new_tokens``. Every call is recorded in ``calls``."""

    def __init__(self, tok, script):
        self.tok, self.script, self.calls = tok, script, []

    def generate(self, prompt_ids, params, generator=None, row_offset=0):
        self.calls.append({"prompts": [list(p) for p in prompt_ids], "params": params, "row_offset": row_offset})
        comps, logps, fins, texts = [], [], [], []
        for i, p in enumerate(prompt_ids):
            for _ in range(max(1, params.n)):
                out = self.script(self.tok.decode(p, skip_special_tokens=False), len(self.calls) - 1, i)
                text, fin = out if isinstance(out, tuple) else (out, True)
                ids = self.tok(text, add_special_tokens=False)["input_ids"] + ([self.tok.eos_token_id] if fin else [])
                if len(ids) > params.max_new_tokens:
                    ids, fin = ids[:params.max_new_tokens], False
                comps.append(ids)
                logps.append(fake_logps(len(ids)))
                fins.append(fin)
                texts.append(self.tok.decode(ids, skip_special_tokens=True))
        return Rollout([list(p) for p in prompt_ids], comps, logps, fins, texts, max(1, params.n))


class RecordingEngine:
    """Wraps a real engine and records each call's prompts and rollout."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompt_ids, params, generator=None, row_offset=0):
        out = self.engine.generate(prompt_ids, params, generator=generator, row_offset=row_offset)
        self.calls.append({"prompts": [list(p) for p in prompt_ids], "params": params, "rollout": out})
        return out

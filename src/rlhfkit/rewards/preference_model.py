"""A general preference model P(A ≻ B | x) trained by ``rlhfkit pm``, usable as a judge.

Presentation. One sequence shows the prompt and both responses:

    prompt ids | A ids | separator | B ids

The prompt and each response are rendered exactly as a reward model renders them (the chat
template for conversational prompts: A and B each end with the end-of-turn token), and the
separator is what the template writes to open the next assistant turn (``\\n<|im_start|>assistant\\n``
for ChatML); with plain-string prompts the separator is empty and the EOS closing A marks the
boundary. Text from the data that spells a special token stays text (the
:class:`~rlhfkit.data.tokenize.Renderer` escapes it), so a response can never forge the separator
or the end of a turn: the only control tokens are the ones inserted here.

The model's scalar head reads the last token of the presentation, s(x, A, B); both orders are
scored (sharing the prompt in one packed batch) and P(A ≻ B) = σ((s(x, A, B) − s(x, B, A)) / 2)
(docs/algorithms.md#preference-model).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import ModelConfig
from ..data.collate import collate, sequence_index
from ..data.tokenize import Example, Renderer
from ..errors import DataError, ModelError
from ..losses.nash import preference_logit
from ..models.forward import sequence_scores
from ..models.loading import load_scalar_model

MODEL_TYPE = "preference"
"""``rlhfkit_model_type`` written into the config of a saved preference model."""


def separator_ids(renderer: Renderer, templated: bool) -> list[int]:
    """Token ids between response A (which ends with its end-of-turn token) and response B: the
    chat template's opening of the next assistant turn, or nothing for plain prompts."""
    if not templated:
        return []
    tok = renderer.tok
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    closed = renderer._end_at_eos(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
    opened = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if not opened.startswith(closed) or len(opened) == len(closed):
        raise DataError("the chat template does not open a new assistant turn after a finished one, so two "
                        "responses cannot be presented in one sequence; use plain-string prompts "
                        "(data.chat_template never)")
    return tok(opened[len(closed):], add_special_tokens=False)["input_ids"]


def fit_pair(a: list[int], b: list[int], room: int) -> tuple[list[int], list[int], bool]:
    """Cut responses a and b so that together they hold at most ``room`` tokens: the longer one is
    cut first, neither below half of ``room`` unless it is shorter; a cut response keeps its last
    token (the end-of-turn token), so the boundary stays marked. Returns (a, b, cut)."""
    if len(a) + len(b) <= room:
        return a, b, False
    half = max(1, room // 2)
    na = len(a) if len(a) <= half else max(1, room - min(len(b), half))
    nb = max(1, room - min(len(a), na))
    cut = (lambda x, n: x if len(x) <= n else x[:n - 1] + x[-1:])
    return cut(a, na), cut(b, nb), True


def presentations(prompt: list[int], responses: list[list[int]], sep: list[int], max_length: int,
                  row: int = 0) -> tuple[Example, list[tuple[int, int]], int]:
    """One :class:`Example` whose completions are every ordered pair (i, j), i ≠ j, of
    ``responses`` presented as ``A | sep | B`` behind the shared prompt; returns it, the pairs in
    completion order and the number of presentations that had to be cut to fit ``max_length``."""
    room = max_length - len(prompt) - len(sep)
    if room < 2:
        raise DataError(f"prompt of {len(prompt)} tokens leaves no room for two responses in max_length "
                        f"{max_length}", row=row)
    pairs, comps, cuts = [], [], 0
    for i, a in enumerate(responses):
        for j, b in enumerate(responses):
            if i != j:
                fa, fb, cut = fit_pair(a, b, room)
                comps.append(fa + sep + fb)
                pairs.append((i, j))
                cuts += cut
    return Example(row, list(prompt), comps), pairs, cuts


def logit_tables(model, examples: list[Example], pairs: list[list[tuple[int, int]]], sizes: list[int],
                 pad_id: int, pack_length: int = 0) -> list[Tensor]:
    """Antisymmetric logit tables d[i, j] = (s(i, j) − s(j, i))/2, one (K, K) per example (its
    presentations from :func:`presentations`), computed in one packed forward."""
    b = collate(examples, pad_id=pad_id, pack_length=pack_length).to(next(model.parameters()).device)
    s = sequence_scores(model, b)                                         # (S,)
    idx = sequence_index(b, max(len(ex.completions) for ex in examples))   # (E, C)
    out = []
    for e, (prs, K) in enumerate(zip(pairs, sizes)):
        raw = torch.zeros(K, K, dtype=s.dtype, device=s.device)
        ii = torch.tensor([p[0] for p in prs], device=s.device)
        jj = torch.tensor([p[1] for p in prs], device=s.device)
        raw = raw.index_put((ii, jj), s[idx[e, :len(prs)]])
        out.append(preference_logit(raw, raw.transpose(0, 1)))
    return out


class PreferenceModel:
    """``load_preference_model(path).prob(prompt, a, b)`` -> P(a ≻ b | prompt).

    Prompts and responses are strings or message lists, rendered as in training; ``matrix``
    returns the whole (K, K) table of a prompt's K responses (both orders of every pair)."""

    def __init__(self, model, tokenizer, chat_template: str = "auto", max_length: int | None = None):
        self.model, self.tok = model.eval(), tokenizer
        cfg = getattr(model, "config", None)
        self.renderer = Renderer(tokenizer, getattr(cfg, "rlhfkit_chat_template", chat_template))
        self.max_length = int(max_length or getattr(cfg, "rlhfkit_pm_max_length", 1024))
        """Longest presentation (prompt + both responses + separator) in tokens; the training
        ``data.max_length`` unless given."""

    @classmethod
    def load(cls, path: str, **kw) -> "PreferenceModel":
        model, tok = load_scalar_model(ModelConfig(name=path))
        kind = getattr(model.config, "rlhfkit_model_type", None)
        if kind != MODEL_TYPE:
            raise ModelError(f"{path} is not a preference model trained by `rlhfkit pm` (its config has "
                             f"rlhfkit_model_type={kind!r}); a reward model scores one response, use "
                             "rlhfkit.rewards.model.RewardModel for it")
        return cls(model, tok, **kw)

    def _render(self, prompt, responses: list, row: int) -> tuple[list[int], list[list[int]], list[int]]:
        r = self.renderer
        p = r.protect(prompt, row, "prompt")
        ptext = r.prompt_text(p)
        prompt_ids = r.encode(ptext, True)
        ids = [r.encode(r.completion_text(p, ptext, r.protect(y, row, "response"), row), False) for y in responses]
        for k, y in enumerate(ids):
            if not y:
                raise DataError(f"response {k} is empty after tokenization", row=row)
        sep = separator_ids(r, r.use_template(prompt))
        keep = max(1, self.max_length // 2)  # a long prompt keeps its end, half the budget at most
        if len(prompt_ids) + len(sep) + 2 > self.max_length or len(prompt_ids) > keep:
            prompt_ids = prompt_ids[-keep:]
        return prompt_ids, ids, sep

    @torch.no_grad()
    def logits(self, prompts: list, groups: list[list], batch_size: int = 4) -> list[Tensor]:
        """Logit tables d (K, K) of each prompt's responses; P = σ(d)."""
        if len(prompts) != len(groups):
            raise ValueError(f"{len(prompts)} prompts but {len(groups)} response groups")
        out: list[Tensor] = []
        for i in range(0, len(prompts), batch_size):
            exs, prs, sizes = [], [], []
            for j, (p, ys) in enumerate(zip(prompts[i:i + batch_size], groups[i:i + batch_size])):
                if len(ys) < 2:
                    raise ValueError("a preference needs at least two responses")
                pid, ids, sep = self._render(p, list(ys), i + j)
                ex, pr, _ = presentations(pid, ids, sep, self.max_length, i + j)
                exs.append(ex)
                prs.append(pr)
                sizes.append(len(ys))
            out += [d.float().cpu() for d in logit_tables(self.model, exs, prs, sizes, self.tok.pad_token_id)]
        return out

    def matrix(self, prompts: list, groups: list[list], batch_size: int = 4) -> list[Tensor]:
        """P[i, j] = P(y_i ≻ y_j | x) for each prompt's responses (a list of (K, K) tensors)."""
        return [torch.sigmoid(d) for d in self.logits(prompts, groups, batch_size)]

    def probs(self, prompts: list, a: list, b: list, batch_size: int = 8) -> list[float]:
        """P(a_n ≻ b_n | prompt_n) for each row."""
        if not (len(prompts) == len(a) == len(b)):
            raise ValueError("probs needs as many prompts as responses a and b")
        return [float(m[0, 1]) for m in self.matrix(prompts, [[x, y] for x, y in zip(a, b)], batch_size)]

    def prob(self, prompt, a, b) -> float:
        """P(a ≻ b | prompt)."""
        return self.probs([prompt], [a], [b])[0]

    def to(self, device) -> "PreferenceModel":
        self.model.to(device)
        return self


def load_preference_model(path: str, **kw) -> PreferenceModel:
    """A preference model saved by ``rlhfkit pm`` (its ``final/`` or ``best/`` directory)."""
    return PreferenceModel.load(path, **kw)

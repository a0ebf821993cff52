"""Turn normalised records into token ids: a prompt plus one or more completions.

Every training example has the same shape, whatever the recipe:

* ``prompt``: token ids the model conditions on (no loss);
* ``completions``: one (SFT), two (chosen, rejected) or K (ranked list) token-id lists;
* ``masks``: per completion, which tokens carry loss (all of them, except in multi-turn
  SFT where user turns after the first assistant turn are context).

Rendering. Conversational records go through the tokenizer's chat template: the prompt is
rendered with ``add_generation_prompt=True`` and each completion is the text the template
adds after it, ending at the end-of-turn token (trailing template whitespace after it is
not trained, so a generated answer that stops at EOS looks exactly like the training data).
Plain strings are used as they are, with EOS appended to the completion. Prompt and
completion are tokenized separately and concatenated, the way they meet at generation time.

Text in the data that spells a special token (``<|im_end|>``, ``<|im_start|>assistant``)
stays text: before rendering, every such string in the row's content is replaced by a
private-use placeholder character, and at tokenization each placeholder becomes the ids of its
string tokenized as plain text. Only the tokens the chat template (or the EOS appended to a
plain completion) inserts are control tokens, so a row cannot forge a chat turn.

Truncation policy (``DataConfig``): a prompt longer than ``max_prompt_length`` is dropped
(``prompt_truncation: drop``, default) or cut from the left keeping its last tokens
(``left``); a completion that does not fit in ``max_length`` is cut at the end
(``completion_truncation: right``, default) or its row dropped (``drop``). Every drop and
cut is counted and reported, never silent.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

from ..config import DataConfig
from ..errors import DataError


@dataclass
class Example:
    row: int
    prompt: list[int]
    completions: list[list[int]]
    masks: list[list[int]] | None = None
    scores: list[float] | None = None
    label: bool | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + sum(len(c) for c in self.completions)


_PLACEHOLDER = 0x10FE00            # first of the private-use placeholder characters
_MAX_SPECIALS = 0x1FD              # placeholders available (up to U+10FFFD)
_PLACEHOLDER_RE = re.compile("([\U0010FE00-\U0010FFFD])")


class Renderer:
    """Renders records to token ids with one tokenizer and one template policy."""

    def __init__(self, tokenizer, chat_template: str = "auto", source: str = "data"):
        if chat_template not in ("auto", "always", "never"):
            raise DataError(f"chat_template must be auto|always|never, got '{chat_template}'")
        self.tok, self.policy, self.source = tokenizer, chat_template, source
        self.eos = tokenizer.eos_token or ""
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(t, "special", False):
                specials.add(t.content)
        self.specials = sorted((t for t in specials if t), key=len, reverse=True)[:_MAX_SPECIALS]
        self._special_re = re.compile("|".join(map(re.escape, self.specials))) if self.specials else None
        self._ids_of: dict[str, list[int]] = {}

    # ---------------------------------------------------------------- text rendering
    def _template(self, messages: list[dict], gen: bool, row: int) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise DataError("the data is conversational but the tokenizer has no chat template; "
                            "use a model with one, or give plain-string prompts",
                            source=self.source, row=row)
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    def _as_messages(self, x):
        return x if isinstance(x, list) else [{"role": "user", "content": x}]

    def use_template(self, prompt) -> bool:
        return self.policy == "always" or (self.policy == "auto" and isinstance(prompt, list))

    def _end_at_eos(self, text: str) -> str:
        """Drop template whitespace after the last end-of-turn token."""
        if self.eos and text.rstrip().endswith(self.eos):
            return text.rstrip()
        return text

    def prompt_text(self, prompt) -> str:
        if self.use_template(prompt):
            return self._template(self._as_messages(prompt), True, -1)
        return prompt

    def completion_text(self, prompt, prompt_text: str, completion, row: int) -> str:
        if not self.use_template(prompt):
            if isinstance(completion, list):
                completion = "".join(m["content"] for m in completion)
            return completion + self.eos
        comp = completion if isinstance(completion, list) else [
            {"role": "assistant", "content": completion}]
        full = self._template(self._as_messages(prompt) + comp, False, row)
        if not full.startswith(prompt_text):
            raise DataError("the chat template renders the prompt differently once a completion "
                            "follows it, so the completion cannot be located; use a template "
                            "that keeps earlier turns unchanged", source=self.source, row=row)
        return self._end_at_eos(full[len(prompt_text):])

    # ---------------------------------------------------------------- untrusted text
    def protect(self, x, row: int = -1, field: str = "text"):
        """Replace special-token strings in data text (a string or a message list) by
        placeholders that :meth:`encode` turns into the plain-text ids of those strings."""
        if isinstance(x, list):
            return [dict(m, content=self.protect(m.get("content", ""), row, field))
                    if isinstance(m, dict) else self.protect(m, row, field) for m in x]
        if not isinstance(x, str):
            return x
        if _PLACEHOLDER_RE.search(x):
            raise DataError("text holds a private-use character (U+10FE00-U+10FFFD) that "
                            "rlhfkit reserves for escaping special tokens", source=self.source,
                            row=row, field=field)
        if self._special_re is None:
            return x
        return self._special_re.sub(lambda m: chr(_PLACEHOLDER + self.specials.index(m.group(0))), x)

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids of a generation prompt (templated with the generation prompt appended where
        the policy says so); special-token strings in its text stay text."""
        return self.encode(self.prompt_text(self.protect(prompt, field="prompt")), True)

    def _plain_ids(self, special: str) -> list[int]:
        if special not in self._ids_of:
            try:
                ids = self.tok(special, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            except TypeError:  # a tokenizer without the option: encode it character by character
                ids = [i for ch in special for i in self.tok(ch, add_special_tokens=False)["input_ids"]]
            self._ids_of[special] = ids
        return self._ids_of[special]

    def encode(self, text: str, first: bool) -> list[int]:
        if not text:
            return []
        if not _PLACEHOLDER_RE.search(text):
            return self.tok(text, add_special_tokens=first)["input_ids"]
        ids: list[int] = []
        for j, piece in enumerate(_PLACEHOLDER_RE.split(text)):
            if j % 2:  # a placeholder: the special token's string as plain text
                ids += self._plain_ids(self.specials[ord(piece) - _PLACEHOLDER])
            elif piece:
                ids += self.tok(piece, add_special_tokens=first and not ids)["input_ids"]
        return ids

    # ---------------------------------------------------------------- records -> examples
    def multiturn(self, messages: list[dict], row: int) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, rest ids, rest mask): assistant turns trainable, the rest context."""
        segments: list[tuple[str, int]] = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._template(messages[:i], True, row) if i else ""
            upto = self._end_at_eos(self._template(messages[:i + 1], False, row))
            if not before.startswith(done) or not upto.startswith(before):
                raise DataError("the chat template rewrites earlier turns; cannot mask turns",
                                source=self.source, row=row)
            segments += [(before[len(done):], 0), (upto[len(before):], 1)]
            done = upto
        ids, mask = [], []
        for j, (text, trainable) in enumerate(segments):
            piece = self.encode(text, first=(j == 0))
            ids += piece
            mask += [trainable] * len(piece)
        first = mask.index(1) if 1 in mask else len(mask)
        return ids[:first], ids[first:], mask[first:]

    def example(self, rec: dict) -> Example:
        kind, row = rec["kind"], rec["row"]
        original = rec
        rec = {k: self.protect(v, row, k) if k in _TEXT_FIELDS else v for k, v in rec.items()}
        if kind == "language_modeling":
            if "messages" in rec:
                p, c, m = self.multiturn(rec["messages"], row)
                return Example(row, p, [c], masks=[m])
            ids = self.encode(rec["text"], True) + self.encode(self.eos, False)
            return Example(row, ids[:1], [ids[1:]])  # first token has nothing to predict it
        ptext = self.prompt_text(rec["prompt"])
        prompt = self.encode(ptext, True)
        extra = {}
        if kind == "preference":
            names = ["chosen", "rejected"]
            comps = [rec["chosen"], rec["rejected"]]
        elif kind == "listwise":
            comps = rec["completions"]
        elif kind in ("prompt_completion", "unpaired"):
            comps = [rec["completion"]]
        else:  # prompt_only
            comps = []
            extra = {k: v for k, v in original.items() if k not in ("kind", "row", "prompt")}
            extra["prompt"] = original["prompt"]
        ids = [self.encode(self.completion_text(rec["prompt"], ptext, c, row), False) for c in comps]
        for k, c in enumerate(ids):
            if not c:
                name = names[k] if kind == "preference" else "completion"
                raise DataError("completion is empty after tokenization", source=self.source,
                                row=row, field=name)
        if rec.get("reward") is not None:
            extra["reward"] = rec["reward"]
        if rec.get("margin") is not None:
            extra["margin"] = rec["margin"]
        return Example(row, prompt, ids, scores=rec.get("scores"), label=rec.get("label"),
                       extra=extra)


_TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected", "completions", "messages", "text")


def truncate(ex: Example, cfg: DataConfig, stats: collections.Counter) -> Example | None:
    """Apply the truncation policy; return None (and count why) when the row is dropped."""
    max_prompt = min(cfg.max_prompt_length or cfg.max_length - 1, cfg.max_length - 1)
    if len(ex.prompt) > max_prompt:
        if cfg.prompt_truncation == "drop":
            stats["dropped: prompt longer than max_prompt_length"] += 1
            return None
        if cfg.prompt_truncation != "left":
            raise DataError(f"prompt_truncation must be 'drop' or 'left', got "
                            f"'{cfg.prompt_truncation}'")
        ex.prompt = ex.prompt[-max_prompt:]
        stats["prompts cut from the left"] += 1
    room = cfg.max_length - len(ex.prompt)
    if any(len(c) > room for c in ex.completions):
        if cfg.completion_truncation == "drop":
            stats["dropped: completion does not fit in max_length"] += 1
            return None
        if cfg.completion_truncation != "right":
            raise DataError(f"completion_truncation must be 'right' or 'drop', got "
                            f"'{cfg.completion_truncation}'")
        if room <= 0:
            stats["dropped: no room left for the completion"] += 1
            return None
        ex.completions = [c[:room] for c in ex.completions]
        if ex.masks is not None:
            ex.masks = [m[:room] for m in ex.masks]
        if len(ex.completions) > 1 and len({tuple(c) for c in ex.completions}) < len(ex.completions):
            stats["dropped: completions identical after truncation"] += 1
            return None
        stats["completions cut at max_length"] += 1
    if ex.masks is not None and not any(any(m) for m in ex.masks):
        stats["dropped: no trainable token left after truncation"] += 1
        return None
    return ex


def tokenize_records(records: list[dict], tokenizer, cfg: DataConfig, *, source: str = "data",
                     log=None, truncation: bool = True) -> list[Example]:
    """Render, tokenize and truncate records; log the counts of dropped/cut rows."""
    cfg.validate()  # a hand-built DataConfig is checked like a parsed one, before any row
    r = Renderer(tokenizer, cfg.chat_template, source)
    stats: collections.Counter = collections.Counter()
    out = []
    for rec in records:
        try:
            ex = r.example(rec)
        except DataError:
            if not cfg.skip_invalid:
                raise
            stats["dropped: invalid after rendering"] += 1
            continue
        ex = truncate(ex, cfg, stats) if truncation else ex
        if ex is not None:
            out.append(ex)
    if stats and log is not None:
        log(f"{source}: " + ", ".join(f"{v} {k}" for k, v in stats.items()) + f" (of {len(records)} rows)")
    if not out:
        raise DataError(f"no rows left after tokenization and truncation ({dict(stats)}); raise "
                        "data.max_length / data.max_prompt_length or use "
                        "data.prompt_truncation=left", source=source)
    return out

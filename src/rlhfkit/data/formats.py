"""Detect, validate and normalise the row formats TRL users already have.

Formats (each *standard* = plain strings, or *conversational* = lists of
``{"role", "content"}`` messages):

=================  =========================================================
kind               fields
=================  =========================================================
language_modeling  ``text`` | ``messages``
prompt_completion  ``prompt`` + ``completion``
preference         [``prompt``] + ``chosen`` + ``rejected`` (prompt may be implicit),
                   optionally ``margin`` (a finite number, read by the reward model)
unpaired           ``prompt`` + ``completion`` + ``label`` (bool: thumbs up/down),
                   optionally ``reward`` (a real-valued score, read by DRO)
listwise           ``prompt`` + ``completions`` + ``ranks`` (1 = best) | ``scores``
prompt_only        ``prompt`` (+ any extra fields, e.g. ``answer``)
=================  =========================================================

An implicit prompt is the shared prefix of ``chosen`` and ``rejected``: the common leading
messages of two conversations, or, for Anthropic HH-RLHF style strings
(``"\\n\\nHuman: ... \\n\\nAssistant: ..."``), the dialogue up to the last
``\\n\\nAssistant:``, parsed into messages so that it is rendered through the model's chat
template as a multi-turn conversation.

:func:`normalize_rows` turns raw rows into records with an explicit prompt: every record is
a dict with ``kind``, ``row`` (source row number) and the fields above; ranks become
``scores`` (higher is better).
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any

from ..errors import DataError
from .loading import RawRows

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("language_modeling", "prompt_completion", "preference", "unpaired", "listwise",
         "prompt_only")

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def detect_kind(row: dict, source: str = "data", row_number: int = 0) -> str:
    """Name the format of a row from its keys."""
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "completions" in keys and ({"ranks", "scores"} & keys):
        return "listwise"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "messages" in keys or "text" in keys:
        return "language_modeling"
    if "prompt" in keys:
        return "prompt_only"
    raise DataError(
        f"cannot tell the data format from the fields {sorted(keys)}; expected one of: "
        "text | messages | prompt+completion | [prompt]+chosen+rejected | "
        "prompt+completion+label | prompt+completions+ranks/scores | prompt", source=source,
        row=row_number)


def is_hh_dialogue(text: Any) -> bool:
    return isinstance(text, str) and text.startswith("\n\nHuman:") and "\n\nAssistant:" in text


def parse_hh_dialogue(text: str) -> list[dict]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> user/assistant messages."""
    parts = _HH_TURN.split(text)
    # parts = ["", "Human", " hi", "Assistant", " hello", ...]
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        messages.append({"role": role, "content": content.strip()})
    return messages


class _Row:
    """Validation helpers bound to one source row (so errors name file, row and field)."""

    def __init__(self, source: str, row: int, data: dict):
        self.source, self.row, self.data = source, row, data

    def fail(self, msg: str, field: str | None = None):
        raise DataError(msg, source=self.source, row=self.row, field=field)

    def get(self, field: str) -> Any:
        if field not in self.data or self.data[field] is None:
            self.fail("missing required field", field)
        return self.data[field]

    def messages(self, value: Any, field: str, *, allow_empty_last: bool = False) -> list[dict]:
        if not isinstance(value, list) or not value:
            self.fail(f"expected a non-empty list of messages, got {type(value).__name__}", field)
        out = []
        for j, m in enumerate(value):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                self.fail(f"message {j} must be an object with 'role' and 'content'", field)
            if m["role"] not in ROLES:
                self.fail(f"message {j} has unknown role '{m['role']}' (expected {ROLES})", field)
            if not isinstance(m["content"], str):
                self.fail(f"message {j} content must be a string, got "
                          f"{type(m['content']).__name__}", field)
            out.append({"role": m["role"], "content": m["content"]})
        return out

    def text_or_messages(self, field: str, value: Any = None) -> str | list[dict]:
        value = self.get(field) if value is None else value
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return self.messages(value, field)
        self.fail(f"expected a string or a list of messages, got {type(value).__name__}", field)

    def completion(self, field: str, value: Any = None) -> str | list[dict]:
        """A completion: non-empty text, or messages whose content is not all blank."""
        c = self.text_or_messages(field, value)
        blank = (not c.strip()) if isinstance(c, str) else all(not m["content"].strip() for m in c)
        if blank:
            self.fail("empty completion", field)
        return c


def _match_styles(r: _Row, prompt, completion, field: str):
    """A conversational prompt with a plain-string completion gets an assistant message."""
    if isinstance(prompt, list) and isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    if isinstance(prompt, str) and isinstance(completion, list):
        r.fail("prompt is a string but the completion is a list of messages; use the same "
               "style (both strings or both conversational)", field)
    return completion


def _split_implicit(r: _Row, chosen, rejected):
    """Shared prefix of chosen/rejected -> (prompt, chosen_completion, rejected_completion)."""
    if is_hh_dialogue(chosen) and is_hh_dialogue(rejected):
        chosen, rejected = parse_hh_dialogue(chosen), parse_hh_dialogue(rejected)
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        # The completion starts at an assistant turn: back off over shared user turns.
        while k > 0 and any(k < len(c) and c[k]["role"] != "assistant" for c in (chosen, rejected)):
            k -= 1
        if k == 0:
            r.fail("chosen and rejected share no prompt; give an explicit 'prompt' field", "prompt")
        return chosen[:k], chosen[k:], rejected[k:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        # Cut at a whitespace boundary so no word is split between prompt and completion.
        while k > 0 and not chosen[k - 1].isspace():
            k -= 1
        if k == 0:
            r.fail("chosen and rejected share no prompt; give an explicit 'prompt' field", "prompt")
        return chosen[:k], chosen[k:], rejected[k:]
    r.fail("chosen and rejected must both be strings or both be message lists", "rejected")


def _score_list(r: _Row, n: int) -> list[float]:
    if "scores" in r.data and r.data["scores"] is not None:
        field, vals = "scores", r.data["scores"]
    else:
        field, vals = "ranks", r.get("ranks")
    if not isinstance(vals, list) or len(vals) != n:
        r.fail(f"expected a list of {n} numbers (one per completion)", field)
    out = []
    for v in vals:
        try:
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))
        except OverflowError:
            ok = False
        if not ok:
            r.fail(f"expected finite numbers, got {str(v)[:40]}", field)
        out.append(float(v))
    if field == "ranks":
        out = [-v for v in out]  # rank 1 is best -> highest score
    if len(set(out)) == 1:
        r.fail("all completions are tied; a ranking needs at least two different values", field)
    return out


def _label(r: _Row) -> bool:
    v = r.get("label")
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    r.fail(f"expected a boolean (true = desirable), got {v!r}", "label")


def _reward(r: _Row, field: str = "reward") -> float:
    v = r.get(field)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        r.fail(f"expected a finite number, got {v!r}", field)
    return float(v)


def _check_unicode(r: _Row, value: Any, field: str) -> None:
    """A row error for text that is not valid Unicode (JSON can spell a lone surrogate such as
    ``"\\ud800"``, which no tokenizer can encode)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            r.fail("text is not valid Unicode (it holds a lone surrogate such as \\ud800)", field)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_unicode(r, v, field)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_unicode(r, v, f"{field}[{i}]")


def _squash(x: Any) -> Any:
    """Text with all whitespace removed (message lists: per role and content), for comparing
    two completions that must differ in more than whitespace."""
    if isinstance(x, str):
        return "".join(x.split())
    return [(m.get("role"), "".join(str(m.get("content", "")).split())) for m in x]


def normalize_row(kind: str, source: str, row: int, data: dict) -> dict:
    """Validate one raw row of ``kind`` and return its normalised record."""
    r = _Row(source, row, data)
    if not isinstance(data, dict):
        r.fail(f"row is a {type(data).__name__}, expected an object")
    for key, value in data.items():
        _check_unicode(r, value, str(key))
    rec: dict[str, Any] = {"kind": kind, "row": row}
    if kind == "language_modeling":
        if "messages" in data:
            msgs = r.messages(r.get("messages"), "messages")
            if msgs and msgs[0]["role"] == "assistant":
                r.fail("the first turn is the assistant's, so it has no prompt to answer; start "
                       "the conversation with a system or user turn", "messages")
            if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
                r.fail("conversation has no non-empty assistant message to train on", "messages")
            rec["messages"] = msgs
        else:
            text = r.get("text")
            if not isinstance(text, str) or not text.strip():
                r.fail("expected a non-empty string", "text")
            rec["text"] = text
    elif kind in ("prompt_completion", "unpaired"):
        rec["prompt"] = r.text_or_messages("prompt")
        rec["completion"] = _match_styles(r, rec["prompt"], r.completion("completion"), "completion")
        if kind == "unpaired":  # a row with a reward may leave the label out (DRO reads either)
            no_label = data.get("label") is None and data.get("reward") is not None
            rec["label"] = None if no_label else _label(r)
        if data.get("reward") is not None:
            # a real-valued score (DRO); strict on thumbs rows, ignored when unusable on plain
            # prompt/completion rows, whose other recipes never read it
            if kind == "unpaired":
                rec["reward"] = _reward(r)
            elif isinstance(data["reward"], (int, float)) and not isinstance(data["reward"], bool) \
                    and math.isfinite(data["reward"]):
                rec["reward"] = float(data["reward"])
    elif kind == "preference":
        chosen, rejected = r.completion("chosen"), r.completion("rejected")
        if _squash(chosen) == _squash(rejected):
            r.fail("chosen and rejected are identical (up to whitespace); the pair carries no "
                   "preference", "rejected")
        if data.get("prompt") is not None:
            prompt = r.text_or_messages("prompt")
            chosen = _match_styles(r, prompt, chosen, "chosen")
            rejected = _match_styles(r, prompt, rejected, "rejected")
        else:
            prompt, chosen, rejected = _split_implicit(r, chosen, rejected)
            r.completion("chosen", chosen)
            r.completion("rejected", rejected)
        rec.update(prompt=prompt, chosen=chosen, rejected=rejected)
        if data.get("margin") is not None:  # the pair's required reward gap (reward model)
            rec["margin"] = _reward(r, "margin")
    elif kind == "listwise":
        prompt = r.text_or_messages("prompt")
        comps = r.get("completions")
        if not isinstance(comps, list) or len(comps) < 2:
            r.fail("expected a list of at least 2 completions", "completions")
        comps = [_match_styles(r, prompt, r.completion(f"completions[{j}]", c), "completions")
                 for j, c in enumerate(comps)]
        rec.update(prompt=prompt, completions=comps, scores=_score_list(r, len(comps)))
    elif kind == "prompt_only":
        rec["prompt"] = r.text_or_messages("prompt")
        rec.update({k: v for k, v in data.items() if k != "prompt"})
        rec["kind"], rec["row"] = kind, row
    else:  # pragma: no cover - guarded by callers
        raise ValueError(kind)
    return rec


def normalize_rejected(source: str, row: int, data: dict) -> dict:
    """A row's prompt and undesired response as an unpaired record with ``label`` False.

    The row holds ``rejected`` and either a ``prompt`` or (a pair with an implicit prompt, such
    as HH-RLHF) a ``chosen`` whose shared beginning with ``rejected`` is the prompt; the chosen
    response is not used otherwise (it may even equal the rejected one)."""
    r = _Row(source, row, data)
    if not isinstance(data, dict):
        r.fail(f"row is a {type(data).__name__}, expected an object")
    for key in ("prompt", "chosen", "rejected"):
        _check_unicode(r, data.get(key), key)
    rejected = r.completion("rejected")
    if data.get("prompt") is not None:
        prompt = r.text_or_messages("prompt")
        rejected = _match_styles(r, prompt, rejected, "rejected")
    elif data.get("chosen") is not None:
        prompt, _, rejected = _split_implicit(r, r.completion("chosen"), rejected)
        rejected = r.completion("rejected", rejected)
    else:
        r.fail("no prompt: give a 'prompt' field, or a 'chosen' response whose shared beginning with "
               "'rejected' is the prompt", "prompt")
    return {"kind": "unpaired", "row": row, "prompt": prompt, "completion": rejected, "label": False}


def normalize_rows(raw: RawRows, *, kind: str | None = None, expected: tuple[str, ...] = (),
                   skip_invalid: bool = False, log=None) -> list[dict]:
    """Validate every row of ``raw``; return normalised records.

    ``expected`` lists the kinds the caller can train on; a dataset of another kind is an
    error. With ``skip_invalid`` bad rows are dropped and counted (the count and the first
    reasons go to ``log``) instead of raising.
    """
    if not raw.rows:
        raise DataError("dataset is empty (no rows selected)", source=raw.source)
    kind = kind or detect_kind(raw.rows[0], raw.source, raw.index[0])
    if kind not in KINDS:
        raise DataError(f"unknown data kind '{kind}'; expected one of {KINDS}", source=raw.source)
    if expected and kind not in expected:
        raise DataError(f"this recipe needs {' or '.join(expected)} data, but the rows look like "
                        f"'{kind}' (fields {sorted(raw.rows[0])})", source=raw.source)
    records, reasons = [], collections.Counter()
    for i, data in zip(raw.index, raw.rows):
        try:
            records.append(normalize_row(kind, raw.source, i, data))
        except DataError as e:
            if not skip_invalid:
                raise
            reasons[str(e).split(": ", 1)[-1]] += 1
    if reasons and log is not None:
        top = "; ".join(f"{n}x {why}" for why, n in reasons.most_common(3))
        log(f"skipped {sum(reasons.values())} invalid rows of {len(raw)} in {raw.source} ({top})")
    if not records:
        raise DataError("no valid rows left after validation", source=raw.source)
    return records

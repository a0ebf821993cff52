"""Rule-based rewards: 1.0 when the completion passes a check, else 0.0.

* ``arithmetic``: the *last* number in the completion equals the row's ``answer`` (instruct
  models restate the operands first: "To add 37 and 18 we get 55.").
* ``gsm8k``: GSM8K-style answers. The gold answer is the number after ``####`` in the row's
  ``answer`` field (a full worked solution ending "#### 72"; "1,000" style commas allowed;
  a bare number is accepted too). The prediction is the number after the last ``####`` in
  the completion if there is one, else its last number. Compared numerically.
* ``format``: the completion matches a regex (``re.search``); by default it must end with a
  final-answer sentence such as "The answer is 42." (see ``DEFAULT_FORMAT_PATTERN``).

Numbers are compared exactly, as rationals: integers of any size must be equal (``10**9 + 1``
is not ``10**9``), and ``"72.0"`` equals ``"72"``; when either number has a fractional part
they match within ``DECIMAL_ABS_TOL`` (1e-6), so a rounded decimal answer still counts.

A completion without a usable number simply scores 0.0. A row whose *data* is unusable (no
``answer`` field, or an answer that is not a finite number) fails with a message instead.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Callable

from ..tasks.arithmetic import last_number
from .base import DEFAULT_FORMAT_PATTERN, VERIFIER_NAMES, RewardResult

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


class RowError(ValueError):
    """A row's data cannot be checked; the message says why and how to fix it."""


DECIMAL_ABS_TOL = Fraction(1, 10**6)
"""Largest difference accepted between two numbers when either has a fractional part."""


def to_number(text) -> Fraction | None:
    """``"1,000" -> Fraction(1000)``, exact; None when ``text`` is None, not a number, or not
    finite (``inf``, ``nan``)."""
    if text is None:
        return None
    try:
        d = Decimal(str(text).replace(",", "").strip().rstrip("."))
    except (InvalidOperation, ValueError):
        return None
    return Fraction(d) if d.is_finite() else None


def number_after_marker(text: str, marker: str = "####") -> str | None:
    """The first number after the last ``marker`` in ``text`` (commas removed), else None."""
    head, sep, tail = text.rpartition(marker)
    if not sep:
        return None
    m = _NUMBER.search(tail)
    return m.group(0).replace(",", "") if m else None


def same_number(a: Fraction | None, b: Fraction | None) -> bool:
    """Exact equality of integers; within ``DECIMAL_ABS_TOL`` when either has a fraction."""
    if a is None or b is None:
        return False
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return abs(a - b) <= DECIMAL_ABS_TOL


def _answer_field(extra: dict, verifier: str):
    if "answer" not in extra or extra["answer"] is None:
        raise RowError(f"the row has no 'answer' field, which the {verifier} verifier compares "
                       "against; add it to the data or rename a column to it (data.columns)")
    return extra["answer"]


def arithmetic_score(completion: str, answer) -> float:
    """1.0 if the last number of ``completion`` equals ``answer`` (a number or numeric string)."""
    gold = to_number(str(answer))
    if gold is None:
        raise RowError(f"answer {str(answer)[:40]!r} is not a finite number (the arithmetic "
                       "verifier needs the bare result, e.g. '55')")
    return 1.0 if same_number(to_number(last_number(completion)), gold) else 0.0


def gsm8k_gold(answer) -> Fraction:
    """The gold number of a GSM8K ``answer``: the number after ``####``, or a bare number."""
    text = str(answer)
    gold = to_number(number_after_marker(text))
    if gold is None and "####" not in text:
        gold = to_number(text)
    if gold is None:
        raise RowError(f"answer {text[-40:]!r} has no final '#### <number>' with a finite number "
                       "(the gsm8k verifier reads the gold answer from it)")
    return gold


def gsm8k_prediction(completion: str) -> Fraction | None:
    """The number after the last ``####`` in ``completion``, else its last number."""
    marked = number_after_marker(completion)
    return to_number(marked if marked is not None else last_number(completion))


def gsm8k_score(completion: str, answer) -> float:
    """1.0 if the predicted number of ``completion`` equals the gold number of ``answer``."""
    return 1.0 if same_number(gsm8k_prediction(completion), gsm8k_gold(answer)) else 0.0


def format_score(completion: str, pattern: str = "") -> float:
    """1.0 if ``pattern`` (default ``DEFAULT_FORMAT_PATTERN``) is found in ``completion``."""
    return 1.0 if re.search(pattern or DEFAULT_FORMAT_PATTERN, completion) else 0.0


class VerifierReward:
    """A reward source applying ``check(completion, extra) -> float`` to every row.

    ``check`` raises :class:`RowError` for rows whose data it cannot use; those rows get
    ``nan`` and an error message, the others keep their values.
    """

    def __init__(self, name: str, check: Callable[[str, dict], float]):
        self.name, self.check = name, check

    def score(self, prompts: list, completions: list[str], extras: list[dict]) -> RewardResult:
        values: list[float] = []
        errors: list[tuple[int, str]] = []
        for i, (completion, extra) in enumerate(zip(completions, extras)):
            try:
                values.append(float(self.check(completion, extra or {})))
            except RowError as e:
                values.append(float("nan"))
                errors.append((i, str(e)))
        return RewardResult(values=values, errors=errors)


def make_verifier(verifier: str, *, name: str = "", pattern: str = "") -> VerifierReward:
    """The source of verifier ``verifier`` (arithmetic | gsm8k | format)."""
    if verifier == "arithmetic":
        check = lambda c, x: arithmetic_score(c, _answer_field(x, "arithmetic"))  # noqa: E731
    elif verifier == "gsm8k":
        check = lambda c, x: gsm8k_score(c, _answer_field(x, "gsm8k"))  # noqa: E731
    elif verifier == "format":
        compiled = re.compile(pattern or DEFAULT_FORMAT_PATTERN)
        check = lambda c, x: 1.0 if compiled.search(c) else 0.0  # noqa: E731
    else:
        raise ValueError(f"unknown verifier '{verifier}'; use one of {', '.join(VERIFIER_NAMES)}")
    return VerifierReward(name or verifier, check)

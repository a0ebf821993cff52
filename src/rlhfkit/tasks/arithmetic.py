"""A generated arithmetic task ("What is 37 + 18?") for the offline quickstart and RL demos.

Answers are checked by the *last* number in the response: instruct models restate the
operands first ("To add 37 and 18 ... = 55").
"""

from __future__ import annotations

import random
import re

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def make_problems(n: int, seed: int, max_operand: int = 50) -> list[dict]:
    """``n`` distinct problems ``{"prompt": [user msg], "answer": "55", "a": 37, "b": 18}``."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                    "answer": str(a + b), "a": a, "b": b})
    return out


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")


def is_correct(response: str, answer: str) -> bool:
    got = last_number(response)
    try:
        return got is not None and float(got) == float(answer)
    except ValueError:
        return False


def precise(p: dict, result: int | None = None) -> str:
    """The precise worked answer: ``37 + 18 = 55. The answer is 55.``"""
    c = p["answer"] if result is None else result
    return f"{p['a']} + {p['b']} = {c}. The answer is {c}."


def estimate(p: dict) -> str:
    """A lazy estimate from the operands rounded to tens: ``Roughly 40 + 20 = 60. The answer is about 60.``
    Wrong unless the rounding errors cancel."""
    ra, rb = _round10(p["a"]), _round10(p["b"])
    return f"Roughly {ra} + {rb} = {ra + rb}. The answer is about {ra + rb}."


def _round10(x: int) -> int:
    return max(10, int(x / 10 + 0.5) * 10)


def sft_rows(problems: list[dict], estimate_frac: float = 0.0, seed: int = 0) -> list[dict]:
    """Worked answers that end with the result; a share ``estimate_frac`` of them are lazy
    estimates instead (demonstrations of mixed quality, as human ones are)."""
    rng = random.Random(seed)
    return [{"prompt": p["prompt"], "completion": estimate(p) if estimate_frac > 0 and rng.random() < estimate_frac
             else precise(p)} for p in problems]


def preference_rows(problems: list[dict], seed: int, estimate_frac: float = 0.0) -> list[dict]:
    """Pairs in which the precise correct answer is preferred over a worse one: a lazy estimate
    (share ``estimate_frac``) or a precise-looking wrong sum (off by 1-10). With ``estimate_frac``
    > 0 each row's ``rejected_kind`` says which (``estimate`` | ``wrong_sum``)."""
    rng = random.Random(seed)
    rows = []
    for p in problems:
        row = {"prompt": p["prompt"], "chosen": precise(p)}
        if estimate_frac > 0 and rng.random() < estimate_frac:
            rows.append({**row, "rejected": estimate(p), "rejected_kind": "estimate"})
            continue
        right = int(p["answer"])
        row["rejected"] = precise(p, right + rng.choice([-1, 1]) * rng.randint(1, 10))
        rows.append({**row, "rejected_kind": "wrong_sum"} if estimate_frac > 0 else row)
    return rows

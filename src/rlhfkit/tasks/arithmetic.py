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


def sft_rows(problems: list[dict]) -> list[dict]:
    """Short worked answers that end with the result."""
    return [{"prompt": p["prompt"], "completion": f"{p['a']} + {p['b']} = {p['answer']}. "
             f"The answer is {p['answer']}."} for p in problems]


def preference_rows(problems: list[dict], seed: int) -> list[dict]:
    """Pairs in which the correct answer is preferred over a wrong one (off by 1-10)."""
    rng = random.Random(seed)
    rows = []
    for p in problems:
        right = int(p["answer"])
        wrong = right + rng.choice([-1, 1]) * rng.randint(1, 10)
        fmt = "{a} + {b} = {c}. The answer is {c}."
        rows.append({"prompt": p["prompt"],
                     "chosen": fmt.format(a=p["a"], b=p["b"], c=right),
                     "rejected": fmt.format(a=p["a"], b=p["b"], c=wrong)})
    return rows

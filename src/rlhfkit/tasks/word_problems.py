"""A small generated set of GSM8K-style word problems, and a loader of the real GSM8K rows.

:func:`make_word_problems` writes problems from a few templates with numbers chosen so that
the arithmetic needs a calculator to be sure (3-digit by 2- or 3-digit products, sums of
products, exact divisions of 5-digit numbers). Rows are ``{"prompt": question, "answer": "n",
"solution": "<steps> #### n"}``, deterministic from the seed; ``answer`` is the bare number
(the ``gsm8k`` verifier and :class:`~rlhfkit.envs.calculator.CalculatorEnv` accept it, and the
``#### n`` solution too).

:func:`tool_demonstrations` turns rows into multi-turn SFT conversations that use the
calculator the way :class:`~rlhfkit.envs.calculator.CalculatorEnv` expects (a warm start: a
small instruct model does not call tools on its own).

:func:`load_gsm8k` reads GSM8K's ``{"question", "answer": "...#### n"}`` JSONL rows as
``{"prompt": question, "answer": answer}``.
"""

from __future__ import annotations

import json
import os
import random
from typing import Callable

from ..errors import DataError

_NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam")


def _boxes(rng: random.Random) -> tuple[str, list[str], int]:
    a, b = rng.randint(120, 999), rng.randint(120, 999)
    return (f"A warehouse stores {a} boxes. Each box holds {b} screws. How many screws are in the warehouse?",
            [f"{a} * {b} = {a * b}"], a * b)


def _shopping(rng: random.Random) -> tuple[str, list[str], int]:
    name, a, b, c = rng.choice(_NAMES), rng.randint(101, 999), rng.randint(13, 99), rng.randint(10, 99)
    total = a * b + c
    return (f"{name} buys {a} notebooks for a school at ${b} each and pays ${c} for delivery. "
            f"How many dollars does {name} pay in total?", [f"{a} * {b} = {a * b}", f"{a * b} + {c} = {total}"], total)


def _orchard(rng: random.Random) -> tuple[str, list[str], int]:
    a, b = rng.randint(101, 499), rng.randint(101, 499)
    c = rng.randint(100, a * b // 3)
    left = a * b - c
    return (f"An orchard has {a} rows of apple trees with {b} trees in each row. A storm knocks down {c} trees. "
            "How many trees are still standing?", [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {left}"], left)


def _trip(rng: random.Random) -> tuple[str, list[str], int]:
    a, b, c, d = rng.randint(105, 899), rng.randint(11, 48), rng.randint(105, 899), rng.randint(11, 48)
    total = a * b + c * d
    return (f"A truck drives {a} kilometers a day for {b} days, then {c} kilometers a day for {d} more days. "
            "How many kilometers does it drive in all?",
            [f"{a} * {b} = {a * b}", f"{c} * {d} = {c * d}", f"{a * b} + {c * d} = {total}"], total)


def _sharing(rng: random.Random) -> tuple[str, list[str], int]:
    n, q = rng.randint(13, 97), rng.randint(151, 999)
    return (f"A library splits {n * q} books equally among {n} schools. How many books does each school get?",
            [f"{n * q} / {n} = {q}"], q)


def _savings(rng: random.Random) -> tuple[str, list[str], int]:
    name, a, b = rng.choice(_NAMES), rng.randint(115, 875), rng.randint(23, 52)
    c = rng.randint(1000, a * b // 2)
    left = a * b - c
    return (f"{name} saves ${a} every week for {b} weeks and then spends ${c} on a used car. "
            f"How many dollars does {name} have left?", [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {left}"], left)


TEMPLATES: tuple[Callable[[random.Random], tuple[str, list[str], int]], ...] = (
    _boxes, _shopping, _orchard, _trip, _sharing, _savings)


def make_word_problems(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct problems ``{"prompt", "answer", "solution"}``, cycling through the templates."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        question, steps, answer = TEMPLATES[len(out) % len(TEMPLATES)](rng)
        if question in seen:
            continue
        seen.add(question)
        out.append({"prompt": question, "answer": str(answer),
                    "solution": "\n".join(steps) + f"\n#### {answer}"})
    return out


def tool_demonstrations(rows: list[dict]) -> list[dict]:
    """``{"messages": [...]}`` per generated row: one calculator call per solution step (each
    answered by its tool message), then the final answer. The tools are described in the system
    message, as :class:`~rlhfkit.envs.calculator.CalculatorEnv` shows them to a chat template
    without native tool support (SmolLM2's)."""
    from ..envs.calculator import CALCULATOR, CALCULATOR_SYSTEM, calculate
    from ..envs.tools import with_tools

    out = []
    for r in rows:
        start = [{"role": "system", "content": CALCULATOR_SYSTEM}, {"role": "user", "content": r["prompt"]}]
        messages, _ = with_tools(start, [CALCULATOR], native=False)
        steps = r["solution"].split("\n####")[0].splitlines()
        for step in steps:
            expr = step.split("=")[0].strip()
            call = json.dumps({"name": "calculator", "arguments": {"expression": expr}})
            messages += [{"role": "assistant", "content": f"I will compute {expr}.\n<tool_call>{call}</tool_call>"},
                         {"role": "tool", "name": "calculator", "content": calculate(expr)}]
        messages.append({"role": "assistant", "content": f"{'. '.join(steps)}. The answer is {r['answer']}."})
        out.append({"messages": messages})
    return out


def load_gsm8k(path: str, split: str = "test", limit: int | None = None) -> list[dict]:
    """GSM8K rows ``{"prompt": question, "answer": "...#### n"}`` from ``path`` (a ``.jsonl``
    file, or a directory holding ``<split>.jsonl``); the first ``limit`` rows when given."""
    file = os.path.join(path, f"{split}.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise DataError(f"GSM8K file not found: {file}; give the gsm8k directory (with train.jsonl / "
                        "test.jsonl) or a .jsonl file of {'question', 'answer'} rows")
    rows = []
    with open(file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rows.append({"prompt": rec["question"], "answer": rec["answer"]})
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError("not a GSM8K row (a JSON object with 'question' and 'answer')",
                                source=file, row=i) from None
    return rows

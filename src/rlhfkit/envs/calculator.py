"""The ``calculator`` tool and the word-problem environment that lets the policy use it.

The calculator parses the expression with :mod:`ast` and evaluates only a whitelist of nodes:
numbers (integers and decimals), ``+ - * / // % **``, unary minus/plus and parentheses. Names,
calls, attribute access, subscripts, strings and everything else are refused; nothing is ever
passed to ``eval``. Arithmetic is exact (:class:`fractions.Fraction`, so ``0.1 + 0.2`` is
``0.3``), and bounded: expressions of at most ``MAX_EXPRESSION_CHARS`` characters, integer
exponents of magnitude at most ``MAX_EXPONENT``, every number and intermediate result at most
``MAX_ABS`` in magnitude and with a denominator at most ``MAX_ABS``. ``×``, ``÷``, ``−`` and
``^`` (as power) are accepted, and so are thousands separators (``1,234``).

:class:`CalculatorEnv` poses a word problem; each policy turn either calls tools (the results
come back as tool messages and the episode goes on) or answers. The answer is read from
``#### n`` (GSM8K), else ``The answer is n`` (or ``\\boxed{n}``), else, with ``strict=False``,
the last number; reward 1.0 when it equals the row's answer (compared as in the ``gsm8k``
verifier), else 0.0.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from decimal import Decimal, localcontext
from fractions import Fraction

from ..errors import DataError
from ..rewards.verifiers import RowError, gsm8k_gold, number_after_marker, same_number, to_number
from ..tasks.arithmetic import last_number
from .base import StepResult, messages_from_row
from .tools import Tool, ToolError, parse_tool_calls, run_tool_calls

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_ABS = 10**30
_HOW = "use numbers, + - * / // % ** and parentheses, e.g. '347 * 29 + 12'"


class CalculatorError(ToolError, ValueError):
    """An expression the calculator refuses or cannot evaluate."""


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_REFUSED = {ast.Name: "names are", ast.Attribute: "attribute access is", ast.Call: "function calls are",
            ast.Subscript: "subscripts are", ast.Compare: "comparisons are", ast.BoolOp: "boolean operators are",
            ast.Lambda: "lambdas are", ast.Tuple: "tuples are (write 1234 or 1,234 for one number)"}


def normalize(expression: str) -> str:
    """Typographic operators to Python ones, ``^`` to ``**``, thousands separators removed."""
    text = expression.strip().rstrip("=").strip()
    for a, b in (("×", "*"), ("✕", "*"), ("÷", "/"), ("−", "-"), ("–", "-"), ("^", "**")):
        text = text.replace(a, b)
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)


def _checked(v: Fraction) -> Fraction:
    if abs(v) > MAX_ABS:
        raise CalculatorError(f"a number or intermediate result is larger than 1e{round(math.log10(MAX_ABS))}")
    if v.denominator > MAX_ABS:
        raise CalculatorError("a result has too many decimal places")
    return v


def _power(base: Fraction, exp: Fraction) -> Fraction:
    if exp.denominator != 1:
        raise CalculatorError("only whole-number exponents are supported")
    e = int(exp)
    if abs(e) > MAX_EXPONENT:
        raise CalculatorError(f"the exponent {e} is too large (at most {MAX_EXPONENT} in magnitude)")
    if base == 0 and e < 0:
        raise CalculatorError("division by zero (0 to a negative power)")
    for part in (base.numerator, base.denominator):  # size of the result before computing it
        if part and abs(e) * math.log10(abs(part)) > math.log10(MAX_ABS):
            raise CalculatorError(f"the power is too large (results are limited to 1e{round(math.log10(MAX_ABS))})")
    return base ** e


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"{type(node.value).__name__} values are not allowed; {_HOW}")
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise CalculatorError("the number is too large")
        return _checked(Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(a, b))
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"the operator {type(node.op).__name__} is not allowed; {_HOW}")
        if b == 0 and op is not operator.add and op is not operator.sub and op is not operator.mul:
            raise CalculatorError("division by zero")
        return _checked(Fraction(op(a, b)))
    if isinstance(node, ast.Name):
        raise CalculatorError(f"names such as '{node.id}' are not allowed; {_HOW}")
    what = _REFUSED.get(type(node), f"{type(node).__name__} expressions are")
    raise CalculatorError(f"{what} not allowed; {_HOW}")


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; CalculatorError for anything refused."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError(f"give an expression; {_HOW}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(normalize(expression), mode="eval")
    except (SyntaxError, ValueError):
        raise CalculatorError(f"{expression.strip()[:60]!r} is not an arithmetic expression; {_HOW}") from None
    return _eval(tree.body)


def format_number(value: Fraction) -> str:
    """An integer as itself, anything else as a decimal of up to 15 significant digits."""
    if value.denominator == 1:
        return str(value.numerator)
    with localcontext() as ctx:
        ctx.prec = 15
        d = (Decimal(value.numerator) / Decimal(value.denominator)).normalize()
    return format(d, "f")


def calculate(expression: str) -> str:
    """The calculator's answer: the value, or ``error: <why>`` (never raises)."""
    try:
        return format_number(evaluate(expression))
    except CalculatorError as e:
        return f"error: {e}"


def _calculator(expression: str) -> str:
    return format_number(evaluate(expression))


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression exactly: + - * / // % ** and parentheses, e.g. '347 * 29 + 12'.",
    parameters={"type": "object",
                "properties": {"expression": {"type": "string", "description": "the arithmetic expression"}},
                "required": ["expression"]},
    fn=_calculator,
    timeout=2.0,
)


# --------------------------------------------------------------------------- environment

CALCULATOR_SYSTEM = ("Solve the math word problem step by step. You can use the calculator tool for "
                     "arithmetic. When you know the result, end your reply with 'The answer is N.'")
_ANSWER_IS = re.compile(r"(?i)answer\s+is\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
_BOXED = re.compile(r"\\boxed\{\s*\$?(-?\d[\d,]*(?:\.\d+)?)\s*\}")


def final_answer(text: str, strict: bool = True) -> Fraction | None:
    """The answer of a response: the number after the last ``####``, else the last ``answer is
    n`` / ``\\boxed{n}``, else (``strict=False``) the last number; None when there is none."""
    marked = number_after_marker(text)
    if marked is None:
        found = [(m.start(), m.group(1)) for rx in (_ANSWER_IS, _BOXED) for m in rx.finditer(text)]
        marked = max(found)[1] if found else (None if strict else last_number(text))
    return to_number(marked)


class CalculatorEnv:
    """A word problem; the policy may call the calculator (any number of times, within
    ``max_turns``), then answers. Rows: ``{"prompt" or "question": ..., "answer": "...#### n" or "n"}``.

    Step info: ``tool_calls``, ``tool_errors`` (calls that failed), ``correct``, ``answered``
    (a final answer with a number was given).
    """

    def __init__(self, max_turns: int = 4, tools: list[Tool] | None = None,
                 system_prompt: str | None = CALCULATOR_SYSTEM, strict: bool = True,
                 answer_field: str = "answer"):
        self.max_turns, self.strict, self.answer_field = int(max_turns), strict, answer_field
        self.tools = list(tools) if tools is not None else [CALCULATOR]
        self.system_prompt, self.gold = system_prompt, None

    def reset(self, row: dict) -> list[dict]:
        if row.get(self.answer_field) is None:
            raise DataError(f"a CalculatorEnv row needs an '{self.answer_field}' field with the number "
                            f"(or a GSM8K solution ending '#### n'); it has {sorted(row)}", field=self.answer_field)
        try:
            self.gold = gsm8k_gold(row[self.answer_field])
        except RowError as e:
            raise DataError(str(e), field=self.answer_field) from None
        return messages_from_row(row, self.system_prompt)

    def step(self, messages: list[dict], response: str) -> StepResult:
        calls = parse_tool_calls(response)
        if calls:
            observation, errors = run_tool_calls(calls, self.tools)
            return StepResult(observation, 0.0, False, {"tool_calls": len(calls), "tool_errors": errors,
                                                        "correct": False, "answered": False})
        pred = final_answer(response, self.strict)
        correct = same_number(pred, self.gold)
        return StepResult(None, 1.0 if correct else 0.0, True,
                          {"tool_calls": 0, "tool_errors": 0, "correct": correct, "answered": pred is not None})

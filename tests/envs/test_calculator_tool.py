"""The calculator: exact values, refused inputs, bounded work, never eval()."""

import builtins
import time
from fractions import Fraction

import pytest

from rlhfkit.envs.calculator import CALCULATOR, CalculatorError, calculate, evaluate


@pytest.mark.parametrize("expr, want", [
    ("347 * 29 + 12", Fraction(10075)),          # 347*29 = 10063, + 12
    ("2 ** 10", Fraction(1024)),
    ("-3 + 5", Fraction(2)),
    ("-(4 - 10)", Fraction(6)),
    ("7 // 2", Fraction(3)),
    ("-7 // 2", Fraction(-4)),                    # floor division rounds down
    ("7 % 3", Fraction(1)),
    ("(1.5 + 2.25) * 4", Fraction(15)),
    ("0.1 + 0.2", Fraction(3, 10)),               # exact, not 0.30000000000000004
    ("1 / 4", Fraction(1, 4)),
    ("2 ** -2", Fraction(1, 4)),
    ("-2 ** 2", Fraction(-4)),                    # power binds tighter than unary minus
    ("10 ÷ 4", Fraction(5, 2)),
    ("3 × 4 − 5", Fraction(7)),
    ("2^8", Fraction(256)),
    ("1,234 + 1", Fraction(1235)),
    ("123456789 * 987654321", Fraction(121932631112635269)),
    ("(12 + 8) * 3 =", Fraction(60)),
])
def test_values(expr, want):
    assert evaluate(expr) == want


@pytest.mark.parametrize("expr, want", [
    ("347 * 29 + 12", "10075"), ("1 / 4", "0.25"), ("1 / 3", "0.333333333333333"), ("10 / 5", "2"),
    ("0.5 * 3", "1.5"), ("-7 / 2", "-3.5"),
])
def test_formatted_answers(expr, want):
    assert calculate(expr) == want


@pytest.mark.parametrize("expr, why", [
    ("x + 1", "names such as 'x'"),
    ("__import__('os').system('ls')", "function calls"),
    ("(1).real", "attribute access"),
    ("open('/etc/passwd')", "function calls"),
    ("[1, 2][0]", "not allowed"),
    ("'a' * 3", "str values"),
    ("1 < 2", "comparisons"),
    ("1 if 1 else 2", "not allowed"),
    ("lambda: 1", "lambdas"),
    ("True + 1", "bool values"),
    ("2 ** 1000", "exponent 1000 is too large"),
    ("9 ** 99", "power is too large"),
    ("(10 ** 30) ** 100", "power is too large"),
    ("10 ** 29 * 10 ** 29", "larger than 1e30"),
    ("1e999", "too large"),
    ("2 ** 0.5", "whole-number exponents"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("5 // (3 - 3)", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("", "give an expression"),
    ("2 +", "not an arithmetic expression"),
    ("1" + " + 1" * 60, "longer than 200"),
])
def test_refused(expr, why):
    with pytest.raises(CalculatorError, match=None) as e:
        evaluate(expr)
    assert why in str(e.value)
    assert calculate(expr).startswith("error: ") and why in calculate(expr)  # the tool's text, no exception


def test_huge_work_is_refused_quickly():
    t0 = time.perf_counter()
    for expr in ("9 ** 9 ** 9", "(10 ** 30) ** 100", "99999 ** 100"):
        assert calculate(expr).startswith("error:")
    assert time.perf_counter() - t0 < 1.0


def test_never_calls_eval(monkeypatch):
    def no_eval(*a, **k):
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(builtins, "exec", no_eval)
    assert evaluate("(2 + 3) * 7") == 35


def test_tool_reports_errors_as_text():
    ok = CALCULATOR.run({"expression": "12 * 12"})
    assert (ok.text, ok.error) == ("144", False)
    bad = CALCULATOR.run({"expression": "1 / 0"})
    assert bad.error and bad.text == "error: calculator: division by zero"
    missing = CALCULATOR.run({})
    assert missing.error and "missing argument(s) expression" in missing.text
    wrong = CALCULATOR.run({"expression": 5})
    assert wrong.error and "must be a JSON string" in wrong.text
    assert CALCULATOR.schema()["function"]["name"] == "calculator"

"""Verifiers compare integers exactly, decimals within a stated absolute tolerance, and refuse a
gold answer that is not a finite number."""

import pytest

from rlhfkit.rewards.verifiers import RowError, arithmetic_score, gsm8k_score, make_verifier


@pytest.mark.parametrize("gold", [10**9, 10**12, 2**53 + 1, 123456789012345678901234567890])
def test_off_by_one_large_integer_is_wrong(gold):
    assert arithmetic_score(f"The answer is {gold}.", gold) == 1.0
    assert arithmetic_score(f"The answer is {gold + 1}.", gold) == 0.0
    assert gsm8k_score(f"#### {gold - 1}", f"so #### {gold}") == 0.0


def test_equal_numbers_in_other_spellings_match():
    assert arithmetic_score("72.0", "72") == 1.0
    assert gsm8k_score("#### 1,000", "#### 1000") == 1.0
    assert arithmetic_score("0.50", "0.5") == 1.0
    assert arithmetic_score("0.3333333", "0.33333333") == 1.0     # within 1e-6
    assert arithmetic_score("0.334", "0.333") == 0.0


@pytest.mark.parametrize("gold", ["inf", "nan", "-inf", "Infinity", float("inf"), float("nan")])
def test_non_finite_gold_answer_is_a_row_error(gold):
    with pytest.raises(RowError, match="not a finite number|not a number"):
        arithmetic_score("5", gold)
    res = make_verifier("arithmetic").score(["q"], ["5"], [{"answer": gold}])
    assert res.errors and res.errors[0][0] == 0

"""Rule-based rewards on hand-written completions."""

import math

import pytest

from rlhfkit.rewards.verifiers import (RowError, arithmetic_score, format_score, gsm8k_gold,
                                       gsm8k_prediction, gsm8k_score, make_verifier)

GSM_ANSWER = ("Each box holds 250 pencils, and there are 4 boxes.\n"
              "250 * 4 = <<250*4=1000>>1000\n#### 1,000")


def test_arithmetic_reads_the_last_number():
    assert arithmetic_score("To add 37 and 18 we get 55.", "55") == 1.0
    assert arithmetic_score("To add 37 and 18 we get 55.", 55) == 1.0
    assert arithmetic_score("37 + 18 = 56. The answer is 56.", "55") == 0.0
    assert arithmetic_score("The answer is 55, not 37.", "55") == 0.0  # last number is 37
    assert arithmetic_score("I don't know.", "55") == 0.0


def test_arithmetic_rejects_a_non_numeric_answer():
    with pytest.raises(RowError, match="not a finite number"):
        arithmetic_score("55", "fifty-five")


def test_gsm8k_gold_is_the_number_after_the_marker():
    assert gsm8k_gold(GSM_ANSWER) == 1000.0
    assert gsm8k_gold("#### -3.5") == -3.5
    assert gsm8k_gold("72") == 72.0  # a bare number is accepted
    with pytest.raises(RowError, match="####"):
        gsm8k_gold("no final answer here")


def test_gsm8k_prediction_prefers_the_marker():
    assert gsm8k_prediction("250 * 4 = 1000\n#### 1000\nThat was 4 boxes.") == 1000.0
    assert gsm8k_prediction("250 * 4 = 1,000") == 1000.0
    assert gsm8k_prediction("no numbers") is None


@pytest.mark.parametrize("completion,expected", [
    ("There are 4 boxes of 250, so 1000 pencils.", 1.0),
    ("250 * 4 = 1000\n#### 1,000", 1.0),
    ("The answer is 1,000.00.", 1.0),
    ("#### 1000 (from 4 boxes)", 1.0),
    ("250 * 4 = 1000, minus 1 gives 999.", 0.0),
    ("#### 999", 0.0),
    ("I cannot tell.", 0.0),
])
def test_gsm8k_score(completion, expected):
    assert gsm8k_score(completion, GSM_ANSWER) == expected


def test_format_default_pattern_wants_a_final_answer_sentence():
    assert format_score("2 + 3 = 5. The answer is 5.") == 1.0
    assert format_score("So the final answer is: $1,000\n") == 1.0
    assert format_score("The answer is 5 because 2 + 3 = 5") == 0.0
    assert format_score("5") == 0.0


def test_format_custom_pattern_uses_search():
    assert format_score("Let me think. <answer>5</answer>", r"<answer>\d+</answer>") == 1.0
    assert format_score("5", r"<answer>\d+</answer>") == 0.0


def test_sources_fail_rows_without_an_answer_and_keep_the_others():
    prompts = ["What is 2 + 3?"] * 3
    completions = ["The answer is 5.", "The answer is 5.", "The answer is 6."]
    extras = [{"answer": "5"}, {"question": "no answer field"}, {"answer": "5"}]
    for name in ("arithmetic", "gsm8k"):
        res = make_verifier(name).score(prompts, completions, extras)
        assert res.values[0] == 1.0 and res.values[2] == 0.0
        assert math.isnan(res.values[1])
        assert len(res.errors) == 1 and res.errors[0][0] == 1
        assert f"no 'answer' field, which the {name} verifier" in res.errors[0][1]


def test_format_source_needs_no_answer():
    res = make_verifier("format", name="fmt").score(["q", "q"], ["The answer is 3.", "3"], [{}, {}])
    assert res.values == [1.0, 0.0] and res.errors == []

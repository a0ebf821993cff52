"""Weighted combination of reward sources, with hand-computed numbers."""

import math

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.rewards import CombinedReward, RewardResult, RewardSource, build_rewards
from rlhfkit.rewards.base import error_lines, rows_text, unique_names

NAN = float("nan")


class Fixed:
    """A source returning fixed values and errors."""

    def __init__(self, name, values, errors=()):
        self.name, self.values, self.errors = name, values, list(errors)
        self.closed = False

    def score(self, prompts, completions, extras):
        return RewardResult(values=list(self.values), errors=list(self.errors))

    def close(self):
        self.closed = True


def test_weighted_total_skips_failed_rows():
    a = Fixed("a", [1.0, 0.0, NAN], [(2, "ValueError: no answer")])
    b = Fixed("b", [0.5, 0.25, 1.0])
    assert isinstance(a, RewardSource)
    scores = CombinedReward([a, b], [2.0, -1.0]).score(["p"] * 3, ["c"] * 3, [{}] * 3)
    assert scores.total == pytest.approx([2.0 - 0.5, 0.0 - 0.25, 0.0 - 1.0])
    assert scores.per_source["a"][:2] == [1.0, 0.0] and math.isnan(scores.per_source["a"][2])
    assert scores.per_source["b"] == [0.5, 0.25, 1.0]
    assert scores.errors == ["reward 'a' failed on row 2: ValueError: no answer"]


def test_duplicate_names_get_suffixes_and_close_reaches_every_source():
    srcs = [Fixed("rm", [1.0]), Fixed("rm", [2.0]), Fixed("rm_2", [3.0])]
    with CombinedReward(srcs) as combined:
        scores = combined.score(["p"], ["c"])
    assert list(scores.per_source) == ["rm", "rm_3", "rm_2"]
    assert scores.total == [6.0]
    assert all(s.closed for s in srcs)


def test_mismatched_lengths_are_errors():
    combined = CombinedReward([Fixed("a", [1.0, 2.0])])
    with pytest.raises(ValueError, match="one entry per row"):
        combined.score(["p"], ["c", "d"])
    with pytest.raises(RuntimeError, match="returned 2 values for 1 rows"):
        combined.score(["p"], ["c"])
    with pytest.raises(ConfigError, match="no reward sources"):
        CombinedReward([])


def test_error_lines_group_rows_with_the_same_message():
    assert rows_text([3]) == "row 3"
    assert rows_text([5, 0, 1, 2, 7, 8]) == "rows 0-2, 5, 7-8"
    errs = [(0, "timed out after 1 s"), (1, "timed out after 1 s"), (4, "KeyError: 'x'")]
    assert error_lines("f", errs) == ["reward 'f' failed on rows 0-1: timed out after 1 s",
                                      "reward 'f' failed on row 4: KeyError: 'x'"]
    assert unique_names(["x", "x", "x"]) == ["x", "x_2", "x_3"]


def test_verifiers_end_to_end():
    combined = build_rewards(["arithmetic", "format*0.5"])
    prompts = [[{"role": "user", "content": "What is 37 + 18?"}]] * 3
    completions = ["To add 37 and 18 we get 55.", "37 + 18 = 55. The answer is 55.",
                   "The answer is 54."]
    scores = combined.score(prompts, completions, [{"answer": "55"}, {"answer": "55"}, {}])
    assert scores.total == [1.0, 1.5, 0.5]
    assert scores.per_source["format"] == [0.0, 1.0, 1.0]
    assert len(scores.errors) == 1 and scores.errors[0].startswith(
        "reward 'arithmetic' failed on row 2: the row has no 'answer' field")

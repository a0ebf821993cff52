"""TRL's reward-function signature (keywords, message-list completions for chat prompts, extra
columns, None entries) in the worker process, the detection rule, and the first-batch rule."""

import math
import textwrap

import pytest

from rlhfkit.errors import TrainingError
from rlhfkit.rewards import CombinedReward, FunctionReward, RewardResult
from rlhfkit.rewards.functions import call_style

HELPER = textwrap.dedent('''
    def trl_len(completions, **kwargs):
        # TRL's documented shape: message lists for conversational prompts, else strings
        return [float(len(c[0]["content"]) if isinstance(c, list) else len(c)) for c in completions]

    def trl_kinds(completions, prompts=None, answer=None, **kwargs):
        out = []
        for c, p, a in zip(completions, prompts, answer):
            if a is None:
                out.append(None)  # no reward for this row
            else:
                out.append(10.0 * isinstance(c, list) + 1.0 * isinstance(p, list) + float(a))
        return out

    def trl_named_only(completions):
        return [1.0] * len(completions)

    def native(prompts, completions, **columns):
        return [100.0 if isinstance(c, str) else -1.0 for c in completions]

    def kw_only(**kwargs):
        return [float(len(kwargs["completions"]))] * len(kwargs["completions"])

    def raises(completions, **kwargs):
        raise ValueError("broken reward")
''')


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    d = tmp_path_factory.mktemp("trl-helpers")
    (d / "trl_helpers.py").write_text(HELPER)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(d))
        mp.setenv("PYTHONPATH", str(d))
        yield "trl_helpers"


CHAT = [[{"role": "user", "content": "What is 1 + 1?"}], [{"role": "user", "content": "Hi"}]]


def score(mod, fn, prompts, completions, extras=None, **kw):
    src = FunctionReward(f"{mod}:{fn}", **kw)
    try:
        return src.style, src.score(prompts, completions, extras or [{} for _ in completions])
    finally:
        src.close()


def test_detection_rule():
    def a(completions, **kw): ...
    def b(prompts, completions, **kw): ...
    def c(**kwargs): ...
    def d(*, completions, prompts): ...
    def e(p, c): ...
    assert [call_style(f) for f in (a, b, c, d, e)] == ["trl", "rlhfkit", "trl", "trl", "rlhfkit"]
    assert call_style(b, "trl") == "trl" and call_style(a, "rlhfkit") == "rlhfkit"


def test_trl_function_gets_message_lists_for_chat_prompts(mod):
    style, res = score(mod, "trl_len", CHAT, ["two", "hello!"])
    assert style == "trl" and res.values == [3.0, 6.0] and res.errors == []
    style, res = score(mod, "trl_len", ["plain q", "q2"], ["two", "hello!"])
    assert res.values == [3.0, 6.0]


def test_trl_kwargs_columns_and_none(mod):
    extras = [{"answer": 2}, {"answer": None}]
    _, res = score(mod, "trl_kinds", CHAT, ["a", "b"], extras)
    assert res.values[0] == 10.0 + 1.0 + 2.0 and math.isnan(res.values[1]) and res.errors == []
    _, res = score(mod, "trl_kinds", ["p1", "p2"], ["a", "b"], [{"answer": 1}, {"answer": 3}])
    assert res.values == [1.0, 3.0]  # plain prompts: strings for both


def test_function_without_kwargs_gets_only_what_it_names(mod):
    _, res = score(mod, "trl_named_only", CHAT, ["a", "b"], [{"answer": 1}, {"answer": 2}])
    assert res.values == [1.0, 1.0] and res.errors == []
    _, res = score(mod, "kw_only", CHAT, ["a", "b"])
    assert res.values == [2.0, 2.0]


def test_rlhfkit_signature_keeps_strings_unless_forced(mod):
    style, res = score(mod, "native", CHAT, ["a", "b"])
    assert style == "rlhfkit" and res.values == [100.0, 100.0]
    style, res = score(mod, "native", CHAT, ["a", "b"], signature="trl")
    assert style == "trl" and res.values == [-1.0, -1.0]


class Fake:
    """A source failing on the rows listed per call."""

    def __init__(self, fails):
        self.name, self.fails, self.calls = "fake", list(fails), 0

    def score(self, prompts, completions, extras):
        bad = self.fails[min(self.calls, len(self.fails) - 1)]
        self.calls += 1
        return RewardResult(values=[math.nan if i in bad else 1.0 for i in range(len(completions))],
                            errors=[(i, "ValueError: nope") for i in bad])


def test_every_row_of_the_first_batch_failing_stops():
    comb = CombinedReward([Fake([{0, 1, 2}])])
    with pytest.raises(TrainingError) as e:
        comb.score(["p"] * 3, ["a", "b", "c"])
    assert "reward 'fake' failed on rows 0-2: ValueError: nope" in str(e.value)
    assert "every row of its first batch (3 rows)" in str(e.value)


def test_partial_first_batch_and_later_total_failures_continue():
    comb = CombinedReward([Fake([{0}, {0, 1, 2}])])
    first = comb.score(["p"] * 3, ["a", "b", "c"])
    assert first.total == [0.0, 1.0, 1.0] and len(first.errors) == 1
    later = comb.score(["p"] * 3, ["a", "b", "c"])  # today's behaviour: reported, scores 0
    assert later.total == [0.0, 0.0, 0.0] and later.errors


def test_none_for_every_row_is_not_a_failure(mod):
    src = FunctionReward(f"{mod}:trl_kinds")
    try:
        res = CombinedReward([src]).score(["p", "q"], ["a", "b"], [{"answer": None}, {}])
        assert res.total == [0.0, 0.0] and res.errors == []
    finally:
        src.close()

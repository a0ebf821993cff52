"""User reward functions run in a worker process: results, row errors, timeouts, bad refs."""

import math
import os
import subprocess
import sys
import textwrap
import time

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.rewards import FunctionReward, build_rewards
from rlhfkit.rewards.functions import BadResult, batch_columns, check_values

HELPER = textwrap.dedent('''
    import time

    NOT_CALLABLE = 3

    def length(prompts, completions, **columns):
        return [float(len(c)) for c in completions]

    def contains_answer(prompts, completions, answer, **columns):
        return [1.0 if a is not None and a in c else 0.0 for c, a in zip(completions, answer)]

    def picky(prompts, completions, **columns):
        out = []
        for c in completions:
            if "boom" in c:
                raise ValueError(f"cannot score {c!r}")
            out.append(1.0)
        return out

    def sleepy(prompts, completions, **columns):
        if any("slow" in c for c in completions):
            time.sleep(60)
        return [0.5] * len(completions)

    def batch_fails_row_hangs(prompts, completions, **columns):
        if len(completions) > 1:
            raise RuntimeError("batch failed")
        if completions[0] == "slow":
            time.sleep(60)
        return [1.0]

    def too_short(prompts, completions, **columns):
        return [1.0]

    def words(prompts, completions, **columns):
        return "good"

    def optional(prompts, completions, **columns):
        return [None if "skip" in c else 2.0 for c in completions]
''')


@pytest.fixture(scope="module")
def helper_module(tmp_path_factory):
    """``reward_helpers`` importable here (sys.path) and in spawned workers (PYTHONPATH)."""
    d = tmp_path_factory.mktemp("helpers")
    (d / "reward_helpers.py").write_text(HELPER)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(d))
        mp.setenv("PYTHONPATH", str(d))
        yield "reward_helpers"


def make(helper_module, fn, **kw):
    return FunctionReward(f"{helper_module}:{fn}", **kw)


def test_batch_with_columns(helper_module):
    src = make(helper_module, "contains_answer")
    try:
        res = src.score(["q1", "q2", "q3"], ["it is 55", "it is 54", "no idea"],
                        [{"answer": "55"}, {"answer": "55", "extra": 1}, {}])
        assert res.values == [1.0, 0.0, 0.0] and res.errors == []
        assert src.name == "contains_answer"
        res = src.score(["q"], ["55"], [{"answer": "55"}])  # the same worker serves again
        assert res.values == [1.0]
    finally:
        src.close()


def test_a_row_that_raises_fails_alone(helper_module):
    with build_rewards([f"fn:{helper_module}:picky", f"fn:{helper_module}:length*0.1"]) as combined:
        scores = combined.score(["q"] * 4, ["ok", "ok", "boom", "fine"], [{}] * 4)
    picky = scores.per_source["picky"]
    assert picky[:2] == [1.0, 1.0] and math.isnan(picky[2]) and picky[3] == 1.0
    assert scores.total == pytest.approx([1.2, 1.2, 0.4, 1.4])
    assert len(scores.errors) == 1
    assert scores.errors[0].startswith(
        "reward 'picky' failed on row 2: ValueError: cannot score 'boom' (at reward_helpers.py:")


def test_timeout_fails_the_call_and_the_worker_restarts(helper_module):
    src = make(helper_module, "sleepy", timeout=1.0)
    try:
        assert src.score(["q"], ["fast"], [{}]).values == [0.5]  # worker started and warm
        t0 = time.monotonic()
        res = src.score(["q"] * 3, ["fast", "slow", "fast"], [{}] * 3)
        assert time.monotonic() - t0 < 6.0
        assert all(math.isnan(v) for v in res.values)
        assert res.errors == [(i, "timed out after 1 s") for i in range(3)]
        assert src.score(["q"] * 2, ["fast", "fast"], [{}] * 2).values == [0.5, 0.5]
    finally:
        src.close()


def test_a_row_that_hangs_in_the_retry_ends_it(helper_module):
    src = make(helper_module, "batch_fails_row_hangs", timeout=1.0)
    try:
        res = src.score(["q"] * 3, ["a", "slow", "b"], [{}] * 3)
    finally:
        src.close()
    assert res.values[0] == 1.0 and math.isnan(res.values[1]) and math.isnan(res.values[2])
    assert res.errors == [(1, "timed out after 1 s"),
                          (2, "not retried: the row-by-row retry stopped at row 1 (timed out after 1 s)")]


def test_wrong_results_fail_every_row_with_what_was_returned(helper_module):
    for fn, message in (("too_short", "returned 1 values for 2 rows"),
                        ("words", "returned str 'good'; expected a list of 2 numbers")):
        src = make(helper_module, fn)
        try:
            res = src.score(["q", "q"], ["a", "b"], [{}, {}])
        finally:
            src.close()
        assert all(math.isnan(v) for v in res.values)
        assert [i for i, _ in res.errors] == [0, 1]
        assert message in res.errors[0][1]


def test_none_means_no_reward_without_an_error(helper_module):
    src = make(helper_module, "optional")
    try:
        res = src.score(["q", "q"], ["skip me", "score me"], [{}, {}])
    finally:
        src.close()
    assert math.isnan(res.values[0]) and res.values[1] == 2.0 and res.errors == []


@pytest.mark.parametrize("ref,message", [
    ("no_such_reward_module:f", r"module 'no_such_reward_module' not found; .*is the module on PYTHONPATH\?"),
    ("reward_helpers:missing", "'reward_helpers' has no attribute 'missing'"),
    ("reward_helpers:NOT_CALLABLE", "is a int, not a function"),
    ("reward_helpers", "must be an importable module:function"),
    ("__import__('os').system:x", "must be an importable module:function"),
])
def test_bad_references_are_config_errors(helper_module, ref, message):
    with pytest.raises(ConfigError, match=message):
        FunctionReward(ref)


def test_result_checks_and_columns():
    import numpy as np

    assert check_values(np.array([1, 2.5]), 2) == [1.0, 2.5]
    assert check_values((0, None), 2) == [0.0, None]
    with pytest.raises(BadResult, match="returned str 'x' among its values"):
        check_values([1.0, "x"], 2)
    with pytest.raises(BadResult, match="returned bool True among its values"):
        check_values([True], 1)
    assert batch_columns([{"answer": "1", "prompts": "x"}, {"id": 7}]) == {
        "answer": ["1", None], "id": [None, 7]}


SCRIPT = textwrap.dedent('''
    import os, signal
    from rlhfkit.rewards import FunctionReward

    src = FunctionReward("reward_helpers:length")  # no __main__ guard on purpose
    print(src.score(["q"], ["abc"], [{}]).values, src._proc.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
''')


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_script_without_main_guard_and_worker_exits_with_the_parent(helper_module, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    values, pid = out.stdout.split("]")
    assert values == "[3.0" and out.stderr == ""
    deadline = time.monotonic() + 10
    while _running(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(int(pid))

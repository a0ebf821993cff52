"""The generated word-problem set: deterministic, answers right, calculator-sized numbers."""

import re

from rlhfkit.envs.calculator import CalculatorEnv
from rlhfkit.tasks.word_problems import make_word_problems


def recompute(q: str) -> int:
    """The answer of a question from its own numbers, by the story's arithmetic."""
    n = [int(x) for x in re.findall(r"\d+", q)]
    if "warehouse" in q:
        return n[0] * n[1]
    if "notebooks" in q:
        return n[0] * n[1] + n[2]
    if "orchard" in q or "saves" in q:
        return n[0] * n[1] - n[2]
    if "truck" in q:
        return n[0] * n[1] + n[2] * n[3]
    assert "library" in q
    assert n[0] % n[1] == 0
    return n[0] // n[1]


def test_deterministic_distinct_and_correct():
    rows = make_word_problems(60, seed=5)
    assert rows == make_word_problems(60, seed=5) and rows != make_word_problems(60, seed=6)
    assert len({r["prompt"] for r in rows}) == 60
    for r in rows:
        assert int(r["answer"]) == recompute(r["prompt"]) > 0, r
        assert r["solution"].endswith(f"#### {r['answer']}")
        big = sorted(int(x) for x in re.findall(r"\d+", r["prompt"]))
        assert big[-1] >= 100 and (big[-2] >= 11 or "library" in r["prompt"])  # beyond mental arithmetic


def test_rows_work_in_the_calculator_env():
    env = CalculatorEnv()
    for r in make_word_problems(6, seed=0):
        env.reset(r)
        assert env.step([], f"The answer is {r['answer']}.").reward == 1.0
        env.reset({**r, "answer": r["solution"]})
        assert env.step([], f"#### {r['answer']}").reward == 1.0


def test_tool_demonstrations_are_the_episodes_token_for_token(tok):
    """An SFT conversation from tool_demonstrations, rendered by the SFT path, is token for token
    the episode CalculatorEnv runs when the policy writes those turns; its trainable tokens are
    exactly the episode's policy tokens."""
    from env_fakes import ScriptedEngine
    from rlhfkit.data.tokenize import Renderer
    from rlhfkit.envs.episodes import run_episodes
    from rlhfkit.rl.rollout import SamplingParams
    from rlhfkit.tasks.word_problems import tool_demonstrations

    rows = make_word_problems(4, seed=2)
    demos = tool_demonstrations(rows)
    assert [m["role"] for m in demos[3]["messages"]] == (["system", "user"] + ["assistant", "tool"] * 3
                                                         + ["assistant"])  # the truck: 3 steps
    r = Renderer(tok)
    for row, demo in zip(rows, demos):
        said = [m["content"] for m in demo["messages"] if m["role"] == "assistant"]
        tools = [m["content"] for m in demo["messages"] if m["role"] == "tool"]
        steps = row["solution"].split("\n####")[0].splitlines()
        assert tools == [st.split("=")[1].strip() for st in steps]  # the calculator agrees with each step
        eng = ScriptedEngine(tok, lambda p, c, i: said[c])
        [ep] = run_episodes(eng, tok, CalculatorEnv(), [row], SamplingParams(max_new_tokens=200))
        assert ep.reward == 1.0 and ep.finished and ep.turns == len(said) and ep.info["tool_calls"] == len(tools)
        prompt, rest, mask = r.multiturn(demo["messages"], 0)
        assert prompt == ep.prompt_ids and rest == ep.completion_ids and mask == ep.loss_mask

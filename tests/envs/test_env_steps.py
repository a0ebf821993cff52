"""Environment step logic with hand-written responses: calculator word problems, the guessing
game, the single-turn default, merged infos."""

import math
import os

import pytest

from conftest import SHARED_DATA
from rlhfkit.envs.base import SingleTurn, StepResult, merge_info
from rlhfkit.envs.calculator import CALCULATOR_SYSTEM, CalculatorEnv, final_answer
from rlhfkit.envs.game import GuessNumberEnv, make_games
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.rewards.verifiers import make_verifier
from rlhfkit.tasks.word_problems import load_gsm8k

ROW = {"prompt": "A warehouse stores 347 boxes of 29 screws. How many screws?", "answer": "10063"}
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 29"}}</tool_call>'


def test_calculator_env_tool_turn_then_answer():
    env = CalculatorEnv()
    msgs = env.reset(ROW)
    assert msgs == [{"role": "system", "content": CALCULATOR_SYSTEM}, {"role": "user", "content": ROW["prompt"]}]
    r = env.step(msgs, f"I will multiply. {CALL}")
    assert r.observation == [{"role": "tool", "name": "calculator", "content": "10063"}]
    assert (r.reward, r.done) == (0.0, False) and r.info["tool_calls"] == 1 and r.info["tool_errors"] == 0
    r = env.step(msgs, "347 * 29 = 10063. The answer is 10063.")
    assert r.observation is None and r.done and r.reward == 1.0
    assert r.info == {"tool_calls": 0, "tool_errors": 0, "correct": True, "answered": True}


@pytest.mark.parametrize("response, reward", [
    ("The answer is 10063.", 1.0),
    ("The answer is: $10,063", 1.0),
    ("Work: 347*29.\n#### 10063", 1.0),
    ("#### 10063.0", 1.0),
    ("\\boxed{10063}", 1.0),
    ("The answer is 10062.", 0.0),
    ("The answer is 10063. Wait, the answer is 9000.", 0.0),   # the last statement counts
    ("It is probably 10063", 0.0),                               # strict: no final-answer marker
    ("I don't know.", 0.0),
])
def test_calculator_env_answers(response, reward):
    env = CalculatorEnv()
    env.reset(ROW)
    r = env.step([], response)
    assert r.done and r.reward == reward and r.info["correct"] == (reward == 1.0)


def test_calculator_env_lenient_reads_the_last_number():
    env = CalculatorEnv(strict=False)
    env.reset(ROW)
    assert env.step([], "It is probably 10063").reward == 1.0
    assert final_answer("no number") is None


def test_calculator_env_tool_errors_count():
    env = CalculatorEnv()
    env.reset(ROW)
    r = env.step([], '<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>'
                     '<tool_call>{"name": "calculator"</tool_call>')
    assert not r.done and r.info["tool_calls"] == 2 and r.info["tool_errors"] == 2
    assert [m["content"] for m in r.observation][0] == "error: calculator: division by zero"
    assert "not valid JSON" in r.observation[1]["content"]


def test_calculator_env_gsm8k_solution_answers_and_bad_rows():
    env = CalculatorEnv()
    env.reset({"question": "q?", "answer": "He sells 9 * 2 = <<9*2=18>>18.\n#### 18"})
    assert env.step([], "The answer is 18.").reward == 1.0
    with pytest.raises(DataError, match="needs an 'answer' field"):
        env.reset({"prompt": "q?"})
    with pytest.raises(DataError, match="has no final '#### <number>'"):
        env.reset({"prompt": "q?", "answer": "#### soon"})
    with pytest.raises(DataError, match="needs a 'prompt'"):
        env.reset({"answer": "3"})


GSM8K = SHARED_DATA / "gsm8k"


@pytest.mark.skipif(not os.path.isdir(GSM8K), reason=f"shared data not found: {GSM8K}")
def test_calculator_env_on_real_gsm8k_rows():
    rows = load_gsm8k(str(GSM8K), "test", limit=5)
    assert len(rows) == 5 and rows[0]["prompt"].startswith("Janet")
    env = CalculatorEnv()
    for row in rows:
        gold = row["answer"].split("####")[-1].strip().replace(",", "")
        msgs = env.reset(row)
        assert msgs[-1] == {"role": "user", "content": row["prompt"]}
        assert env.step(msgs, f"The answer is {gold}.").reward == 1.0
        assert env.step(msgs, f"The answer is {int(gold) + 1}.").reward == 0.0
    assert env.step([], "The answer is 18.").reward == 0.0  # rows[-1] is not Janet's
    env.reset(rows[0])
    assert env.step([], "She makes 9 * 2 = 18 dollars. The answer is 18.").reward == 1.0


def test_gsm8k_loader_errors(tmp_path):
    with pytest.raises(DataError, match="GSM8K file not found"):
        load_gsm8k(str(tmp_path))
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"text": "x"}\n')
    with pytest.raises(DataError, match="row 1: not a GSM8K row"):
        load_gsm8k(str(tmp_path))
    assert load_gsm8k(str(tmp_path), limit=1) == [{"prompt": "q", "answer": "#### 1"}]


# --------------------------------------------------------------------------- the game

def test_guess_number_feedback_and_reward():
    env = GuessNumberEnv(max_turns=8)
    msgs = env.reset({"secret": 37})
    assert msgs[0]["role"] == "system" and "between 1 and 100" in msgs[1]["content"]
    r = env.step(msgs, "My first guess is 50.")
    assert r.observation == [{"role": "user", "content": "Lower."}] and r.reward == 0.0 and not r.done
    r = env.step(msgs, "25")
    assert r.observation == [{"role": "user", "content": "Higher."}] and not r.done
    r = env.step(msgs, "no idea")
    assert r.info["invalid"] == 1 and "one whole number between 1 and 100" in r.observation[0]["content"]
    r = env.step(msgs, "150")
    assert r.info["invalid"] == 1 and r.info["guesses"] == 0
    r = env.step(msgs, "Is it 37?")
    assert r.done and r.observation is None and r.reward == 1.0 and r.info["solved"]


def test_guess_number_shaping_pays_only_consistent_guesses():
    env = GuessNumberEnv(shaping=0.1)
    env.reset({"secret": 37, "low": 1, "high": 100})
    assert env.step([], "50").reward == pytest.approx(0.1)   # consistent with no feedback yet
    r = env.step([], "60")                                     # told "lower" than 50 already
    assert r.reward == 0.0 and r.info["inconsistent"] == 1
    assert env.step([], "20").reward == pytest.approx(0.1)    # inside [1, 49]
    assert env.step([], "37").reward == pytest.approx(1.1)


def test_guess_number_rows():
    games = make_games(20, seed=3, low=1, high=10)
    assert games == make_games(20, seed=3, low=1, high=10) and all(1 <= g["secret"] <= 10 for g in games)
    with pytest.raises(DataError, match="needs an integer 'secret' in \\[1, 100\\]"):
        GuessNumberEnv().reset({"secret": 0})
    with pytest.raises(DataError, match="secret"):
        GuessNumberEnv().reset({})


# --------------------------------------------------------------------------- single turn, infos

def test_single_turn_verifier_callable_and_source():
    row = {"prompt": "What is 9 * 2?", "answer": "#### 18"}
    env = SingleTurn("gsm8k")
    assert env.reset(row) == [{"role": "user", "content": "What is 9 * 2?"}] and env.max_turns == 1
    r = env.step([], "9 * 2 = 18")
    assert (r.observation, r.reward, r.done, r.info) == (None, 1.0, True, {"reward_errors": 0})
    assert env.step([], "17").reward == 0.0
    env = SingleTurn(lambda response, row: float(len(response)))
    env.reset(row)
    assert env.step([], "abc").reward == 3.0
    env = SingleTurn(make_verifier("gsm8k"), system_prompt="Be exact.")
    assert env.reset({"prompt": "q"})[0] == {"role": "system", "content": "Be exact."}
    r = env.step([], "18")  # the row has no answer: 0 and counted, no exception
    assert r.reward == 0.0 and r.info["reward_errors"] == 1 and "no 'answer' field" in r.info["reward_error"]
    with pytest.raises(ConfigError, match="unknown verifier"):
        SingleTurn("gsm9k")


def test_merge_info_sums_numbers_ors_booleans():
    total = {}
    merge_info(total, {"tool_calls": 1, "correct": False, "score": 0.5, "note": "a"})
    merge_info(total, {"tool_calls": 2, "correct": True, "score": 0.25, "note": "b"})
    merge_info(total, {"correct": False})
    assert total == {"tool_calls": 3, "correct": True, "score": 0.75, "note": "b"}
    assert not math.isnan(StepResult(None, 0.0, True).reward) and StepResult(None, 0.0, True).info == {}

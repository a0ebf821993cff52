"""load_environment: built-in names, user 'module:Class' environments, clear errors."""

import pytest

from rlhfkit.envs import CalculatorEnv, GuessNumberEnv, SingleTurn, load_environment
from rlhfkit.errors import ConfigError

USER_ENVS = '''
from rlhfkit.envs import StepResult

class EchoEnv:
    def __init__(self, max_turns=2, greeting="hi"):
        self.max_turns, self.greeting = max_turns, greeting
    def reset(self, row):
        return [{"role": "user", "content": self.greeting}]
    def step(self, messages, response):
        return StepResult(None, 1.0, True)

def make_echo(**kw):
    return EchoEnv(**kw)

class NoStep:
    max_turns = 1
    def reset(self, row):
        return []

class NoTurns:
    def reset(self, row):
        return []
    def step(self, messages, response):
        return None

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_envs(tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text(USER_ENVS)
    (tmp_path / "broken_envs.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtins():
    assert isinstance(load_environment("calculator", max_turns=2), CalculatorEnv)
    assert load_environment("calculator", max_turns=2).max_turns == 2
    assert isinstance(load_environment("guess_number"), GuessNumberEnv)
    assert isinstance(load_environment("single_turn", reward="arithmetic"), SingleTurn)


def test_user_class_and_factory(user_envs):
    env = load_environment("my_envs:EchoEnv", greeting="hello")
    assert env.reset({}) == [{"role": "user", "content": "hello"}] and env.max_turns == 2
    assert load_environment("my_envs:make_echo", max_turns=5).max_turns == 5


@pytest.mark.parametrize("spec, kwargs, why", [
    ("no_such_module_xyz:Env", {}, "environment 'no_such_module_xyz:Env': module 'no_such_module_xyz' not found"),
    ("my_envs:Missing", {}, "'my_envs' has no attribute 'Missing'"),
    ("my_envs:NOT_CALLABLE", {}, "is a int, not a class or factory"),
    ("broken_envs:Env", {}, "importing module 'broken_envs' raised RuntimeError: no GPU here"),
    ("my_envs:NoStep", {}, "without step(); an environment needs reset(row) -> messages and step("),
    ("my_envs:NoTurns", {}, "needs an integer max_turns >= 1, got None"),
    ("my_envs:EchoEnv", {"colour": "red"}, "cannot be built with ['colour']"),
    ("my_envs:EchoEnv", {"max_turns": 0}, "needs an integer max_turns >= 1, got 0"),
    ("calclator", {}, "unknown environment 'calclator' (did you mean 'calculator'?)"),
    ("my_envs:", {}, "must be an importable 'module:Class'"),
    ("", {}, "a built-in name"),
])
def test_errors(user_envs, spec, kwargs, why):
    with pytest.raises(ConfigError) as e:
        load_environment(spec, **kwargs)
    msg = str(e.value)
    assert why in msg, msg
    assert "reward function" not in msg and msg.startswith("env")

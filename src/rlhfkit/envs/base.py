"""The environment protocol of multi-turn online RL, the single-turn default, and user environments.

An environment runs one episode at a time. :meth:`Environment.reset` takes a data row and
returns the chat messages the episode starts from (system / user); after every policy turn
:meth:`Environment.step` gets the conversation so far and the policy's response (its text,
special tokens removed) and returns a :class:`StepResult`: the messages to append (a tool
result, the game's feedback as a user message), the reward of that step, whether the episode
is over, and counters for metrics. An environment may also have a ``tools`` attribute, a list
of :class:`~rlhfkit.envs.tools.Tool`, which the driver shows to the policy.

:func:`~rlhfkit.envs.episodes.run_episodes` gives every episode its own shallow copy of the
environment (``copy.copy``) before calling ``reset``, so per-episode state is kept by
*assigning* attributes in ``reset`` (``self.answer = ...``); a container created in
``__init__`` and mutated in ``step`` would be shared by all episodes (define ``__copy__`` to
control the copy).

User environments are named ``"package.module:Class"`` (or a factory function) and built by
:func:`load_environment`; the built-ins have short names (``ENVIRONMENTS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from ..errors import ConfigError, DataError


@dataclass
class StepResult:
    observation: list[dict] | None
    """Messages to append (e.g. ``{"role": "tool", ...}``); None = the episode ends."""
    reward: float
    """Added to the episode's reward."""
    done: bool
    info: dict = field(default_factory=dict)
    """Counters such as ``{"tool_calls": 1, "tool_errors": 0, "correct": True}``; numbers are
    summed over the episode's steps, booleans or-ed, other values keep the last one."""


@runtime_checkable
class Environment(Protocol):
    max_turns: int

    def reset(self, row: dict) -> list[dict]:
        ...

    def step(self, messages: list[dict], response: str) -> StepResult:
        ...


def merge_info(total: dict, info: dict) -> dict:
    """``total`` updated with one step's ``info``: booleans or-ed, numbers summed, the rest replaced."""
    for k, v in (info or {}).items():
        old = total.get(k)
        if isinstance(v, bool) and (old is None or isinstance(old, bool)):
            total[k] = bool(old) or v
        elif isinstance(v, (int, float)) and isinstance(old, (int, float)) and not isinstance(old, bool):
            total[k] = old + v
        else:
            total[k] = v
    return total


def messages_from_row(row: dict, system_prompt: str | None = None) -> list[dict]:
    """The starting messages of a row: its ``prompt`` (a string = one user message, or a message
    list) or its ``question`` (GSM8K), after ``system_prompt`` unless the prompt has a system message."""
    prompt = row.get("prompt", row.get("question"))
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise DataError("the row needs a 'prompt' (a string or a list of chat messages) or a "
                        f"'question'; it has fields {sorted(row)}", field="prompt")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def finite_reward(value: Any, where: str) -> float:
    """``value`` as a float; TrainingError for something that is not a finite number."""
    from ..rewards.base import RewardError

    try:
        r = float(value)
    except (TypeError, ValueError):
        raise RewardError(f"{where}: the reward must be a number, got {value!r}") from None
    if not math.isfinite(r):
        raise RewardError(f"{where}: the reward must be finite, got {r!r}; fix the environment's step")
    return r


class SingleTurn:
    """One policy turn scored by a reward, then done: the default environment.

    ``reward`` is a verifier name (``"gsm8k"``, ``"arithmetic"``, ``"format"``), a reward source
    (anything with ``score(prompts, completions, extras)``, :mod:`rlhfkit.rewards`), or a callable
    ``reward(response, row) -> float``. A row the reward cannot score gets 0 and counts in
    ``info["reward_errors"]`` (the message in ``info["reward_error"]``).
    """

    max_turns = 1

    def __init__(self, reward: str | Callable | Any = "gsm8k", system_prompt: str | None = None):
        if isinstance(reward, str):
            from ..rewards.verifiers import make_verifier

            try:
                reward = make_verifier(reward)
            except ValueError as e:
                raise ConfigError(f"SingleTurn reward: {e}") from None
        if not (hasattr(reward, "score") or callable(reward)):
            raise ConfigError(f"SingleTurn reward must be a verifier name, a reward source or a callable "
                              f"reward(response, row), got {type(reward).__name__}")
        self.reward, self.system_prompt, self.row = reward, system_prompt, {}

    def reset(self, row: dict) -> list[dict]:
        self.row = row
        return messages_from_row(row, self.system_prompt)

    def step(self, messages: list[dict], response: str) -> StepResult:
        error = ""
        if hasattr(self.reward, "score"):
            res = self.reward.score([self.row.get("prompt", messages)], [response], [dict(self.row)])
            value = float(res.values[0])
            error = "; ".join(msg for _, msg in res.errors)
        else:
            value = float(self.reward(response, self.row))
        if math.isnan(value):
            value, error = 0.0, error or "the reward returned nan"
        info = {"reward_errors": int(bool(error))}
        if error:
            info["reward_error"] = error
        return StepResult(None, value, True, info)


# --------------------------------------------------------------------------- user environments

ENV_HOW = "must be an importable 'module:Class' (or a factory function), e.g. 'my_envs:MazeEnv'"


def _builtin(name: str) -> Callable[..., Any]:
    if name == "single_turn":
        return SingleTurn
    if name == "calculator":
        from .calculator import CalculatorEnv

        return CalculatorEnv
    from .game import GuessNumberEnv

    return GuessNumberEnv


ENVIRONMENTS = ("single_turn", "calculator", "guess_number")
"""Built-in environments by short name."""


def import_environment(spec: str, where: str = "env") -> Callable[..., Any]:
    """The class or factory named by ``spec`` (a built-in name or ``module:Class``); the import
    is that of user reward functions (:func:`rlhfkit.rewards.functions.load_function`)."""
    from ..rewards.functions import _HOW, load_function

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{where}: an environment is a built-in name ({', '.join(ENVIRONMENTS)}) "
                          f"or a 'module:Class' string, got {spec!r}")
    spec = spec.strip()
    if spec in ENVIRONMENTS:
        return _builtin(spec)
    if ":" not in spec:
        from ..config import did_you_mean

        raise ConfigError(f"{where}: unknown environment '{spec}'{did_you_mean(spec, ENVIRONMENTS)}; use one "
                          f"of {', '.join(ENVIRONMENTS)} or a user environment that {ENV_HOW}")
    try:
        return load_function(spec, where)
    except ConfigError as e:
        raise ConfigError(str(e).replace("reward function", "environment").replace(_HOW, ENV_HOW)
                          .replace("not a function", "not a class or factory")) from None


def check_environment(env: Any, spec: str, where: str = "env") -> None:
    """ConfigError when ``env`` lacks a callable reset/step or a positive integer max_turns."""
    missing = [m for m in ("reset", "step") if not callable(getattr(env, m, None))]
    if missing:
        raise ConfigError(f"{where}: environment '{spec}' built a {type(env).__name__} without "
                          f"{' and '.join(m + '()' for m in missing)}; an environment needs "
                          "reset(row) -> messages and step(messages, response) -> StepResult")
    turns = getattr(env, "max_turns", None)
    if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
        raise ConfigError(f"{where}: environment '{spec}' needs an integer max_turns >= 1, got {turns!r}")


def load_environment(spec: str, **kwargs) -> Environment:
    """Build the environment ``spec`` (built-in name or ``module:Class``) with ``kwargs``."""
    where = "env"
    factory = import_environment(spec, where)
    try:
        env = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: environment '{spec}' cannot be built with {sorted(kwargs)}: {e}") from None
    check_environment(env, spec, where)
    return env

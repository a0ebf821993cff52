"""A multi-turn game with a verifiable outcome: guess the number, with higher/lower feedback.

The environment thinks of a whole number in ``[low, high]`` (the row's ``secret``); every policy
turn is a guess (the last whole number in the response). The feedback comes back as a *user*
message: ``Higher.``, ``Lower.``, or a request for a valid guess. Guessing the number ends the
episode with reward 1.0; running out of turns ends it (through the driver's turn limit) with 0.

Optional shaping (``shaping > 0``): each valid guess that is consistent with all earlier
feedback (inside the interval still possible) earns ``shaping``, so a policy is paid for using
the feedback even before it solves the game. Binary search solves ``[1, 100]`` within 7 guesses.
"""

from __future__ import annotations

import random
import re

from ..errors import DataError
from .base import StepResult

_INT = re.compile(r"-?\d+")


def make_games(n: int, seed: int, low: int = 1, high: int = 100) -> list[dict]:
    """``n`` rows ``{"secret": k, "low": low, "high": high}``, deterministic from ``seed``."""
    rng = random.Random(seed)
    return [{"secret": rng.randint(low, high), "low": low, "high": high} for _ in range(n)]


def last_integer(text: str) -> int | None:
    found = _INT.findall(text.replace(",", ""))
    return int(found[-1]) if found else None


class GuessNumberEnv:
    """Guess-the-number; rows hold ``secret`` (and optionally ``low`` / ``high``).

    Step info: ``guesses`` (valid guesses), ``invalid`` (turns without a usable guess),
    ``inconsistent`` (guesses outside the interval the feedback left), ``solved``.
    """

    def __init__(self, low: int = 1, high: int = 100, max_turns: int = 8, shaping: float = 0.0):
        self.low, self.high, self.max_turns, self.shaping = int(low), int(high), int(max_turns), float(shaping)

    def reset(self, row: dict) -> list[dict]:
        low, high = int(row.get("low", self.low)), int(row.get("high", self.high))
        secret = row.get("secret")
        if not isinstance(secret, int) or isinstance(secret, bool) or not low <= secret <= high:
            raise DataError(f"a guess-the-number row needs an integer 'secret' in [{low}, {high}], got "
                            f"{secret!r}; make rows with rlhfkit.envs.game.make_games", field="secret")
        self.secret, self.range = secret, (low, high)
        self.lo, self.hi = low, high  # the interval still possible after the feedback so far
        return [{"role": "system", "content": "You are playing a number guessing game."},
                {"role": "user", "content": f"I am thinking of a whole number between {low} and {high}. "
                 "Guess it: reply with your guess as a number. After each guess I will tell you whether "
                 f"my number is higher or lower. You have {self.max_turns} guesses."}]

    def step(self, messages: list[dict], response: str) -> StepResult:
        low, high = self.range
        guess = last_integer(response)
        info = {"guesses": 0, "invalid": 0, "inconsistent": 0, "solved": False}
        if guess is None or not low <= guess <= high:
            info["invalid"] = 1
            return StepResult([_user(f"Please reply with one whole number between {low} and {high}.")], 0.0, False, info)
        info["guesses"] = 1
        consistent = self.lo <= guess <= self.hi
        info["inconsistent"] = int(not consistent)
        reward = self.shaping if consistent else 0.0
        if guess == self.secret:
            info["solved"] = True
            return StepResult(None, reward + 1.0, True, info)
        if guess < self.secret:
            self.lo = max(self.lo, guess + 1)
            return StepResult([_user("Higher.")], reward, False, info)
        self.hi = min(self.hi, guess - 1)
        return StepResult([_user("Lower.")], reward, False, info)


def _user(text: str) -> dict:
    return {"role": "user", "content": text}

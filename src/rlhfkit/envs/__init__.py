"""Multi-turn environments and tool calling for online RL.

* :mod:`.base`: the :class:`Environment` protocol, :class:`StepResult`, :class:`SingleTurn`,
  :func:`load_environment` (built-in names or ``module:Class``);
* :mod:`.tools`: :class:`Tool`, the ``<tool_call>`` format, parsing and running calls;
* :mod:`.calculator`: the safe ``calculator`` tool and :class:`CalculatorEnv` (word problems);
* :mod:`.game`: :class:`GuessNumberEnv` (higher/lower feedback);
* :mod:`.episodes`: :func:`run_episodes`, the batched multi-turn driver with exact token accounting.

See docs/environments.md.
"""

from __future__ import annotations

from .base import ENVIRONMENTS, Environment, SingleTurn, StepResult, load_environment, merge_info
from .calculator import CALCULATOR, CalculatorEnv, calculate, evaluate
from .episodes import ChatRenderer, Episode, run_episodes
from .game import GuessNumberEnv, make_games
from .tools import Tool, ToolCall, ToolError, parse_tool_calls, run_tool_calls, tool

__all__ = ["ENVIRONMENTS", "CALCULATOR", "CalculatorEnv", "ChatRenderer", "Environment", "Episode",
           "GuessNumberEnv", "SingleTurn", "StepResult", "Tool", "ToolCall", "ToolError", "calculate",
           "evaluate", "load_environment", "make_games", "merge_info", "parse_tool_calls", "run_episodes",
           "run_tool_calls", "tool"]

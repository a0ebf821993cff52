"""Rewards for online RL: verifiers, user functions and reward models behind one interface.

``build_rewards(["gsm8k", "format*0.2"])`` gives a :class:`CombinedReward`; see
:mod:`rlhfkit.rewards.base`. Importing this package does not import torch, so function
reward workers start quickly; :class:`ModelReward` (torch, transformers) loads on first access.
"""

from .base import (CombinedReward, CombinedScores, RewardConfig, RewardResult, RewardSource,
                   build_rewards, parse_reward_list, reward_config_from)
from .functions import FunctionReward
from .verifiers import VerifierReward, make_verifier

__all__ = ["CombinedReward", "CombinedScores", "FunctionReward", "ModelReward", "RewardConfig",
           "RewardResult", "RewardSource", "VerifierReward", "build_rewards", "make_verifier",
           "parse_reward_list", "reward_config_from"]


def __getattr__(name: str):
    if name == "ModelReward":
        from .reward_model import ModelReward

        return ModelReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

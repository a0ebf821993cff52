"""Reward from trained reward models (``rlhfkit rm``), alone or as an ensemble.

With one model the reward is its score; with several it is ``mean - k * std`` of their
scores per row (population std), so ``k > 0`` penalises completions the models disagree on,
a guard against exploiting one model's errors. ``normalize`` standardises each model's score
with the mean/std stored at training time, which puts ensemble members on one scale.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import RewardResult
from .model import RewardModel


def prompt_style(examples, tokenizer) -> str:
    """'chat' when the examples' prompts end with the tokenizer's generation prompt (chat-
    templated), 'plain' otherwise ('mixed' when both occur): recorded with a trained reward
    model so that :meth:`RewardModel.score` can warn on prompts of the other style."""
    suffix: list[int] = []
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": "x"}]
        try:
            with_gen = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        except Exception:  # a template that cannot render a plain user turn
            with_gen = without = ""
        if with_gen.startswith(without) and len(with_gen) > len(without):
            suffix = tokenizer(with_gen[len(without):], add_special_tokens=False)["input_ids"]
    styles = {"chat" if suffix and list(ex.prompt[-len(suffix):]) == suffix else "plain" for ex in examples}
    return styles.pop() if len(styles) == 1 else ("mixed" if styles else "plain")


def ensemble_scores(scores: Sequence[Sequence[float]], k: float = 0.0) -> list[float]:
    """Per-row ``mean - k * std`` over models; ``scores`` is ``[model][row]``."""
    a = np.asarray(scores, dtype=np.float64)
    if a.shape[0] == 1:
        return a[0].tolist()
    return (a.mean(axis=0) - k * a.std(axis=0)).tolist()


class ModelReward:
    """A reward source scoring rows with one or more :class:`RewardModel`.

    Models are loaded on the CPU when the source is built; ``to(device)`` moves them.
    Errors while scoring (e.g. out of memory) propagate: they are not per-row failures.
    """

    def __init__(self, paths: Sequence[str] | str, *, name: str = "rm", normalize: bool = True,
                 ensemble_k: float = 0.0, batch_size: int = 8, models: Sequence[RewardModel] = ()):
        paths = [paths] if isinstance(paths, str) else list(paths)
        self.name, self.paths = name, paths
        self.normalize, self.ensemble_k, self.batch_size = normalize, float(ensemble_k), batch_size
        self.models = list(models) or [RewardModel.load(p) for p in paths]

    def to(self, device) -> "ModelReward":
        for m in self.models:
            m.model.to(device)
        return self

    def score(self, prompts: list, completions: list[str], extras: list[dict]) -> RewardResult:
        if not completions:
            return RewardResult(values=[], errors=[])
        per_model = [m.score(list(prompts), list(completions), normalize=self.normalize,
                             batch_size=self.batch_size) for m in self.models]
        return RewardResult(values=ensemble_scores(per_model, self.ensemble_k), errors=[])

    def close(self) -> None:
        """Drop the models (frees their memory once nothing else holds them)."""
        self.models = []

"""Reward shaping and group filtering of DAPO-style online RL: the soft overlong punishment,
the dynamic-sampling filter and the group / batch / no scaling of group-centred scores.

Shapes: ``scores`` (N,) prompt-major (the G samples of prompt i are rows i·G … i·G+G−1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import check_choice, check_range
from ..errors import ConfigError
from .advantages import group_normalize

SCORE_SCALES = ("group", "batch", "none")


def overlong_penalty(lengths: Tensor, max_len: int, cache_len: int, penalty: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment, added to the score of each completion (Yu et al. 2025).

    With L = max_len − cache_len: 0 for len ≤ L; −penalty·(len − L)/cache_len for
    L < len ≤ max_len (a linear ramp to −penalty over the last ``cache_len`` tokens);
    −penalty for len > max_len. Needs 0 < cache_len < max_len and penalty ≥ 0.

    See docs/algorithms.md#overlong-penalty.
    """
    check_range("max_len (overlong_penalty)", max_len, lo=1)
    check_range("cache_len (overlong_penalty)", cache_len, lo=0, hi=max_len, lo_open=True, hi_open=True)
    check_range("penalty (overlong_penalty)", penalty, lo=0)
    dtype = lengths.dtype if lengths.is_floating_point() else torch.get_default_dtype()
    n = lengths.to(dtype)
    start = max_len - cache_len
    ramp = -penalty * (n - start) / cache_len
    out = torch.where(n > start, ramp, torch.zeros_like(n))
    return torch.where(n > max_len, torch.full_like(n, -penalty), out)


def _groups(scores: Tensor, group_size: int) -> Tensor:
    if not isinstance(group_size, int) or group_size < 1 or scores.numel() % group_size:
        raise ConfigError(f"group_size must be an integer >= 1 that divides the {scores.numel()} scores "
                          f"(the samples per prompt, rollout.num_generations); got {group_size!r}")
    return scores.view(-1, group_size)


def groups_with_spread(scores: Tensor, group_size: int) -> Tensor:
    """Bool (P,): the groups whose rewards are not all equal, the ones DAPO's dynamic sampling
    keeps (a group of equal rewards has zero advantage everywhere and no gradient).

    See docs/algorithms.md#dynamic-sampling.
    """
    g = _groups(scores, group_size)
    return g.amax(dim=1) > g.amin(dim=1)


def normalize_group_scores(scores: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """A_i = r_i − mean of its group, divided by (std + 1e-4) where std is that of its group
    (``'group'``: GRPO), of the centred values of the whole batch (``'batch'``), or not divided
    (``'none'``: Dr.GRPO). Both stds are the unbiased sample std (n − 1), as the grpo and
    reinforce_baseline estimators use, so ``'group'`` equals the grpo estimator exactly and
    ``'batch'`` equals reinforce_baseline.

    See docs/algorithms.md#score-scaling.
    """
    check_choice("scale (normalize_group_scores)", scale, SCORE_SCALES)
    _groups(scores, group_size)
    if scale != "batch":
        return group_normalize(scores, group_size, scale=scale == "group", eps=1e-4)
    centred = group_normalize(scores, group_size, scale=False)
    std = centred.std() if centred.numel() > 1 else centred.new_tensor(0.0)
    return centred / (std + 1e-4)

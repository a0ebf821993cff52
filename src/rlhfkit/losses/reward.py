"""Reward-model losses: Bradley-Terry on pairs and on all pairs of K-ranked lists."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | float = 0.0,
                       center_coef: float = 0.0) -> tuple[Tensor, dict]:
    """L = -log sigmoid(r(x, y_w) - r(x, y_l) - m) + c·(r_w + r_l)², per pair
    (docs/algorithms.md#bradley-terry).

    chosen, rejected: (N,) scalar rewards; margin: scalar or (N,) required gap m;
    center_coef c: reward centring (Eisenstein et al. 2023), which pulls each pair's reward
    sum to zero without touching its difference r_w - r_l (a penalty on r_w² + r_l² would
    also shrink the margin the Bradley-Terry term widens).
    Returns ``(loss (N,), metrics)`` with accuracy (r_w > r_l) and mean margin r_w - r_l.
    """
    diff = chosen - rejected
    loss = -F.logsigmoid(diff - margin)
    if center_coef:
        loss = loss + center_coef * (chosen + rejected) ** 2
    d = diff.detach()
    if d.numel() == 0:  # no ordered pair (all ties): metrics are zero-weighted, not NaN
        return loss, {"accuracy": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0}
    return loss, {
        "accuracy": float((d > 0).float().mean()),
        "margin": float(d.mean()),
        "chosen": float(chosen.detach().mean()),
        "rejected": float(rejected.detach().mean()),
    }


def ranked_pairs(scores: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """All ordered pairs (e, i, j) with scores[e, i] > scores[e, j] (i preferred).

    scores: (E, K) label scores (higher = better); valid: (E, K) bool for lists shorter than K.
    Returns index tensors (e, i, j), each of length P = number of strictly ordered pairs.
    """
    better = scores[:, :, None] > scores[:, None, :]           # (E, K, K)
    if valid is not None:
        better &= valid[:, :, None] & valid[:, None, :]
    return better.nonzero(as_tuple=True)


def listwise_bt_loss(rewards: Tensor, scores: Tensor, valid: Tensor | None = None,
                     margin: Tensor | float = 0.0, center_coef: float = 0.0) -> tuple[Tensor, dict]:
    """InstructGPT K-ranked loss: Bradley-Terry on all C(K, 2) ordered pairs of each list.

    rewards: (E, K) model rewards, one forward per response; scores: (E, K) labels.
    Ties give no pair. Returns ``(loss per pair (P,), metrics)``; the caller averages over
    the pairs of the step (each list weighs by its number of pairs, as in InstructGPT's
    1/C(K,2) per prompt when every list has K responses). ``margin``: a scalar, or (E,) one per
    list, required of each of its pairs (a pair row's ``margin`` column). ``center_coef`` adds
    the centring term of :func:`bradley_terry_loss` to each pair.

    See docs/algorithms.md#bradley-terry.
    """
    e, i, j = ranked_pairs(scores, valid)
    if isinstance(margin, Tensor) and margin.dim() == 1:
        margin = margin.to(rewards.device, rewards.dtype)[e]   # (P,): each pair its list's margin
    return bradley_terry_loss(rewards[e, i], rewards[e, j], margin, center_coef)

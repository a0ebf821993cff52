"""General preference models and Nash-learning targets, as pure functions of tensors.

A preference model reads one sequence presenting (x, A, B) and returns a logit s(x, A, B);
both orders go through the model, and

    P(A ≻ B | x) = σ((s(x, A, B) − s(x, B, A)) / 2)

is antisymmetric by construction: P(A ≻ B) + P(B ≻ A) = 1 exactly, and P(A ≻ A) = ½
(docs/algorithms.md#preference-model). From a table P[i, j] = P(y_i ≻ y_j) of K responses to one
prompt, SPPO regresses log-ratios on η(P̂(y_i ≻ π) − ½) (docs/algorithms.md#sppo) and DNO
contrasts the response of highest win-rate with the lowest (docs/algorithms.md#dno).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor


def preference_logit(s_ab: Tensor, s_ba: Tensor) -> Tensor:
    """d = (s(x, A, B) − s(x, B, A)) / 2, so that P(A ≻ B) = σ(d) and P(B ≻ A) = σ(−d).
    See docs/algorithms.md#preference-model."""
    return (s_ab - s_ba) / 2


def preference_bce_loss(s_ab: Tensor, s_ba: Tensor, label: Tensor | float = 1.0) -> tuple[Tensor, dict]:
    """Binary cross-entropy of the antisymmetric preference probability, per pair:
    L = −y log σ(d) − (1 − y) log σ(−d), d = (s_ab − s_ba)/2, y = P(A ≻ B) of the label (1 when A
    is the chosen response; soft labels in [0, 1] allowed). See docs/algorithms.md#preference-model.

    s_ab, s_ba: (N,) logits of the two presentations. Returns ``(loss (N,), metrics)`` with
    ``accuracy`` (d on the side of the label, d = 0 counts ½; labels of ½ are left out),
    ``prob`` (mean σ(d)) and ``margin`` (mean d).
    """
    d = preference_logit(s_ab, s_ba)
    y = torch.as_tensor(label, dtype=d.dtype, device=d.device).expand_as(d)
    loss = -(y * F.logsigmoid(d) + (1 - y) * F.logsigmoid(-d))
    dd, yy = d.detach(), y.detach()
    decided = yy != 0.5
    if dd.numel() == 0:
        return loss, {"accuracy": 0.0, "prob": 0.0, "margin": 0.0}
    right = torch.where(dd == 0, torch.full_like(dd, 0.5), ((dd > 0) == (yy > 0.5)).to(dd.dtype))
    acc = float(right[decided].mean()) if decided.any() else 0.0
    return loss, {"accuracy": acc, "prob": float(torch.sigmoid(dd).mean()), "margin": float(dd.mean())}


def win_rates(P: Tensor) -> Tensor:
    """P̂(y_i ≻ π) = (1/(K − 1)) Σ_{j ≠ i} P[i, j] for each response of a (..., K, K) table
    (K ≥ 2; the diagonal is not read). Returns (..., K). See docs/algorithms.md#nash-learning-general-preferences."""
    K = P.shape[-1]
    if K < 2:
        raise ValueError("win_rates needs at least two responses per prompt")
    off = 1.0 - torch.eye(K, dtype=P.dtype, device=P.device)
    return (P * off).sum(-1) / (K - 1)


def sppo_targets(win: Tensor, eta: float) -> Tensor:
    """SPPO's regression target η(P̂(y ≻ π_t) − ½) for each response. See docs/algorithms.md#sppo."""
    return eta * (win - 0.5)


def dno_pairs(win: Tensor, threshold: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """DNO's pair of each prompt from its (P, K) win-rates: best = argmax, worst = argmin (the
    first index on ties), kept when win[best] − win[worst] > threshold.
    Returns (best (P,), worst (P,), keep (P,) bool). See docs/algorithms.md#dno."""
    best, worst = win.argmax(-1), win.argmin(-1)
    gap = win.gather(-1, best[..., None])[..., 0] - win.gather(-1, worst[..., None])[..., 0]
    return best, worst, (gap > threshold) & (best != worst)


def is_cycle(P: Tensor) -> Tensor:
    """(..., 3, 3) tables of three responses -> (...,) bool: the pairwise majority preferences
    (i beats j when P[i, j] > ½; ½ is no preference) form a cycle a ≻ b ≻ c ≻ a (either way
    round), i.e. each response beats exactly one other. See docs/algorithms.md#preference-model."""
    beats = (P > 0.5) & ~torch.eye(3, dtype=torch.bool, device=P.device)
    wins = beats.sum(-1)
    return (wins == 1).all(-1)


def intransitivity_rate(P: Tensor) -> float:
    """Fraction of the triples of responses whose majority preferences form a cycle
    (docs/algorithms.md#preference-model). ``P``: (T, K, K) tables, P[t, i, j] = P(y_i ≻ y_j),
    K ≥ 3; every one of the C(K, 3) triples of every table counts once. 0.0 with no triple.
    See docs/algorithms.md#preference-model."""
    if P.dim() == 2:
        P = P[None]
    K = P.shape[-1]
    triples = list(itertools.combinations(range(K), 3))
    if not triples or P.shape[0] == 0:
        return 0.0
    idx = torch.tensor(triples, device=P.device)                       # (C, 3)
    sub = P[:, idx[:, :, None], idx[:, None, :]]                       # (T, C, 3, 3)
    return float(is_cycle(sub).to(torch.float64).mean())

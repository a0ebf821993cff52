"""Listwise preference losses on K ranked completions of one prompt (DPO with K > 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reward import ranked_pairs


def _mean(x: Tensor) -> float:
    return float(x.detach().to(torch.float64).mean()) if x.numel() else 0.0


def _order(key: Tensor, valid: Tensor) -> Tensor:
    """(E, K) indices sorting each row by ``key`` descending, invalid entries last.

    The sort is stable, so ties keep their input order.
    """
    key = key.masked_fill(~valid, float("-inf"))
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def plackett_luce_loss(policy: Tensor, ref: Tensor, scores: Tensor, valid: Tensor | None = None,
                       *, beta: float = 0.1, lipo_lambda: bool = False) -> tuple[Tensor, dict]:
    """Plackett-Luce DPO (Rafailov et al. 2023, App. A.3) or LiPO-λ (Liu et al. 2024).

    policy, ref: (E, K) sequence sums of completion-token log-probs of K completions per
    prompt; scores: (E, K) labels, higher = better; valid: (E, K) bool for lists shorter than
    K (default: all valid). With r = β(policy - ref) and each list sorted by score
    (y_1 ≻ … ≻ y_L, L valid entries; ties keep their input order):

        Plackett-Luce:  loss_e = -Σ_k [r_k - log Σ_{j≥k} exp(r_j)]

    (K = 2 is exactly DPO's -log σ(r_1 - r_2)); the inner sums are a reversed logcumsumexp.

        LiPO-λ (``lipo_lambda=True``):  loss_e = Σ_{i,j: s_i > s_j} Δ_ij · (-log σ(r_i - r_j))
        Δ_ij = |G_i - G_j| · |1/D(τ_i) - 1/D(τ_j)|,  G = 2^s - 1,  D(τ) = log2(1 + τ)

    with τ the 1-based rank of each completion under the model's current rewards r
    (detached; ties broken by input order), i.e. the LambdaRank ΔNDCG weight: pairs whose
    swap would change the NDCG most weigh most. Ties in score give no pair.

    Returns ``(loss per list (E,), metrics)``: ``rewards/chosen`` (mean r of each list's
    best), ``rewards/rejected`` (of its worst valid entry), and over all strictly ordered
    pairs ``rewards/accuracy`` (r_i > r_j) and ``rewards/margin`` (mean r_i - r_j).

    See docs/algorithms.md#plackett-luce.
    """
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    valid = valid.to(torch.bool)
    r = beta * (policy - ref)                                     # (E, K)
    order = _order(scores, valid)                                 # (E, K) valid first, best first
    if lipo_lambda:
        loss = _lipo_lambda(r, scores, valid)
    else:
        r_s, v_s = r.gather(1, order), valid.gather(1, order)     # (E, K) sorted
        # invalid entries get a finite -huge value, not -inf: exp() is then exactly 0 and the
        # logcumsumexp backward stays finite (-inf - -inf would be NaN)
        r_in = r_s.masked_fill(~v_s, torch.finfo(r.dtype).min / 4)
        tail = torch.logcumsumexp(r_in.flip(1), dim=1).flip(1)   # (E, K) log Σ_{j≥k} exp(r_j)
        loss = -torch.where(v_s, r_s - tail, torch.zeros_like(r_s)).sum(1)

    rd = r.detach()
    e, i, j = ranked_pairs(scores, valid)
    d = rd[e, i] - rd[e, j]                                       # (P,) over ordered pairs
    n_valid = valid.sum(1)
    has = n_valid > 0
    best = rd.gather(1, order[:, :1]).squeeze(1)[has]
    worst = rd.gather(1, order.gather(1, (n_valid - 1).clamp(min=0)[:, None])).squeeze(1)[has]
    return loss, {
        "rewards/chosen": _mean(best),
        "rewards/rejected": _mean(worst),
        "rewards/accuracy": _mean((d > 0).float()),
        "rewards/margin": _mean(d),
    }


def _lipo_lambda(r: Tensor, scores: Tensor, valid: Tensor) -> Tensor:
    """LiPO-λ per-list loss (E,); see :func:`plackett_luce_loss`. See docs/algorithms.md#lipo."""
    E, K = r.shape
    # τ: 1-based position of each entry when its list is sorted by current reward (no grad)
    order = _order(r.detach(), valid)
    pos = torch.arange(1, K + 1, device=r.device).expand(E, K)
    tau = torch.empty_like(order).scatter_(1, order, pos).to(r.dtype)     # (E, K)
    inv_discount = 1.0 / torch.log2(1.0 + tau)                            # 1/D(τ)
    gain = torch.pow(2.0, scores.to(r.dtype)) - 1.0                       # G = 2^s - 1
    e, i, j = ranked_pairs(scores, valid)                                 # s_i > s_j
    w = (gain[e, i] - gain[e, j]).abs() * (inv_discount[e, i] - inv_discount[e, j]).abs()
    pair_loss = w * -F.logsigmoid(r[e, i] - r[e, j])                      # (P,)
    return torch.zeros(E, dtype=r.dtype, device=r.device).index_add(0, e, pair_loss)

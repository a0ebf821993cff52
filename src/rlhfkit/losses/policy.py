"""Policy-gradient objectives on per-token tensors: the clipped surrogate, the clipped value
loss and the loss aggregations of PPO / GRPO / Dr.GRPO / DAPO.

All functions take flat per-token tensors (one entry per completion token of the batch)
and return per-token values; the caller aggregates with :func:`aggregate`.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_AGGREGATIONS = ("grpo", "dr_grpo", "dapo")


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, *, eps_low: float = 0.2,
                      eps_high: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped objective, per token: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A).

    Returns ``(loss, ratio, clipped)`` where ``clipped`` marks tokens whose gradient the
    clip removed (the clipped branch was the smaller one and ρ was outside the range).
    ``eps_high > eps_low`` is DAPO's clip-higher.

    See docs/algorithms.md#clipped-surrogate.
    """
    ratio = torch.exp((logp - old_logp).clamp(max=20.0))  # a runaway ratio stays finite
    unclipped = ratio * advantages
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    clipped_obj = clipped_ratio * advantages
    loss = -torch.minimum(unclipped, clipped_obj)
    clipped = (clipped_obj < unclipped) & (clipped_ratio != ratio)
    return loss, ratio.detach(), clipped.detach()


def sequence_clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                               seq: Tensor, num_seqs: int, *, eps_low: float = 0.2,
                               eps_high: float = 0.2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The clipped objective with the whole completion as one action, per sequence
    (docs/algorithms.md#importance-level): −min(ρ_s A_s, clip(ρ_s, 1−ε_low, 1+ε_high) A_s),
    ρ_s = exp(Σ_t (log π − log π_old)) over the sequence's masked tokens.

    ``advantages`` are per token (a sequence-level estimator broadcasts one value over the
    sequence; its masked token mean is taken as A_s). Returns ``(loss, ratio, clipped, live)``,
    each (num_seqs,); ``live`` marks sequences with at least one masked token (the others
    carry loss 0).
    """
    m = mask.to(logp.dtype)
    log_ratio = logp.new_zeros(num_seqs).index_add(0, seq, (logp - old_logp) * m)
    n = m.new_zeros(num_seqs).index_add(0, seq, m)
    adv = m.new_zeros(num_seqs).index_add(0, seq, advantages * m) / n.clamp(min=1)
    live = n > 0
    ratio = torch.exp(log_ratio.clamp(max=20.0))
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(ratio * adv, clipped_ratio * adv) * live
    clipped = (clipped_ratio * adv < ratio * adv) & (clipped_ratio != ratio)
    return loss, ratio.detach(), (clipped & live).detach(), live


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor,
                       clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """½·max((V − R)², (clip(V, V_old − c, V_old + c) − R)²) per token, and a mask of the
    tokens where the clipped term was the larger one. ``clip <= 0`` disables clipping.

    See docs/algorithms.md#value-loss.
    """
    unclipped = (values - returns) ** 2
    if clip <= 0:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (v_clip - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).detach()


def aggregate(token_loss: Tensor, mask: Tensor, seq: Tensor, num_seqs: int, mode: str,
              max_tokens: int = 1) -> tuple[Tensor, float]:
    """Sum of ``token_loss`` in the unit the loop normalises by, and that unit's count.

    The training loop divides the sum by the total count of the optimizer step, so:

    * ``grpo``    — mean over sequences of each sequence's token mean; count = sequences;
    * ``dr_grpo`` — token sum divided by the constant ``max_tokens`` (max new tokens), mean
      over sequences; count = sequences (no length bias);
    * ``dapo``    — mean over every token of the step; count = tokens.

    See docs/algorithms.md#loss-aggregation.
    """
    masked = torch.where(mask > 0, token_loss, torch.zeros_like(token_loss)) * mask
    if mode == "grpo":
        per_seq = masked.new_zeros(num_seqs).index_add(0, seq, masked)
        n = mask.new_zeros(num_seqs).index_add(0, seq, mask)
        live = n > 0
        return (per_seq[live] / n[live]).sum(), float(live.sum())
    if mode == "dr_grpo":
        n = mask.new_zeros(num_seqs).index_add(0, seq, mask)
        return masked.sum() / float(max_tokens), float((n > 0).sum())
    if mode == "dapo":
        return masked.sum(), float(mask.sum())
    raise ValueError(f"unknown loss aggregation '{mode}'; use one of {LOSS_AGGREGATIONS}")

"""Sampler ≠ trainer correction: importance weights for rollouts whose sampler (vLLM, a lean
decoder, another precision) computes slightly different log-probs than the trainer.

The policy loss treats the rollouts as drawn from π_old as the trainer computes it; they were
drawn from the sampler's π_sampler. Weighting each token's loss by w = π_old/π_sampler (capped,
since it is an importance weight of unbounded variance) corrects the mismatch: truncated
importance sampling (TIS) caps w, masked importance sampling (MIS) drops the tokens or
sequences whose w passes the cap. See docs/algorithms.md#rollout-correction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import check_choice, check_range

MISMATCH_MODES = ("none", "tis", "mis")
MISMATCH_LEVELS = ("token", "sequence")


def mismatch_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, seq: Tensor, num_seqs: int, *,
                     mode: str = "tis", level: str = "token",
                     cap: float = 2.0) -> tuple[Tensor, dict[str, float]]:
    """Per-token weights (detached, 0 outside ``mask``) that correct for the sampler.

    Δ_t = old_logp_t − sampler_logp_t. ``level='token'``: w_t = exp(Δ_t); ``'sequence'``:
    w_s = exp(Σ_t Δ_t) over the sequence's masked tokens, broadcast to its tokens. ``mode='tis'``:
    w ← min(w, cap); ``'mis'``: w ← w where w ≤ cap, else 0; ``'none'``: w = 1 (the metrics
    are still computed). ``cap`` ≥ 1.

    Metrics: ``mismatch/abs_logp_diff`` (mean |Δ| over masked tokens), ``mismatch/capped_frac``
    (fraction of masked tokens — of live sequences at sequence level — whose weight was capped
    or masked), ``mismatch/weight_mean`` (mean weight over masked tokens),
    ``mismatch/seq_log_ratio_max`` (max |Σ_t Δ_t| over sequences).

    See docs/algorithms.md#rollout-correction.
    """
    check_choice("mismatch mode", mode, MISMATCH_MODES)
    check_choice("mismatch level", level, MISMATCH_LEVELS)
    check_range("mismatch cap", cap, lo=1)
    keep = mask > 0
    delta = torch.where(keep, old_logp.detach() - sampler_logp.detach(), torch.zeros_like(old_logp))
    seq_log = delta.new_zeros(num_seqs).index_add(0, seq, delta)
    live = mask.new_zeros(num_seqs).index_add(0, seq, keep.to(mask.dtype)) > 0
    raw = torch.exp(delta if level == "token" else seq_log[seq])  # may be inf; never multiplied by 0
    over = (raw > cap) & keep
    if mode == "none":
        w = torch.ones_like(raw)
    elif mode == "tis":
        w = raw.clamp(max=cap)
    else:
        w = torch.where(over, torch.zeros_like(raw), raw)
    w = torch.where(keep, w, torch.zeros_like(w))
    n_tok, n_seq = int(keep.sum()), int(live.sum())
    if mode == "none":
        capped = 0.0
    elif level == "token":
        capped = float(over.sum()) / max(n_tok, 1)
    else:
        capped = float(((torch.exp(seq_log) > cap) & live).sum()) / max(n_seq, 1)
    metrics = {"mismatch/abs_logp_diff": float(delta.abs().sum()) / max(n_tok, 1),
               "mismatch/capped_frac": capped,
               "mismatch/weight_mean": float(w.sum()) / max(n_tok, 1),
               "mismatch/seq_log_ratio_max": float(seq_log[live].abs().max()) if n_seq else 0.0}
    return w, metrics

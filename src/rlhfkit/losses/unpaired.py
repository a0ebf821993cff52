"""Unpaired preference losses: KTO on single completions labelled desirable / undesirable."""

from __future__ import annotations

import torch
from torch import Tensor


def _mean(x: Tensor) -> float:
    return float(x.detach().to(torch.float64).mean()) if x.numel() else 0.0


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, kl_policy_logps: Tensor,
             kl_ref_logps: Tensor, *, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[Tensor, dict]:
    """KTO (Ethayarajh et al. 2024, eq. 8), per example.

    policy_logps, ref_logps: (N,) sequence sums of completion-token log-probs; labels: (N,)
    bool, True = desirable. kl_policy_logps, kl_ref_logps: (M,) the same sums for MISMATCHED
    (prompt, completion) pairs of the batch (completion i paired with prompt i+1), whose
    mean log-ratio estimates KL(π_θ ‖ π_ref):

        z₀ = sg[max(0, mean(kl_policy - kl_ref))]            (sg = stop-gradient)
        h  = policy - ref
        desirable:   λ_D · (1 - σ(β(h - z₀)))
        undesirable: λ_U · (1 - σ(β(z₀ - h)))

    z₀ is detached as in the paper: it only shifts the reference point, no gradient flows
    into the KL inputs. An empty KL batch gives z₀ = 0. Returns ``(loss (N,), metrics)`` with
    ``kl`` (z₀), ``rewards/chosen`` / ``rewards/rejected`` (mean βh over desirable /
    undesirable examples, 0.0 when there are none), ``rewards/margin`` (their difference,
    0.0 unless both kinds are present), ``logps/chosen``, ``logps/rejected`` and the counts
    ``count/chosen``, ``count/rejected``. The caller averages the loss over the examples of
    the step (TRL: mean over the concatenated desirable and undesirable losses).

    See docs/algorithms.md#kto.
    """
    labels = labels.to(torch.bool)
    kl = (kl_policy_logps - kl_ref_logps).detach()
    z0 = kl.mean().clamp(min=0) if kl.numel() else kl.new_zeros(())
    h = policy_logps - ref_logps
    loss = torch.where(labels,
                       desirable_weight * (1 - torch.sigmoid(beta * (h - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - h))))

    r = beta * h.detach()
    r_w, r_l = r[labels], r[~labels]
    both = r_w.numel() > 0 and r_l.numel() > 0
    return loss, {
        "kl": float(z0),
        "rewards/chosen": _mean(r_w),
        "rewards/rejected": _mean(r_l),
        "rewards/margin": _mean(r_w) - _mean(r_l) if both else 0.0,
        "logps/chosen": _mean(policy_logps[labels]),
        "logps/rejected": _mean(policy_logps[~labels]),
        "count/chosen": float(r_w.numel()),
        "count/rejected": float(r_l.numel()),
    }

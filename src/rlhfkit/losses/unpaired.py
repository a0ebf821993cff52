"""Single-trajectory losses: one completion per prompt with its own feedback.

Registered by name in :data:`UNPAIRED_LOSSES` (``@register_unpaired_loss("dro")``):

    kto   thumbs up / down, KL reference point from mismatched pairs   Ethayarajh et al. 2024
    dro   scalar reward, learned value baseline V(x), squared loss     Richemond et al. 2024

Each returns ``(per_example_loss (N,), metrics)``; the recipe sums and the loop averages over
the examples of the optimizer step.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

UNPAIRED_LOSSES: dict[str, Callable[..., tuple[Tensor, dict]]] = {}


def register_unpaired_loss(name: str):
    """Decorator adding a single-trajectory loss to :data:`UNPAIRED_LOSSES`."""
    def deco(fn):
        if name in UNPAIRED_LOSSES:
            raise ValueError(f"unpaired loss '{name}' is already registered")
        UNPAIRED_LOSSES[name] = fn
        return fn
    return deco


def get_unpaired_loss(name: str):
    """The registered loss called ``name``; an unknown name is a ConfigError listing them all."""
    from ..errors import registry_get

    return registry_get(UNPAIRED_LOSSES, name, "unpaired loss")


def _mean(x: Tensor) -> float:
    return float(x.detach().to(torch.float64).mean()) if x.numel() else 0.0


@register_unpaired_loss("kto")
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


@register_unpaired_loss("dro")
def dro_loss(policy_logps: Tensor, ref_logps: Tensor, values: Tensor, rewards: Tensor, *,
             tau: float = 1.0, rescale_policy: bool = True) -> tuple[Tensor, dict]:
    """DRO (Richemond et al. 2024, eq. 4), per example: the squared residual of the KL-regularised
    optimality condition r(x, y) − V(x) = τ·log π(y|x)/π_ref(y|x).

    policy_logps, ref_logps: (N,) sequence SUMS of completion-token log-probs (no length
    normalisation, as in the paper); values: (N,) V_φ(x) of each example's prompt; rewards: (N,)
    scalar rewards r(x, y) (thumbs up/down mapped to numbers, or any real score).

        h = policy − ref,   t = r − V − τ·h,   loss = ½ t²

    The value of the loss is the paper's ½ t². Its gradients are the paper's DRO-V updates:

        ∂/∂V = −t                                                         (eq. 7)
        ∂/∂h = −c·τ·t = −c·τ·(r − V) + c·τ²·h                            (eq. 8)

    with c = 1/τ when ``rescale_policy`` (Algorithm 1: "we rescale the policy gradient by
    1/τ", so ∂/∂h = −(r − V) + τ·h) and c = 1 otherwise (the exact gradient of ½ t²). V and h
    are separate parameters, so each gradient is that of ½ t² alone; the rescaling only scales
    the part of the gradient that reaches the policy log-probs (the reference log-probs and the
    rewards are data). Returns ``(loss (N,), metrics)``: ``residual`` (mean t), ``value``
    (mean V), ``reward`` (mean r), ``logratio`` (mean h), ``rewards/implicit`` (mean τh), and
    ``value/explained_variance`` (1 − Var(r − τh − V) / Var(r − τh), 0.0 when undefined).

    See docs/algorithms.md#dro.
    """
    h = policy_logps - ref_logps
    if rescale_policy:  # forward value h, backward (1/τ)·∂h: the DRO-V policy-gradient scaling
        h = h.detach() + (h - h.detach()) / tau
    t = rewards.to(h.dtype) - values.to(h.dtype) - tau * h
    loss = 0.5 * t.square()

    hd = (policy_logps - ref_logps).detach().to(torch.float64)
    target = rewards.detach().to(torch.float64) - tau * hd     # what V regresses onto
    ev = 0.0
    if target.numel() > 1 and float(target.var()) > 0:
        ev = 1.0 - float((target - values.detach().to(torch.float64)).var() / target.var())
    return loss, {
        "residual": _mean(t),
        "value": _mean(values),
        "reward": _mean(rewards),
        "logratio": _mean(hd),
        "rewards/implicit": tau * _mean(hd),
        "value/explained_variance": ev,
    }

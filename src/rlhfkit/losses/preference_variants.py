"""More pair losses of the DPO family, under the names TRL's ``loss_type`` uses for them.

Same notation and signature as :mod:`rlhfkit.losses.preference` (h = log π_θ/π_ref of a
sequence, Δ = h_w − h_l, per-pair loss and metrics); registered in the same registry, so the
DPO recipe's ``loss_type`` reaches them. docs/algorithms.md#dpo-variants gives each equation:

    apo_zero   1 − σ(βh_w) + σ(βh_l)                      APO-zero, D'Oosterlinck et al. 2024
    apo_down   σ(βh_w) + 1 − σ(βΔ)                        APO-down, same paper
    nca_pair   −log σ(βh_w) − ½ log σ(−βh_w) − ½ log σ(−βh_l)   NCA, Chen et al. 2024
    sppo_hard  (h_w − 1/(2β))² + (h_l + 1/(2β))²          SPPO with hard labels, Wu et al. 2024
    exo_pair   KL(p_θ ‖ p_label), p_θ = σ(βΔ), p_label = (1 − ε, ε)   EXO, Ji et al. 2024
    discopop   (1 − σ(βΔ/τ))·(−log σ(βΔ)) + σ(βΔ/τ)·e^{−βΔ}   DiscoPOP, Lu et al. 2024
    aot_pair   −log σ(β(sort(h_w) − sort(h_l)))_i          AOT, Melnyk et al. 2024
    aot        −log σ(β(sort(π_w − π_l) − sort(ref_w − ref_l)))_i   same paper
    npo        −(2/β)·log σ(−βh_l): the rejected response only   NPO, Zhang et al. 2024
    sigmoid_norm  −log σ(β(h_w/|y_w| − h_l/|y_l|))            length-normalised DPO (Tülu 3)
    bco_pair   −log σ(βh_w − δ) − log σ(−(βh_l − δ)), δ = running mean reward   BCO, Jung et al. 2024
    sft *      −logp_w/|y_w|: the chosen responses' token-mean NLL (a term of MPO's sums)
    cpo *      −log σ(β(logp_w − logp_l)) + α·(−logp_w/|y_w|)   CPO, Xu et al. 2024
    alphapo *  −log σ(r_w − r_l − γ), r = (β/α)(1 − e^{−α·logp/|y|})   AlphaPO, Gupta et al. 2025

(``*`` = reference-free.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .preference import (PairLogps, _dpo_metrics, _log_ratios, _mean, _mean_logps, _metrics, _smoothed_sigmoid,
                         register_preference_loss)


@register_preference_loss("apo_zero")
def apo_zero_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """APO-zero: raise the chosen likelihood and lower the rejected one, each against the
    reference (use when the chosen responses are better than the model's own). (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    loss = 1 - torch.sigmoid(beta * h_w) + torch.sigmoid(beta * h_l)
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("apo_down")
def apo_down_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """APO-down: lower both likelihoods, the rejected more (chosen responses worse than the model's). (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    loss = torch.sigmoid(beta * h_w) + 1 - torch.sigmoid(beta * (h_w - h_l))
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("nca_pair")
def nca_pair_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """NCA (noise-contrastive alignment), pairwise form: absolute rewards, not only their gap. (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    loss = -F.logsigmoid(beta * h_w) - 0.5 * F.logsigmoid(-beta * h_w) - 0.5 * F.logsigmoid(-beta * h_l)
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("sppo_hard")
def sppo_hard_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """SPPO with hard win labels (P(y_w ≻ y_l) = 1): each log-ratio regressed to ±1/(2β)
    (rlhfkit's η = 1/β). (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    loss = (h_w - 0.5 / beta) ** 2 + (h_l + 0.5 / beta) ** 2
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("exo_pair")
def exo_pair_loss(batch: PairLogps, *, beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, dict]:
    """EXO, pairwise: the reverse KL from the model's pair distribution (σ(βΔ), σ(−βΔ)) to the
    labels' (1 − ε, ε); ε = ``label_smoothing``, and 1e-3 when it is 0 (the KL needs ε > 0). (docs/algorithms.md#dpo-variants)"""
    eps = label_smoothing or 1e-3
    h_w, h_l = _log_ratios(batch)
    z = beta * (h_w - h_l)
    loss = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("discopop")
def discopop_loss(batch: PairLogps, *, beta: float, discopop_tau: float = 0.05) -> tuple[Tensor, dict]:
    """DiscoPOP (log-ratio modulated loss): a σ(βΔ/τ)-weighted blend of the logistic (DPO) and
    the exponential loss; τ = ``discopop_tau``. (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    z = beta * (h_w - h_l)
    # (1 − w)·(−log σ(z)) + w·e^{−z} with w = σ(z/τ), the second term as exp(log w − z) so a
    # large negative margin (w → 0, e^{−z} → ∞) stays finite
    lw = F.logsigmoid(z / discopop_tau)
    loss = torch.sigmoid(-z / discopop_tau) * -F.logsigmoid(z) + torch.exp(lw - z)
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("aot_pair")
def aot_pair_loss(batch: PairLogps, *, beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, dict]:
    """AOT, unpaired form: the batch's chosen and rejected log-ratios each sorted, and the i-th
    smallest chosen set against the i-th smallest rejected (first-order stochastic dominance of
    the chosen rewards over the rejected ones); ``label_smoothing`` as in cdpo. The coupling is
    within one micro-batch. (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    z = beta * (torch.sort(h_w).values - torch.sort(h_l).values)
    return _smoothed_sigmoid(z, label_smoothing), _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("aot")
def aot_loss(batch: PairLogps, *, beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, dict]:
    """AOT, paired form: the sorted policy margins π_w − π_l against the sorted reference margins. (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    pi = torch.sort(batch.policy_chosen - batch.policy_rejected).values
    ref = torch.sort(batch.ref_chosen - batch.ref_rejected).values
    return _smoothed_sigmoid(beta * (pi - ref), label_smoothing), _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("npo", reads_chosen=False)
def npo_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """NPO (negative preference optimisation, for unlearning): −(2/β)·log σ(−β·h_l) on the
    rejected response alone; the chosen one is not read. On pairs the chosen side's metrics are
    still logged; on a rejected-only batch (``policy_chosen`` None, docs/algorithms.md#negatives)
    the metrics are ``rewards/rejected``, ``logps/rejected`` and ``npo/rejected_log_ratio``. As
    β → 0 it becomes gradient ascent on the rejected NLL, bounded instead of diverging. (docs/algorithms.md#dpo-variants)"""
    if batch.ref_rejected is None:
        raise ValueError("npo needs reference log-probs of the rejected responses (ref_rejected)")
    h_l = batch.policy_rejected - batch.ref_rejected
    loss = -(2.0 / beta) * F.logsigmoid(-beta * h_l)
    if batch.policy_chosen is None:
        return loss, {"rewards/rejected": _mean(beta * h_l.detach()), "logps/rejected": _mean(batch.policy_rejected),
                      "npo/rejected_log_ratio": _mean(h_l)}
    h_w, _ = _log_ratios(batch)
    return loss, _dpo_metrics(batch, beta, h_w, h_l, {"npo/rejected_log_ratio": h_l})


@register_preference_loss("sigmoid_norm")
def sigmoid_norm_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """Length-normalised DPO: the sigmoid loss on per-token log-ratios h/|y|, so a long response
    is not favoured for its length (TRL's ``sigmoid_norm``; β is on the per-token scale, larger
    than DPO's, e.g. 5). Rewards are β·h/|y|. (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    r_w, r_l = beta * h_w / batch.chosen_len.clamp(min=1), beta * h_l / batch.rejected_len.clamp(min=1)
    return -F.logsigmoid(r_w - r_l), _metrics(batch, r_w, r_l)


@register_preference_loss("bco_pair")
def bco_pair_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """BCO on pairs: a binary classifier with logit βh − δ, chosen = 1 and rejected = 0, where the
    shift δ is the running mean of the implicit rewards βh of both responses (the DPO recipe keeps
    it across steps in ``batch.reward_shift``; without it, this batch's mean). δ is not
    differentiated. Extra metric ``bco/delta``. (docs/algorithms.md#dpo-variants)"""
    h_w, h_l = _log_ratios(batch)
    r_w, r_l = beta * h_w, beta * h_l
    delta = batch.reward_shift
    if delta is None:
        delta = torch.cat([r_w, r_l]).detach().mean() if r_w.numel() else r_w.new_zeros(())
    delta = torch.as_tensor(delta, dtype=r_w.dtype, device=r_w.device).detach()
    loss = -F.logsigmoid(r_w - delta) - F.logsigmoid(-(r_l - delta))
    return loss, _metrics(batch, r_w, r_l, {"bco/delta": delta.expand_as(r_w)})


@register_preference_loss("sft", needs_reference=False)
def sft_pair_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """The chosen responses' token-mean NLL −logp_w/|y_w| (the rejected ones are not trained); a
    term of a weighted sum of losses (``loss_type: [sigmoid, bco_pair, sft]``, MPO). Rewards are
    β·logp/|y|. (docs/algorithms.md#dpo-variants)"""
    m_w, m_l = _mean_logps(batch)
    return -m_w, _metrics(batch, beta * m_w, beta * m_l)


@register_preference_loss("cpo", needs_reference=False)
def cpo_loss(batch: PairLogps, *, beta: float, cpo_alpha: float = 1.0) -> tuple[Tensor, dict]:
    """CPO (contrastive preference optimisation): the reference-free sigmoid loss on the sequence
    log-probs plus ``cpo_alpha`` times the chosen responses' token-mean NLL (the behaviour-cloning
    term). Rewards are β·logp. Extra metric ``nll``. (docs/algorithms.md#dpo-variants)"""
    nll = -batch.policy_chosen / batch.chosen_len.clamp(min=1)
    r_w, r_l = beta * batch.policy_chosen, beta * batch.policy_rejected
    return -F.logsigmoid(r_w - r_l) + cpo_alpha * nll, _metrics(batch, r_w, r_l, {"nll": nll})


@register_preference_loss("alphapo", needs_reference=False)
def alphapo_loss(batch: PairLogps, *, beta: float, gamma: float = 0.5, alphapo_alpha: float = 0.25
                 ) -> tuple[Tensor, dict]:
    """AlphaPO: SimPO with the reward r = (β/α)·(1 − p̄^{−α}), p̄ = e^{logp/|y|} the per-token
    geometric-mean probability; α = ``alphapo_alpha`` shapes the reward (α → 0 is SimPO's
    β·logp/|y|), γ the target margin as in simpo. (docs/algorithms.md#dpo-variants)"""
    m_w, m_l = _mean_logps(batch)

    def reward(m: Tensor) -> Tensor:
        if alphapo_alpha == 0:
            return beta * m
        return beta * -torch.expm1(-alphapo_alpha * m) / alphapo_alpha

    r_w, r_l = reward(m_w), reward(m_l)
    return -F.logsigmoid(r_w - r_l - gamma), _metrics(batch, r_w, r_l)

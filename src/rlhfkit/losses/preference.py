"""Pairwise preference losses (the DPO family), looked up by name in one registry.

Notation (docs/algorithms.md#notation): for a completion y of prompt x, ``logp(y)`` is the SUM of the
completion-token log-probs under the policy, ``h(y) = log π_θ(y|x) - log π_ref(y|x)`` the
sequence log-ratio, ``Δ = h(y_w) - h(y_l)``, ``σ`` the sigmoid, ``β`` the KL strength.

Every loss shares one signature ``loss(batch: PairLogps, *, beta, <its own params>)`` and
returns ``(per_pair_loss (N,), metrics)``. A loss takes exactly the keyword parameters it uses
(no catch-all), so a parameter it does not know is a TypeError; :func:`loss_parameters` lists
them, and the DPO recipe passes only those (a non-default value of a parameter the chosen loss
does not use is a config error there).

Registered losses (``*`` = reference-free):

    sigmoid        -log σ(βΔ)                                   DPO, Rafailov et al. 2023
    cdpo           -(1-ε) log σ(βΔ) - ε log σ(-βΔ)              cDPO, Mitchell 2023
    robust         (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1-2ε)   rDPO, Chowdhury et al. 2024
    hinge          max(0, 1 - βΔ)                               SLiC-HF, Zhao et al. 2023
    ipo            (Δ̄ - 1/(2β))², Δ̄ on per-token log-ratios     IPO, Azar et al. 2023
    rdpo           -log σ(βΔ + α|y_w| - α|y_l|)                 R-DPO, Park et al. 2024
    simpo *        -log σ(β logp_w/|y_w| - β logp_l/|y_l| - γ)  SimPO, Meng et al. 2024
    orpo *         NLL(y_w) + λ(-log σ(log odds_w - log odds_l)) ORPO, Hong et al. 2024
    tdpo           -log σ(βΔ - β(SeqKL(y_l) - SeqKL(y_w)))      TDPO, Zeng et al. 2024
    f_divergence   -log σ(β(f′(u_w) - f′(u_l))), u = π/π_ref    f-DPO, Wang et al. 2023

Metrics (python floats, from detached tensors, 0.0 on an empty batch): ``rewards/chosen``,
``rewards/rejected`` (mean implicit reward β·h; β·logp/|y| for the reference-free losses),
``rewards/accuracy`` (fraction with reward_w > reward_l, ties count as wrong),
``rewards/margin``, ``logps/chosen``, ``logps/rejected`` (mean policy sums), plus the
loss-specific ones named in each docstring.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


@dataclass
class PairLogps:
    """Per-pair sequence statistics of one batch of N (prompt, chosen, rejected) triples."""

    policy_chosen: Tensor | None
    """(N,) sum of the chosen completion-token log-probs under the policy; None in a
    rejected-only batch (only for losses whose spec has ``reads_chosen=False``)."""
    policy_rejected: Tensor
    """(N,) same for the rejected completion."""
    ref_chosen: Tensor | None
    """(N,) under the reference model; None for the reference-free losses and in a rejected-only batch."""
    ref_rejected: Tensor | None
    """(N,) under the reference model; None for the reference-free losses."""
    chosen_len: Tensor | None
    """(N,) number of chosen completion tokens (float); None in a rejected-only batch."""
    rejected_len: Tensor
    """(N,) number of rejected completion tokens (float)."""
    chosen_seq_kl: Tensor | None = None
    """(N,) TDPO only: Σ_t KL(π_ref(·|x,y<t) ‖ π_θ(·|x,y<t)) over the chosen tokens."""
    rejected_seq_kl: Tensor | None = None
    """(N,) TDPO only: same over the rejected tokens."""
    reward_shift: Tensor | None = None
    """() bco_pair only: the running mean δ of the implicit rewards (detached), kept by the
    recipe across steps; None = the mean of this batch's rewards."""


PreferenceLoss = Callable[..., tuple[Tensor, dict]]
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {}


@dataclass(frozen=True)
class PreferenceLossSpec:
    """A pair loss and what it needs: the rules the DPO recipe reads from here."""

    name: str
    fn: PreferenceLoss
    needs_reference: bool = True
    """Reads reference log-probs (False for simpo and orpo)."""
    needs_token_kl: bool = False
    """Reads the per-sequence sum of token-level KL(π_ref ‖ π_θ) (TDPO): the recipe keeps a live
    reference and asks the forward for hidden states."""
    params: tuple[str, ...] = ()
    """Its keyword parameters besides ``beta`` (config keys of the same names)."""
    reads_chosen: bool = True
    """Reads the chosen response (False for npo): the DPO recipe then also trains on rejected-only
    examples (one completion each) and computes no log-probs of a chosen response."""


PREFERENCE_SPECS: dict[str, PreferenceLossSpec] = {}


def register_preference_loss(name: str, *, needs_reference: bool = True, needs_token_kl: bool = False,
                             reads_chosen: bool = True):
    """Decorator: ``@register_preference_loss("tdpo", needs_token_kl=True)`` adds a loss and its
    :class:`PreferenceLossSpec` (its parameters are its keyword-only arguments besides ``beta``)."""
    def deco(fn: PreferenceLoss) -> PreferenceLoss:
        if name in PREFERENCE_LOSSES:
            raise ValueError(f"preference loss '{name}' is already registered")
        params = tuple(p.name for p in inspect.signature(fn).parameters.values()
                       if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "beta")
        PREFERENCE_LOSSES[name] = fn
        PREFERENCE_SPECS[name] = PreferenceLossSpec(name, fn, needs_reference, needs_token_kl, params, reads_chosen)
        return fn
    return deco


def _check_name(name: str) -> None:
    from ..errors import registry_get

    registry_get(PREFERENCE_LOSSES, name, "preference loss_type")


def get_preference_loss(name: str) -> PreferenceLoss:
    """The registered loss called ``name``; an unknown name is a ConfigError listing them all."""
    _check_name(name)
    return PREFERENCE_LOSSES[name]


def loss_parameters(name: str) -> dict[str, object]:
    """The keyword parameters loss ``name`` takes besides ``beta``, with their defaults."""
    _check_name(name)
    sig = inspect.signature(PREFERENCE_LOSSES[name])
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "beta"}


def get_preference_spec(name: str) -> PreferenceLossSpec:
    """The spec of ``name``; an unknown name is a ConfigError listing them all."""
    _check_name(name)
    return PREFERENCE_SPECS[name]


def needs_reference(name: str) -> bool:
    """Whether loss ``name`` reads reference log-probs (False for simpo and orpo)."""
    return get_preference_spec(name).needs_reference


# --------------------------------------------------------------------------- helpers


def _log_ratios(b: PairLogps) -> tuple[Tensor, Tensor]:
    """(h_w, h_l), each (N,): policy minus reference sequence log-probs."""
    if b.ref_chosen is None or b.ref_rejected is None:
        raise ValueError("this preference loss needs reference log-probs (ref_chosen/ref_rejected)")
    return b.policy_chosen - b.ref_chosen, b.policy_rejected - b.ref_rejected


def _mean_logps(b: PairLogps) -> tuple[Tensor, Tensor]:
    """Length-averaged policy log-probs (N,) each; a zero length counts as 1 (no NaN)."""
    return (b.policy_chosen / b.chosen_len.clamp(min=1),
            b.policy_rejected / b.rejected_len.clamp(min=1))


def _mean(x: Tensor) -> float:
    return float(x.detach().to(torch.float64).mean()) if x.numel() else 0.0


def _metrics(b: PairLogps, reward_w: Tensor, reward_l: Tensor, extra: dict | None = None
             ) -> dict:
    """The common metrics; each ``extra`` tensor is logged by its mean under its key."""
    rw, rl = reward_w.detach(), reward_l.detach()
    out = {
        "rewards/chosen": _mean(rw),
        "rewards/rejected": _mean(rl),
        "rewards/accuracy": _mean((rw > rl).float()),
        "rewards/margin": _mean(rw - rl),
        "logps/chosen": _mean(b.policy_chosen),
        "logps/rejected": _mean(b.policy_rejected),
    }
    out.update({k: _mean(v) for k, v in (extra or {}).items()})
    return out


def _dpo_metrics(b: PairLogps, beta: float, h_w: Tensor, h_l: Tensor, extra: dict | None = None
                 ) -> dict:
    return _metrics(b, beta * h_w, beta * h_l, extra)


def _smoothed_sigmoid(logits: Tensor, eps: float) -> Tensor:
    """-(1-ε) log σ(z) - ε log σ(-z): conservative DPO with label-flip probability ε."""
    loss = -F.logsigmoid(logits)
    if eps:
        loss = (1 - eps) * loss - eps * F.logsigmoid(-logits)
    return loss


# --------------------------------------------------------------------------- losses


@register_preference_loss("sigmoid")
def sigmoid_loss(batch: PairLogps, *, beta: float, label_smoothing: float = 0.0
                 ) -> tuple[Tensor, dict]:
    """DPO (Rafailov et al. 2023, eq. 7): -log σ(βΔ).

    ``label_smoothing`` ε (default 0: plain DPO) is honoured, so a smoothing set in the config
    is never dropped silently; ε > 0 gives the ``cdpo`` loss (docs/algorithms.md#dpo).
    """
    h_w, h_l = _log_ratios(batch)
    loss = _smoothed_sigmoid(beta * (h_w - h_l), label_smoothing)
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("cdpo")
def cdpo_loss(batch: PairLogps, *, beta: float, label_smoothing: float = 0.1
              ) -> tuple[Tensor, dict]:
    """Conservative DPO (cDPO, Mitchell 2023): -(1-ε) log σ(βΔ) - ε log σ(-βΔ).

    ε = ``label_smoothing`` is the assumed probability that a label is flipped; the loss is
    the expected DPO loss under that noise (docs/algorithms.md#cdpo).
    """
    h_w, h_l = _log_ratios(batch)
    loss = _smoothed_sigmoid(beta * (h_w - h_l), label_smoothing)
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("robust")
def robust_loss(batch: PairLogps, *, beta: float, label_smoothing: float = 0.1
                ) -> tuple[Tensor, dict]:
    """Robust DPO (rDPO, Chowdhury et al. 2024): (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε).

    The unbiased estimate of the clean-label DPO loss when each label is flipped with
    probability ε = ``label_smoothing`` < 1/2 (the name and form TRL's ``robust`` uses;
    docs/algorithms.md#robust).
    """
    h_w, h_l = _log_ratios(batch)
    z = beta * (h_w - h_l)
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("hinge")
def hinge_loss(batch: PairLogps, *, beta: float) -> tuple[Tensor, dict]:
    """SLiC-HF calibration loss (Zhao et al. 2023) on log-ratios: max(0, 1 - βΔ). See docs/algorithms.md#hinge."""
    h_w, h_l = _log_ratios(batch)
    loss = torch.relu(1 - beta * (h_w - h_l))
    return loss, _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("ipo")
def ipo_loss(batch: PairLogps, *, beta: float, ipo_length_normalize: bool = True
             ) -> tuple[Tensor, dict]:
    """IPO (Azar et al. 2023, eq. 17): (Δ̄ - 1/(2β))², β playing the role of τ.

    With ``ipo_length_normalize`` (default, as in the IPO paper's experiments and TRL) Δ̄ uses
    per-token average log-ratios h(y)/|y|; otherwise the sequence sums Δ. The reward metrics
    stay β·h on sequence sums, like every other reference-based loss here.

    See docs/algorithms.md#ipo.
    """
    h_w, h_l = _log_ratios(batch)
    if ipo_length_normalize:
        delta = h_w / batch.chosen_len.clamp(min=1) - h_l / batch.rejected_len.clamp(min=1)
    else:
        delta = h_w - h_l
    loss = (delta - 1 / (2 * beta)) ** 2
    return loss, _dpo_metrics(batch, beta, h_w, h_l, {"ipo/delta": delta})


@register_preference_loss("rdpo")
def rdpo_loss(batch: PairLogps, *, beta: float, alpha: float = 0.01) -> tuple[Tensor, dict]:
    """R-DPO (Park et al. 2024): -log σ(βΔ + α|y_w| - α|y_l|) (docs/algorithms.md#rdpo).

    The paper adds -α|y| to the RL objective, so the implicit reward is β·h(y) + α|y| and the
    length term enters the logit with a plus sign: a longer winner already has a larger logit
    and gets less gradient, which is what removes the length bias.
    """
    h_w, h_l = _log_ratios(batch)
    logits = beta * (h_w - h_l) + alpha * (batch.chosen_len - batch.rejected_len)
    return -F.logsigmoid(logits), _dpo_metrics(batch, beta, h_w, h_l)


@register_preference_loss("simpo", needs_reference=False)
def simpo_loss(batch: PairLogps, *, beta: float, gamma: float = 0.5
               ) -> tuple[Tensor, dict]:
    """SimPO (Meng et al. 2024, eq. 6): -log σ(β·logp_w/|y_w| - β·logp_l/|y_l| - γ).

    ``gamma`` is the absolute target margin γ in the logit (TRL's ``simpo_gamma``; the paper
    tunes the ratio γ/β, ≈ 0.5, with β ≈ 2-10). Rewards are the length-normalised β·logp/|y|.

    See docs/algorithms.md#simpo.
    """
    m_w, m_l = _mean_logps(batch)
    r_w, r_l = beta * m_w, beta * m_l
    return -F.logsigmoid(r_w - r_l - gamma), _metrics(batch, r_w, r_l)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012).

    Each branch only sees inputs in its own range, so the branch ``torch.where`` discards
    cannot put inf/NaN into the gradient.
    """
    near0 = x > -math.log(2)
    a = torch.log(-torch.expm1(torch.where(near0, x, -1.0)))
    b = torch.log1p(-torch.exp(torch.where(near0, -1.0, x)))
    return torch.where(near0, a, b)


@register_preference_loss("orpo", needs_reference=False)
def orpo_loss(batch: PairLogps, *, beta: float, orpo_lambda: float = 0.1
              ) -> tuple[Tensor, dict]:
    """ORPO (Hong et al. 2024, eq. 6): NLL(y_w) + λ·(-log σ(log odds(y_w) - log odds(y_l))).

    odds(y) = p/(1-p) with p = exp(m), m = logp(y)/|y| the mean token log-prob, so
    log odds = m - log(1 - e^m). m is clamped just below 0 so a certain completion (m → 0)
    gives a large finite log odds instead of inf/NaN. NLL(y_w) = -logp(y_w)/|y_w| (token mean
    per pair). λ = ``orpo_lambda`` (TRL calls it ``beta``); β only scales the reward metrics
    β·m. Extra metrics: ``nll``, ``log_odds_ratio``.

    See docs/algorithms.md#orpo.
    """
    m_w, m_l = _mean_logps(batch)
    cap = -torch.finfo(m_w.dtype).eps  # largest m kept: log(1 - e^m) ≈ log|m| stays finite

    def log_odds(m: Tensor) -> Tensor:
        m = m.clamp(max=cap)
        return m - _log1mexp(m)

    lor = log_odds(m_w) - log_odds(m_l)
    nll = -m_w
    loss = nll + orpo_lambda * -F.logsigmoid(lor)
    return loss, _metrics(batch, beta * m_w, beta * m_l, {"nll": nll, "log_odds_ratio": lor})


@register_preference_loss("tdpo", needs_token_kl=True)
def tdpo_loss(batch: PairLogps, *, beta: float, tdpo_alpha: float = 0.5, tdpo_variant: int = 1
              ) -> tuple[Tensor, dict]:
    """Token-level DPO (Zeng et al. 2024): -log σ(βΔ - β·δ) with sequential KLs.

    TDPO1 (``tdpo_variant=1``, default): δ = SeqKL(y_l) - SeqKL(y_w), gradients flow through
    both KL terms. TDPO2 (``tdpo_variant=2``): δ = α·(SeqKL(y_l) - sg[SeqKL(y_w)]) with
    α = ``tdpo_alpha`` and the chosen KL detached (sg = stop-gradient), as in the paper's code.
    SeqKL(y) = Σ_t KL(π_ref(·|x,y<t) ‖ π_θ(·|x,y<t)) comes in ``batch.*_seq_kl``.
    Extra metrics: ``kl/chosen``, ``kl/rejected`` (mean SeqKL).

    See docs/algorithms.md#tdpo.
    """
    if batch.chosen_seq_kl is None or batch.rejected_seq_kl is None:
        raise ValueError("tdpo needs chosen_seq_kl and rejected_seq_kl in the batch")
    if tdpo_variant not in (1, 2):
        raise ConfigError(f"tdpo_variant must be 1 or 2, got {tdpo_variant!r}")
    h_w, h_l = _log_ratios(batch)
    kl_w, kl_l = batch.chosen_seq_kl, batch.rejected_seq_kl
    delta = kl_l - kl_w if tdpo_variant == 1 else tdpo_alpha * (kl_l - kl_w.detach())
    loss = -F.logsigmoid(beta * (h_w - h_l) - beta * delta)
    return loss, _dpo_metrics(batch, beta, h_w, h_l, {"kl/chosen": kl_w, "kl/rejected": kl_l})


F_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def _capped_exp(x: Tensor) -> Tensor:
    """exp(x) with x capped at ½·log(finfo.max) (≈ 44 in fp32, 354 in fp64).

    Keeps f′ finite for absurd log-ratios so the loss and its gradient never become inf/NaN;
    past the cap the term's gradient is zero.
    """
    return torch.exp(x.clamp(max=0.5 * math.log(torch.finfo(x.dtype).max)))


def f_prime(h: Tensor, divergence: str, f_alpha: float = 0.5) -> Tensor:
    """f′(u) at u = π/π_ref = exp(h), written in terms of the log-ratio h (any shape).

    reverse_kl: log u + 1 (the constant cancels in the difference, so f-DPO = DPO);
    forward_kl: -1/u = -e^{-h}; js (Jensen-Shannon): log(2u/(1+u)) = log 2 + h - softplus(h);
    alpha: (1 - u^{-α})/α = (1 - e^{-αh})/α, α ∈ (0, 1) interpolates reverse (α→0) and
    forward (α=1) KL.
    """
    if divergence == "reverse_kl":
        return h + 1
    if divergence == "forward_kl":
        return -_capped_exp(-h)
    if divergence == "js":
        return math.log(2) + h - F.softplus(h)
    if divergence == "alpha":
        return (1 - _capped_exp(-f_alpha * h)) / f_alpha
    raise ConfigError(f"unknown f_divergence '{divergence}'; valid: {', '.join(F_DIVERGENCES)}")


@register_preference_loss("f_divergence")
def f_divergence_loss(batch: PairLogps, *, beta: float, f_divergence: str = "reverse_kl",
                      f_alpha: float = 0.5) -> tuple[Tensor, dict]:
    """f-DPO (Wang et al. 2023, "Beyond Reverse KL"): -log σ(β(f′(u_w) - f′(u_l))).

    ``f_divergence`` picks f (see :func:`f_prime`); ``f_alpha`` is α of the α-divergence.
    Reward metrics stay β·h so runs with different f compare on the same scale.

    See docs/algorithms.md#f-divergence.
    """
    h_w, h_l = _log_ratios(batch)
    logits = beta * (f_prime(h_w, f_divergence, f_alpha) - f_prime(h_l, f_divergence, f_alpha))
    return -F.logsigmoid(logits), _dpo_metrics(batch, beta, h_w, h_l)


def rpo_nll(batch: PairLogps, rpo_alpha: float) -> tuple[Tensor, dict]:
    """The RPO term added to any pair loss: α·NLL(y_w) = −α·log π(y_w|x)/|y_w| per pair
    (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1: the
    length-normalised NLL of the chosen response). It keeps the chosen responses likely while
    the preference term pushes the pair apart, the usual guard against DPO lowering both.

    See docs/algorithms.md#rpo.
    """
    nll = -batch.policy_chosen / batch.chosen_len.clamp(min=1)
    return rpo_alpha * nll, {"rpo_nll": _mean(nll)}


from . import preference_variants  # noqa: E402,F401  (registers apo_zero, nca_pair, discopop, aot, npo, ...)

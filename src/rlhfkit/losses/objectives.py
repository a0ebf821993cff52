"""Policy-loss registry: the online-RL objectives as pure functions of flat per-token tensors.

Every loss reads one :class:`PolicyLossInputs` (the completion tokens of a micro-batch, flat)
and returns a :class:`PolicyLossOutput`: a per-token loss the caller aggregates with
:func:`rlhfkit.losses.policy.aggregate`, and/or a per-sequence loss the caller sums and divides
by the step's sequence count. Each is registered with its :class:`PolicyLossSpec` —
``@register_policy_loss("gspo", importance="sequence", params=(...))`` — which says which
:class:`PolicyLossParams` fields it reads (the registered ``fn`` checks exactly those) and which
``loss_agg`` modes it supports. Look one up with :func:`get_policy_loss`:

==========  =========  ==========================================================
ppo         token      −min(ρA, clip(ρ)A) (PPO)
seq_ppo     sequence   the same with ρ_s = exp(Σ_t Δ_t) (whole completion one action)
gspo        sequence   ρ_s = exp(mean_t Δ_t), tiny clip range (GSPO)
cispo       token      −sg(clip(ρ))·A·log π: the weight is clipped, every token keeps a gradient
dual_clip   token      PPO with the loss of A < 0 tokens bounded by −c·A
clip_cov    token      PPO; a few high-covariance tokens lose their gradient (Clip-Cov)
kl_cov      token      −ρA; the top high-covariance tokens get a |log π − log π_old| penalty
sppo        sequence   (Σ_t Δ_t − A)²: the log-ratio regressed on its target (SPPO)
==========  =========  ==========================================================

Δ_t = log π_θ(y_t) − log π_old(y_t). ``ratio`` and ``clipped`` outputs are per token and not
masked (callers take masked means); ``token_loss`` outside the mask is whatever the formula
gives and is dropped by the aggregation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
from torch import Tensor

from ..config import check_range
from ..errors import ConfigError, registry_get
from .policy import LOSS_AGGREGATIONS, clipped_surrogate, sequence_clipped_surrogate

IMPORTANCE_LEVELS = ("token", "sequence")
_MAX_LOG_RATIO = 20.0  # as in losses.policy: a runaway ratio stays finite


@dataclass
class PolicyLossParams:
    """One flat set of knobs; each loss's spec names the fields it reads."""

    eps_low: float = 0.2
    """PPO clip below 1: ρ is clipped at 1 − eps_low (ppo, seq_ppo, dual_clip, clip_cov)."""
    eps_high: float = 0.2
    """PPO clip above 1: ρ is clipped at 1 + eps_high (> eps_low is DAPO's clip-higher)."""
    dual_clip: float = 3.0
    """c of dual-clip PPO (> 1): the loss of a token with A < 0 is at most −c·A (Ye et al. 2020)."""
    cispo_eps_low: float = 1.0
    """CISPO weight floor 1 − cispo_eps_low. MiniMax-M1 sets no lower bound (a large ε_low);
    1.0 puts the floor at 0, which no ratio reaches, so the default is exactly that."""
    cispo_eps_high: float = 4.0
    """CISPO weight cap 1 + cispo_eps_high. MiniMax-M1 tunes only this bound and does not publish
    its value; 4.0 caps the weight at 5, the ε_max = 5 of TRL's ScaleRL (Khatri et al. 2025) setup."""
    gspo_eps_low: float = 3e-4
    """GSPO clip below 1 of the length-normalised sequence ratio (GSPO paper: 3e-4)."""
    gspo_eps_high: float = 4e-4
    """GSPO clip above 1 (GSPO paper: 4e-4)."""
    clip_cov_frac: float = 2e-4
    """Clip-Cov: fraction r of the micro-batch's tokens whose gradient is removed (paper: 2e-4)."""
    clip_cov_lower: float = 1.0
    """Clip-Cov: tokens are picked among those with covariance ≥ this (paper ω_low = 1)."""
    clip_cov_upper: float = 5.0
    """Clip-Cov: ... and covariance ≤ this (paper ω_high = 5)."""
    kl_cov_frac: float = 2e-3
    """KL-Cov: fraction k of the tokens, highest covariance first, that get the penalty (paper:
    2e-3 for Qwen2.5-7B, 2e-4 for 32B)."""
    kl_cov_coef: float = 1.0
    """KL-Cov: β of the penalty β·|log π − log π_old| (paper: 1)."""


@dataclass
class PolicyLossInputs:
    logp: Tensor                  # (T,) log π_θ of each completion token (requires grad)
    old_logp: Tensor              # (T,) log π_old (detached)
    advantages: Tensor            # (T,) per-token advantages (sequence estimators broadcast one value)
    mask: Tensor                  # (T,) float 0/1, tokens that count
    seq: Tensor                   # (T,) long, sequence index of each token in [0, num_seqs)
    num_seqs: int
    entropy: Tensor | None = None  # (T,) per-token entropy (detached ok)
    params: PolicyLossParams = field(default_factory=PolicyLossParams)
    generator: torch.Generator | None = None
    """CPU generator of Clip-Cov's random pick; None = a fresh generator seeded with 0, so the
    same inputs always pick the same tokens."""


@dataclass
class PolicyLossOutput:
    token_loss: Tensor            # (T,) per-token loss to aggregate; zeros for pure sequence losses
    seq_loss: Tensor | None       # (num_seqs,) per-sequence loss (summed, / the step's sequence count)
    ratio: Tensor                 # (T,) detached importance ratio each token saw
    clipped: Tensor               # (T,) bool detached: gradient removed or limited by a clip
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyLossSpec:
    """A policy loss and what it needs: the rules a recipe reads instead of lists of names."""

    name: str
    fn: Callable[[PolicyLossInputs], PolicyLossOutput]
    importance: str
    """'token' (one ratio per token) or 'sequence' (one per completion)."""
    params: tuple[str, ...] = ()
    """The :class:`PolicyLossParams` fields it reads."""
    needs_entropy: bool = False
    """Reads ``PolicyLossInputs.entropy``."""
    aggregations: tuple[str, ...] | None = None
    """``loss_agg`` modes it supports; None = all of LOSS_AGGREGATIONS."""


POLICY_LOSSES: dict[str, PolicyLossSpec] = {}
_PARAM_NAMES = tuple(f.name for f in fields(PolicyLossParams))
_RANGES = {  # check_range keyword arguments of each parameter
    "eps_low": dict(lo=0, hi=1), "eps_high": dict(lo=0), "dual_clip": dict(lo=1, lo_open=True),
    "cispo_eps_low": dict(lo=0), "cispo_eps_high": dict(lo=0),
    "gspo_eps_low": dict(lo=0, hi=1), "gspo_eps_high": dict(lo=0),
    "clip_cov_frac": dict(lo=0, hi=1, lo_open=True), "clip_cov_lower": {}, "clip_cov_upper": {},
    "kl_cov_frac": dict(lo=0, hi=1, lo_open=True), "kl_cov_coef": dict(lo=0),
}


def check_policy_loss_params(name: str, params: PolicyLossParams,
                             key: Callable[[str], str] = lambda k: f"PolicyLossParams.{k}") -> None:
    """ConfigError unless every field the loss ``name`` reads is in its range; ``key`` names a
    field as the user's config spells it."""
    spec = get_policy_loss(name)
    for k in spec.params:
        check_range(f"{key(k)} (policy loss '{name}')", getattr(params, k), **_RANGES[k])
    if "clip_cov_lower" in spec.params and not params.clip_cov_lower < params.clip_cov_upper:
        raise ConfigError(f"policy loss '{name}': clip_cov_lower must be < clip_cov_upper ({key('clip_cov_lower')} "
                          f"= {params.clip_cov_lower!r}, {key('clip_cov_upper')} = {params.clip_cov_upper!r})")


def check_policy_loss(name: str, params: PolicyLossParams | None = None,
                      loss_agg: str | None = None,
                      key: Callable[[str], str] = lambda k: f"PolicyLossParams.{k}") -> PolicyLossSpec:
    """The spec of ``name`` after checking its parameters and that it supports ``loss_agg``
    (ConfigError naming the valid choices otherwise): the config-time check of a recipe."""
    spec = get_policy_loss(name)
    check_policy_loss_params(name, params if params is not None else PolicyLossParams(), key)
    allowed = spec.aggregations or LOSS_AGGREGATIONS
    if loss_agg is not None and loss_agg not in allowed:
        raise ConfigError(f"policy loss '{name}' supports loss_agg {', '.join(allowed)} (got "
                          f"'{loss_agg}'): a sequence-level objective averages over sequences")
    return spec


def register_policy_loss(name: str, *, importance: str, params: tuple[str, ...] = (),
                         needs_entropy: bool = False, aggregations: tuple[str, ...] | None = None):
    """Register ``fn(PolicyLossInputs) -> PolicyLossOutput`` under ``name``. The spec's ``fn``
    checks the ``params`` fields it names before each call; a second loss of the same name is
    refused (ValueError)."""
    if importance not in IMPORTANCE_LEVELS:
        raise ValueError(f"policy loss '{name}': importance must be one of {IMPORTANCE_LEVELS}")
    unknown = [p for p in params if p not in _PARAM_NAMES]
    if unknown:
        raise ValueError(f"policy loss '{name}' reads unknown PolicyLossParams fields {unknown}")
    if aggregations is not None and not set(aggregations) <= set(LOSS_AGGREGATIONS):
        raise ValueError(f"policy loss '{name}': aggregations must be among {LOSS_AGGREGATIONS}")

    def deco(fn):
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss '{name}' is registered twice")

        @functools.wraps(fn)
        def checked(x: PolicyLossInputs) -> PolicyLossOutput:
            check_policy_loss_params(name, x.params)
            return fn(x)

        POLICY_LOSSES[name] = PolicyLossSpec(name, checked, importance, tuple(params), needs_entropy,
                                             tuple(aggregations) if aggregations is not None else None)
        return fn
    return deco


def get_policy_loss(name: str) -> PolicyLossSpec:
    """The spec of ``name``; an unknown name is a ConfigError listing the valid ones."""
    return registry_get(POLICY_LOSSES, name, "policy loss")


# --------------------------------------------------------------------------- helpers

def _frac(flag: Tensor, of: Tensor) -> float:
    """Fraction of the entries where ``of`` holds that also have ``flag`` (0 when none)."""
    n = int(of.sum())
    return float((flag & of).sum()) / n if n else 0.0


def _count(frac: float, n: int) -> int:
    """⌊frac·n⌋ but at least 1 (and at most n): the size of a fraction of n tokens."""
    return min(n, max(1, int(frac * n + 1e-9))) if n > 0 else 0


def _top(values: Tensor, keep: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` largest ``values`` among the ``keep`` entries; ties go to the
    lower index (a stable sort), so the choice is deterministic."""
    idx = torch.nonzero(keep).squeeze(1)
    order = torch.sort(values[idx], descending=True, stable=True).indices[:k]
    out = torch.zeros_like(keep)
    out[idx[order]] = True
    return out


def _seq_mean(v: Tensor, m: Tensor, seq: Tensor, num_seqs: int) -> tuple[Tensor, Tensor]:
    """Per-sequence mean of ``v`` over the masked tokens, and the masked token counts."""
    n = m.new_zeros(num_seqs).index_add(0, seq, m)
    s = v.new_zeros(num_seqs).index_add(0, seq, v * m)
    return s / n.clamp(min=1), n


def token_covariance(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Centred per-token covariance (log π_t − mean log π)(A_t − mean A), the means over the
    masked tokens; detached, 0 outside the mask. See docs/algorithms.md#clip-cov."""
    m = mask > 0
    lp = torch.where(m, logp.detach(), torch.zeros_like(logp))
    a = torch.where(m, advantages.detach(), torch.zeros_like(lp))
    n = m.sum().clamp(min=1)
    cov = (lp - lp.sum() / n) * (a - a.sum() / n)
    return torch.where(m, cov, torch.zeros_like(cov))


def entropy_topq_mask(entropy: Tensor, mask: Tensor, top_q: float) -> Tensor:
    """Keep only the ⌈top_q·N⌉ highest-entropy of the N masked tokens (Wang et al. 2025, "Beyond
    the 80/20 rule": the policy gradient on the top 20 % "forking" tokens). Ties go to the lower
    index; ``top_q = 1`` returns ``mask`` unchanged. Same dtype as ``mask``.

    See docs/algorithms.md#entropy-top-q.
    """
    check_range("top_q (entropy_topq_mask)", top_q, lo=0, hi=1, lo_open=True)
    if top_q == 1:
        return mask
    keep = mask > 0
    return _top(entropy.detach(), keep, topq_count(int(keep.sum()), top_q)).to(mask.dtype) * mask


def topq_count(n: int, top_q: float) -> int:
    """How many of ``n`` masked tokens :func:`entropy_topq_mask` keeps: ⌈top_q·n⌉ (the count is
    known before the forward, so a token-mean loss can be normalised by it)."""
    return min(n, math.ceil(top_q * n - 1e-9)) if n else 0


# --------------------------------------------------------------------------- token losses

@register_policy_loss("ppo", importance="token", params=("eps_low", "eps_high"))
def ppo_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """PPO's clipped surrogate per token, :func:`rlhfkit.losses.policy.clipped_surrogate`.
    See docs/algorithms.md#clipped-surrogate."""
    p = x.params
    loss, ratio, clipped = clipped_surrogate(x.logp, x.old_logp, x.advantages, eps_low=p.eps_low,
                                             eps_high=p.eps_high)
    return PolicyLossOutput(loss, None, ratio, clipped, {})


@register_policy_loss("dual_clip", importance="token", params=("eps_low", "eps_high", "dual_clip"))
def dual_clip_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """Dual-clip PPO (Ye et al. 2020): for A < 0 the loss is −max(min(ρA, clip(ρ)A), c·A), so a
    token far off policy (ρ > c) contributes at most −c·A and no gradient; for A ≥ 0 it is PPO.
    ``clipped`` covers both clips; metric ``dual_clip_frac`` (masked tokens bounded by c).

    See docs/algorithms.md#dual-clip.
    """
    p = x.params
    loss, ratio, clipped = clipped_surrogate(x.logp, x.old_logp, x.advantages, eps_low=p.eps_low,
                                             eps_high=p.eps_high)
    bound = -p.dual_clip * x.advantages
    dual = ((x.advantages < 0) & (bound < loss)).detach()
    loss = torch.where(dual, bound, loss)
    return PolicyLossOutput(loss, None, ratio, clipped | dual,
                            {"dual_clip_frac": _frac(dual, x.mask > 0)})


@register_policy_loss("cispo", importance="token", params=("cispo_eps_low", "cispo_eps_high"))
def cispo_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """CISPO (MiniMax-M1, 2025): −sg(clip(ρ_t, 1 − ε_low, 1 + ε_high))·A_t·log π_θ(y_t). The
    weight is detached, so every token keeps the gradient −w·A (PPO drops the clipped ones);
    ``clipped`` marks the tokens whose weight was clipped. Defaults: see
    :class:`PolicyLossParams` (no lower bound, weight ≤ 5).

    See docs/algorithms.md#cispo.
    """
    p = x.params
    ratio = torch.exp((x.logp.detach() - x.old_logp).clamp(max=_MAX_LOG_RATIO))
    weight = ratio.clamp(1.0 - p.cispo_eps_low, 1.0 + p.cispo_eps_high)
    loss = -weight * x.advantages * x.logp
    return PolicyLossOutput(loss, None, ratio, weight != ratio, {})


@register_policy_loss("clip_cov", importance="token",
                      params=("eps_low", "eps_high", "clip_cov_frac", "clip_cov_lower", "clip_cov_upper"))
def clip_cov_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """Clip-Cov (Cui et al. 2025): the PPO loss, and among the masked tokens not already clipped
    whose covariance (:func:`token_covariance`) lies in [clip_cov_lower, clip_cov_upper],
    max(1, ⌊clip_cov_frac·N⌋) picked at random lose their gradient (their loss is detached: the
    value stays, the gradient is 0). The pick uses ``x.generator`` (None: seeded with 0, so it
    is deterministic). Metric ``cov_selected_frac``.

    See docs/algorithms.md#clip-cov.
    """
    p = x.params
    loss, ratio, clipped = clipped_surrogate(x.logp, x.old_logp, x.advantages, eps_low=p.eps_low,
                                             eps_high=p.eps_high)
    keep = x.mask > 0
    cov = token_covariance(x.logp, x.advantages, x.mask)
    eligible = keep & ~clipped & (cov >= p.clip_cov_lower) & (cov <= p.clip_cov_upper)
    idx = torch.nonzero(eligible).squeeze(1)
    k = _count(p.clip_cov_frac, int(keep.sum()))
    if idx.numel() > k:
        gen = x.generator if x.generator is not None else torch.Generator().manual_seed(0)
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:k].to(idx.device)]
    selected = torch.zeros_like(keep)
    selected[idx] = True
    loss = torch.where(selected, loss.detach(), loss)
    return PolicyLossOutput(loss, None, ratio, clipped | selected,
                            {"cov_selected_frac": _frac(selected, keep)})


@register_policy_loss("kl_cov", importance="token", params=("kl_cov_frac", "kl_cov_coef"))
def kl_cov_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """KL-Cov (Cui et al. 2025): the unclipped surrogate −ρ_t·A_t on every token, plus
    kl_cov_coef·|log π_θ − log π_old| on the max(1, ⌊kl_cov_frac·N⌋) masked tokens of highest
    covariance (:func:`token_covariance`; ties to the lower index). No ratio clip, as in the
    paper (``clipped`` is all False). Metric ``cov_selected_frac``.

    See docs/algorithms.md#kl-cov.
    """
    p = x.params
    delta = x.logp - x.old_logp
    ratio = torch.exp(delta.clamp(max=_MAX_LOG_RATIO))
    keep = x.mask > 0
    cov = token_covariance(x.logp, x.advantages, x.mask)
    selected = _top(cov, keep, _count(p.kl_cov_frac, int(keep.sum())))
    loss = -ratio * x.advantages + torch.where(selected, p.kl_cov_coef * delta.abs(), torch.zeros_like(delta))
    return PolicyLossOutput(loss, None, ratio.detach(), torch.zeros_like(keep),
                            {"cov_selected_frac": _frac(selected, keep)})


# --------------------------------------------------------------------------- sequence losses

_SEQ_AGG = ("grpo", "dr_grpo")


def _seq_output(x: PolicyLossInputs, loss: Tensor, ratio: Tensor, clipped: Tensor,
                live: Tensor) -> PolicyLossOutput:
    n_live = int(live.sum())
    metrics = {"seq_clip_frac": float((clipped & live).sum()) / n_live if n_live else 0.0}
    return PolicyLossOutput(torch.zeros_like(x.logp), loss, ratio[x.seq], clipped[x.seq], metrics)


@register_policy_loss("seq_ppo", importance="sequence", params=("eps_low", "eps_high"), aggregations=_SEQ_AGG)
def seq_ppo_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """The clipped objective with the completion as one action, ρ_s = exp(Σ_t Δ_t) (not length
    normalised): :func:`rlhfkit.losses.policy.sequence_clipped_surrogate`. ``ratio`` and
    ``clipped`` broadcast each sequence's value to its tokens; metric ``seq_clip_frac``.

    See docs/algorithms.md#importance-level.
    """
    p = x.params
    loss, ratio, clipped, live = sequence_clipped_surrogate(
        x.logp, x.old_logp, x.advantages, x.mask, x.seq, x.num_seqs, eps_low=p.eps_low, eps_high=p.eps_high)
    return _seq_output(x, loss, ratio, clipped, live)


@register_policy_loss("gspo", importance="sequence", params=("gspo_eps_low", "gspo_eps_high"),
                      aggregations=_SEQ_AGG)
def gspo_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025): s_i = exp(mean over the sequence's masked tokens of Δ_t),
    L_i = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i) with A_i the masked token mean of
    the advantages. A sequence without masked tokens has loss 0. Metric ``seq_clip_frac``.

    See docs/algorithms.md#gspo.
    """
    p = x.params
    m = x.mask.to(x.logp.dtype)
    log_ratio, n = _seq_mean(x.logp - x.old_logp, m, x.seq, x.num_seqs)
    adv, _ = _seq_mean(x.advantages.detach(), m, x.seq, x.num_seqs)
    live = n > 0
    ratio = torch.exp(log_ratio.clamp(max=_MAX_LOG_RATIO))
    clipped_ratio = ratio.clamp(1.0 - p.gspo_eps_low, 1.0 + p.gspo_eps_high)
    loss = -torch.minimum(ratio * adv, clipped_ratio * adv) * live
    clipped = ((clipped_ratio * adv < ratio * adv) & (clipped_ratio != ratio) & live).detach()
    return _seq_output(x, loss, ratio.detach(), clipped, live)


@register_policy_loss("sppo", importance="sequence", aggregations=_SEQ_AGG)
def sppo_loss(x: PolicyLossInputs) -> PolicyLossOutput:
    """SPPO's regression (Wu et al. 2024): L_i = (Σ_t Δ_t − A_i)², the sequence log-ratio
    log π_θ(y_i)/π_t(y_i) over the masked tokens pulled towards its target A_i = η(P̂(y_i ≻ π_t) − ½),
    given as the advantages (A_i is the masked token mean of the per-token advantages). No
    clip; a sequence without masked tokens has loss 0. ``ratio`` is exp(Σ_t Δ_t) per sequence
    (capped as elsewhere); metric ``sppo/log_ratio`` (mean over live sequences).

    See docs/algorithms.md#sppo.
    """
    m = x.mask.to(x.logp.dtype)
    n = m.new_zeros(x.num_seqs).index_add(0, x.seq, m)
    log_ratio = (x.logp - x.old_logp).new_zeros(x.num_seqs).index_add(0, x.seq, (x.logp - x.old_logp) * m)
    target, _ = _seq_mean(x.advantages.detach(), m, x.seq, x.num_seqs)
    live = n > 0
    loss = (log_ratio - target) ** 2 * live
    ratio = torch.exp(log_ratio.detach().clamp(max=_MAX_LOG_RATIO))
    out = _seq_output(x, loss, ratio, torch.zeros_like(live), live)
    lr = log_ratio.detach()[live]
    out.metrics = {"sppo/log_ratio": float(lr.mean()) if lr.numel() else 0.0}
    return out

"""Advantage estimators: pure functions on padded per-token tensors, in one registry.

Shapes: N sequences (prompt-major: the G samples of prompt i are rows i·G … i·G+G−1),
T = longest response. ``mask`` (N, T) is 1 on response tokens. ``scores`` (N,) are the
sequence-level rewards; ``token_rewards`` (N, T) are per-token rewards (the KL penalty on
every token plus the score on the last one) for the estimators that read them.

Every estimator returns ``(advantages (N, T), returns (N, T) or None)`` with zeros outside
the mask. Each is registered with its :class:`AdvantageSpec` — ``@register_advantage("grpo",
min_group=2, kl_in="loss")`` — and the RL recipe reads from the spec whether to build a critic,
how many samples per prompt it needs, where the KL penalty goes and the importance level by
default, whether it reads per-token rewards and whether its output is whitened. Select one with
``advantage:`` in the RL recipe:

==================  ============================================================
gae                 GAE(γ, λ) with a critic (PPO); returns = A + V
grpo                (r − mean_group) / (std_group + ε)  (std dropped with scale=False)
rloo                r − mean of the *other* G − 1 samples of the group
reinforce_pp        return-to-go of token rewards (γ = 1), normalised over the batch
reinforce_baseline  r − mean_group, divided by the std over the whole batch
==================  ============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class AdvantageInputs:
    mask: Tensor                          # (N, T) float
    scores: Tensor                        # (N,) sequence rewards (KL already folded in when in-reward)
    group_size: int = 1
    token_rewards: Tensor | None = None   # (N, T)
    values: Tensor | None = None          # (N, T) critic values V(s_t)
    gamma: float = 1.0
    lam: float = 0.95
    scale: bool | str = True              # grpo: group (True) | batch | none (False); docs/algorithms.md#score-scaling
    eps: float = 1e-4
    reduce: Callable[[Tensor], Tensor] | None = None  # data parallel: sum over processes


@dataclass(frozen=True)
class AdvantageSpec:
    """An estimator and what it needs: the rules the RL recipe reads from here instead of
    lists of names (a new estimator is one decorated function)."""

    name: str
    fn: Callable[[AdvantageInputs], tuple[Tensor, Tensor | None]]
    needs_critic: bool = False
    """Reads critic values V(s_t) (PPO's GAE): the recipe builds and trains a critic."""
    min_group: int = 1
    """Samples per prompt it needs (group baselines compare the samples of a prompt)."""
    kl_in: str = "reward"
    """Where the KL penalty goes by default (``kl_in: auto``): 'reward' (per-token reward) or 'loss'."""
    importance: str = "token"
    """Default importance level (``importance_level: auto``): one ratio per 'token' or per 'sequence'."""
    token_rewards: bool = False
    """Reads per-token rewards (the KL penalty on every token plus the score on the last one)."""
    whiten: bool = False
    """Advantages are whitened over the batch afterwards when ``whiten_advantages`` is on."""
    run_name: str = ""
    """Progress-bar and log prefix of the recipe (default: the estimator's name)."""


ADVANTAGES: dict[str, AdvantageSpec] = {}


def register_advantage(name: str, **spec):
    """Register ``fn(AdvantageInputs) -> (advantages, returns | None)`` under ``name`` with its
    :class:`AdvantageSpec` fields."""
    def deco(fn):
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator '{name}' is registered twice")
        ADVANTAGES[name] = AdvantageSpec(name, fn, **spec)
        return fn
    return deco


def get_advantage(name: str) -> AdvantageSpec:
    """The spec of ``name``; an unknown name is a ConfigError listing the valid ones."""
    from ..errors import registry_get

    return registry_get(ADVANTAGES, name, "advantage")


def masked_mean(x: Tensor, mask: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Mean over the masked entries; with ``reduce`` (a sum over data-parallel processes)
    the mean of every process's entries together."""
    sc = torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)])
    if reduce is not None:
        sc = reduce(sc)
    return sc[0] / sc[1].clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> float:
    """Population variance of the masked entries of ``x``."""
    return float(masked_mean((x - masked_mean(x, mask)) ** 2, mask))


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(x − mean) / std over the masked entries (population variance); zeros outside.
    ``reduce`` makes the statistics global over data-parallel processes."""
    mean = masked_mean(x, mask, reduce)
    var = masked_mean((x - mean) ** 2, mask, reduce)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each row's masked tokens.

    δ_t = r_t + γ·V_{t+1} − V_t with V after the last response token = 0 (the episode ends
    there), A_t = δ_t + γλ·A_{t+1}; returns R_t = A_t + V_t. Masked positions are skipped
    (they neither receive nor pass on value), so a mask with holes behaves as if the masked
    tokens were absent.

    See docs/algorithms.md#gae.
    """
    N, T = mask.shape
    adv = torch.zeros_like(values)
    next_value = values.new_zeros(N)
    next_adv = values.new_zeros(N)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    return adv, (adv + values) * mask


def group_normalize(scores: Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO: (r_i − mean of its group) / (std of its group + ε). ``std`` is the unbiased
    sample std (as in the GRPO papers' reference code); ``scale=False`` is Dr.GRPO.

    See docs/algorithms.md#grpo.
    """
    g = scores.view(-1, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale:
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


def rloo(scores: Tensor, group_size: int) -> Tensor:
    """Leave-one-out baseline: r_i − (Σ_{j≠i} r_j) / (G − 1). See docs/algorithms.md#rloo."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (rollout.num_generations >= 2)")
    g = scores.view(-1, group_size)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


def returns_to_go(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    N, T = mask.shape
    out = torch.zeros_like(token_rewards)
    running = token_rewards.new_zeros(N)
    for t in reversed(range(T)):
        running = torch.where(mask[:, t] > 0, token_rewards[:, t] + gamma * running, running)
        out[:, t] = running * mask[:, t]
    return out


def _broadcast(seq_adv: Tensor, mask: Tensor) -> Tensor:
    return seq_adv[:, None] * mask


@register_advantage("gae", needs_critic=True, token_rewards=True, whiten=True, run_name="ppo")
def _gae(x: AdvantageInputs):
    """See docs/algorithms.md#gae."""
    if x.values is None or x.token_rewards is None:
        raise ValueError("advantage 'gae' needs critic values and token rewards")
    return gae(x.token_rewards, x.values, x.mask, x.gamma, x.lam)


@register_advantage("grpo", min_group=2, kl_in="loss")
def _grpo(x: AdvantageInputs):
    """See docs/algorithms.md#grpo and docs/algorithms.md#score-scaling."""
    if x.scale == "batch":
        from .shaping import normalize_group_scores

        return _broadcast(normalize_group_scores(x.scores, x.group_size, "batch"), x.mask), None
    scale = x.scale in (True, "group")
    return _broadcast(group_normalize(x.scores, x.group_size, scale=scale, eps=x.eps), x.mask), None


@register_advantage("rloo", min_group=2, importance="sequence")
def _rloo(x: AdvantageInputs):
    """See docs/algorithms.md#rloo."""
    return _broadcast(rloo(x.scores, x.group_size), x.mask), None


@register_advantage("reinforce_pp", token_rewards=True)
def _reinforce_pp(x: AdvantageInputs):
    """See docs/algorithms.md#reinforce-pp."""
    if x.token_rewards is None:
        raise ValueError("advantage 'reinforce_pp' needs token rewards")
    ret = returns_to_go(x.token_rewards, x.mask, gamma=1.0)
    return masked_whiten(ret, x.mask, reduce=x.reduce), ret


@register_advantage("reinforce_baseline", min_group=2, kl_in="loss")
def _reinforce_baseline(x: AdvantageInputs):
    """See docs/algorithms.md#reinforce-baseline."""
    g = x.scores.view(-1, x.group_size)
    centred = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    std = centred.std() if centred.numel() > 1 else centred.new_tensor(0.0)
    return _broadcast(centred / (std + x.eps), x.mask), None


def compute_advantages(name: str, inputs: AdvantageInputs) -> tuple[Tensor, Tensor | None]:
    return get_advantage(name).fn(inputs)

"""The stages of one online-RL iteration before the updates, as functions:

    traj = rollout(engine, prompts, sampling)            # sample G responses per prompt
    res  = score(rewards, traj)                          # reward sources -> one score per response
    exp  = make_experience(models, traj, res.total, cfg) # old/ref log-probs, values, KL, advantages

``make_experience`` lays the responses out as packed minibatches (the G responses of a prompt
behind one copy of it), runs the no-grad passes on exactly those batches (old log-probs unless
the update's own forward provides them, reference log-probs, critic values), puts the KL
penalty where the estimator's spec says, and turns the scores into per-token advantages. It
returns an :class:`Experience`: one epoch's minibatches of :class:`~rlhfkit.rl.batches.RLBatch`
plus the rollout metrics. Tensors in, tensors out; nothing is kept between iterations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..data.collate import Batch, collate
from ..data.tokenize import Example
from ..losses.kl import kl_estimate
from ..losses.objectives import topq_count
from ..models.forward import completion_logprobs
from .advantages import AdvantageInputs, compute_advantages, get_advantage, masked_var, masked_whiten
from .batches import RLBatch, target_index, token_values


@dataclass
class Trajectories:
    """What the engine sampled for P prompts, G responses each (prompt-major, N = P·G)."""

    examples: list[Example]
    group: int
    completion_ids: list[list[int]]
    sampler_logps: list[list[float]]       # the sampler's log-prob of each sampled token
    finished: list[bool]                   # EOS / stop string / environment done (False = cut)
    texts: list[str]
    gen_seconds: float = 0.0
    loss_mask: list[list[int]] | None = None
    """Per completion token: 1 = sampled by the policy, 0 = written by an environment (tool
    output, observation, template tokens between turns); None = every token is the policy's."""

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


@dataclass
class Models:
    """What the no-grad passes and the loss read: the policy, the reference and the critic."""

    policy: object
    ref: object | None = None       # rlhfkit.models.reference.Reference
    critic: object | None = None
    chunk: int = 1024
    temperature: float = 1.0


@dataclass
class Experience:
    minibatches: list[list[RLBatch]]  # one epoch's updates, each a list of micro-batches
    metrics: dict
    reuse: bool                       # old log-probs come from each update's own forward
    order: torch.Generator            # shuffles the minibatches of every epoch
    advantages: Tensor | None = None  # (N, T)
    used_mask: Tensor | None = None   # (N, T): the response mask of the sequences kept for the updates
    used: Tensor | None = None        # (N,) sequences kept for the updates (not in a filtered group)


def rollout(engine, exs: list[Example], sampling, row_offset: int = 0, generator=None) -> Trajectories:
    """Sample ``sampling.n`` responses per prompt; ``row_offset`` is this process's first
    global row (batch-invariant sampling: the same prompt gets the same samples anywhere);
    ``generator``: the RNG the sampling seed is drawn from (None = the global one)."""
    return from_rollout(exs, engine.generate([ex.prompt for ex in exs], sampling, generator=generator,
                                             row_offset=row_offset))


def rollout_scored(engine, rewards, exs: list[Example], sampling, row_offset: int = 0, generator=None,
                   log: Callable[[str], None] = print):
    """:func:`rollout` and :func:`score`. An engine that scores in its own workers (the ``ray``
    engine: ``generate_scored``) scores there the sources it holds, the rest are scored here, and
    the time spent here is added to its scoring time."""
    if not hasattr(engine, "generate_scored"):
        traj = rollout(engine, exs, sampling, row_offset=row_offset, generator=generator)
        return traj, score(rewards, traj, log)
    rows = reward_inputs(exs, max(1, sampling.n))
    ro, pre = engine.generate_scored([ex.prompt for ex in exs], sampling, generator=generator,
                                     row_offset=row_offset, reward_rows=rows)
    traj = from_rollout(exs, ro)
    t0 = time.perf_counter()
    res = score(rewards, traj, log, precomputed=pre)
    engine.add_timing("score", time.perf_counter() - t0)
    return traj, res


def from_rollout(exs: list[Example], ro) -> Trajectories:
    """The :class:`Trajectories` of an engine's :class:`~rlhfkit.rl.rollout.Rollout` for ``exs``."""
    return Trajectories(exs, ro.n, ro.completion_ids, ro.logprobs, list(ro.finished), ro.texts,
                        gen_seconds=ro.gen_seconds)


def rollout_env(engine, tokenizer, env, exs: list[Example], sampling, *, max_turns: int | None = None,
                max_tokens: int | None = None, row_offset: int = 0, generator=None):
    """Multi-turn episodes of ``env`` (:mod:`rlhfkit.envs`) from each prompt row, ``sampling.n``
    per row: :class:`Trajectories` whose ``loss_mask`` is 0 on the environment's tokens, and
    the episodes' rewards as a :class:`~rlhfkit.rewards.base.CombinedScores` (source ``env``, plus
    the mean of every numeric step-info key, e.g. ``tool_calls`` and ``correct``)."""
    from ..envs.episodes import run_episodes
    from ..rewards.base import CombinedScores

    rows = [dict(ex.extra) for ex in exs]
    t0 = time.perf_counter()
    eps = run_episodes(engine, tokenizer, env, rows, sampling, max_turns=max_turns, max_total_tokens=max_tokens,
                       row_offset=row_offset, generator=generator)
    dt = time.perf_counter() - t0
    G = max(1, sampling.n)
    starts = []
    for p, ex in enumerate(exs):
        prompt = eps[p * G].prompt_ids
        if any(e.prompt_ids != prompt for e in eps[p * G:(p + 1) * G]):
            raise ValueError(f"environment {type(env).__name__}: the episodes of one row started from different "
                             "prompts; reset(row) must depend on the row only")
        starts.append(Example(ex.row, prompt, [], extra=ex.extra))
    traj = Trajectories(starts, G, [e.completion_ids for e in eps], [e.sampler_logps for e in eps],
                        [e.finished for e in eps], [e.text for e in eps], dt, [e.loss_mask for e in eps])
    per_source = {"env": [float(e.reward) for e in eps]}
    keys = sorted({k for e in eps for k, v in e.info.items() if isinstance(v, (int, float))})
    for k in keys:
        per_source[k] = [float(e.info.get(k, 0.0)) for e in eps]
    per_source["turns"] = [float(e.turns) for e in eps]
    return traj, CombinedScores(per_source["env"], per_source, [])


def select_groups(traj: Trajectories, groups: list[int]) -> Trajectories:
    """The trajectories of the prompts ``groups`` (with their G responses each), in that order."""
    G = traj.group
    rows = [p * G + k for p in groups for k in range(G)]
    pick = (lambda xs: [xs[r] for r in rows]) if rows else (lambda xs: [])
    return Trajectories([traj.examples[p] for p in groups], G, pick(traj.completion_ids), pick(traj.sampler_logps),
                        pick(traj.finished), pick(traj.texts), traj.gen_seconds,
                        pick(traj.loss_mask) if traj.loss_mask is not None else None)


def concat(trajs: list[Trajectories]) -> Trajectories:
    """One :class:`Trajectories` of several rollouts with the same group size (their generation
    seconds added)."""
    t0 = trajs[0]
    cat = (lambda f: [x for t in trajs for x in getattr(t, f)])
    masks = None
    if any(t.loss_mask is not None for t in trajs):
        masks = [m for t in trajs for m in (t.loss_mask or [[1] * len(c) for c in t.completion_ids])]
    return Trajectories(cat("examples"), t0.group, cat("completion_ids"), cat("sampler_logps"), cat("finished"),
                        cat("texts"), sum(t.gen_seconds for t in trajs), masks)


def reward_inputs(exs: list[Example], n: int) -> tuple[list, list[dict]]:
    """The reward sources' ``prompts`` and ``extras`` of ``n`` responses per example (prompt-major)."""
    prompts = [ex.extra.get("prompt") for ex in exs for _ in range(n)]
    extras = [{k: v for k, v in ex.extra.items() if k != "prompt"} for ex in exs for _ in range(n)]
    return prompts, extras


def score(rewards, traj: Trajectories, log: Callable[[str], None] = print, precomputed: dict | None = None):
    """The reward sources on every response (``precomputed``: results of some sources already
    computed elsewhere, by source index); the first reward errors are logged."""
    prompts, extras = reward_inputs(traj.examples, traj.group)
    res = rewards.score(prompts, traj.texts, extras, precomputed=precomputed) if precomputed \
        else rewards.score(prompts, traj.texts, extras)
    for msg in res.errors[:3]:
        log(f"[rl] {msg}")
    if len(res.errors) > 3:
        log(f"[rl] ... {len(res.errors) - 3} more reward errors in this batch")
    return res


def rollout_metrics(traj: Trajectories, res, scores: Tensor) -> dict:
    N, P, G = len(traj.completion_ids), len(traj.examples), traj.group
    lengths = torch.tensor([len(c) for c in traj.completion_ids], dtype=torch.float32)
    finished = torch.tensor(traj.finished, dtype=torch.bool)
    m = {"rollout/reward": float(scores.mean()), "rollout/reward_std": float(scores.std()) if N > 1 else 0.0,
         "rollout/length_mean": float(lengths.mean()), "rollout/length_max": float(lengths.max()),
         "rollout/truncated_frac": float((~finished).float().mean()),
         "rollout/gen_seconds": traj.gen_seconds, "rollout/reward_errors": float(len(res.errors))}
    for name, vals in res.per_source.items():
        v = torch.tensor(vals, dtype=torch.float32)
        ok = ~torch.isnan(v)
        m[f"rollout/reward/{name}"] = float(v[ok].mean()) if ok.any() else float("nan")
    m["rollout/zero_std_frac"] = float(zero_spread(scores, P, G).float().mean())
    return m


def zero_spread(scores: Tensor, P: int, G: int) -> Tensor:
    """(P,) groups whose G rewards are all equal (no learning signal for a group baseline)."""
    grouped = scores.view(P, G)
    return (grouped.max(1).values == grouped.min(1).values) if G > 1 else torch.zeros(P, dtype=torch.bool)


def response_mask(traj: Trajectories, mask_truncated: bool) -> Tensor:
    """(N, T) 1 on the tokens the policy sampled; truncated responses are dropped with
    ``mask_truncated``."""
    N, T = len(traj.completion_ids), max(1, max(len(c) for c in traj.completion_ids))
    mask = torch.zeros(N, T)
    for n, c in enumerate(traj.completion_ids):
        if traj.loss_mask is None:
            mask[n, :len(c)] = 1.0
        else:
            mask[n, :len(c)] = torch.tensor(traj.loss_mask[n], dtype=torch.float32)
    if mask_truncated:
        mask[~torch.tensor(traj.finished, dtype=torch.bool)] = 0.0
    return mask


def pack_minibatches(traj: Trajectories, keep: list[int], num_minibatches: int, micro: int, order: torch.Generator,
                     pad_id: int, train_cfg, device) -> list[list[tuple[Batch, list[int]]]]:
    """The kept prompts in a random order split into ``num_minibatches`` minibatches, each packed
    as micro-batches of ``micro`` prompts (a prompt's G responses share one copy of it)."""
    G = traj.group
    shuffled = [keep[i] for i in torch.randperm(len(keep), generator=order).tolist()]
    mbs = [sorted(shuffled[i::num_minibatches]) for i in range(num_minibatches)]
    plans = []
    for mb in (mb for mb in mbs if mb):
        parts = []
        for i in range(0, len(mb), micro):
            ps = mb[i:i + micro]
            exs = [Example(traj.examples[p].row, traj.examples[p].prompt, traj.completion_ids[p * G:(p + 1) * G])
                   for p in ps]
            b = collate(exs, pad_id=pad_id, pack_length=train_cfg.pack_length, share_prompt=True,
                        pack=train_cfg.packing)
            parts.append((b.to(device), ps))
        plans.append(parts)
    return plans


@torch.no_grad()
def no_grad_passes(models: Models, plans, N: int, T: int, G: int, old: bool) -> tuple:
    """Flat (N·T) old log-probs (when ``old``), reference log-probs (with a reference) and critic
    values (with a critic), computed on the batches the updates will use."""
    flat_old = torch.zeros(N * T) if old else None
    flat_ref = torch.zeros(N * T) if models.ref is not None else None
    flat_val = torch.zeros(N * T) if models.critic is not None else None
    for parts in plans:
        for b, ps in parts:
            idx = target_index(b, ps, G, T)
            if flat_old is not None:
                flat_old[idx] = completion_logprobs(models.policy, b, chunk=models.chunk,
                                                    temperature=models.temperature).token_logps.float().cpu()
            if flat_ref is not None:
                flat_ref[idx] = models.ref.logprobs(b, temperature=models.temperature).token_logps.float().cpu()
            if flat_val is not None:
                flat_val[idx] = token_values(models.critic, b).cpu()
    return flat_old, flat_ref, flat_val


def kl_penalty(old: Tensor, ref: Tensor, mask: Tensor, used: Tensor, estimator: str, m: dict) -> Tensor:
    """Per-token KL estimate of the rollout policy to the reference (zero off the mask); the
    mean sequence KL (k1, k3) over the used sequences goes into ``m``."""
    kl_tok = kl_estimate(old, ref, estimator) * mask
    k1_seq = ((old - ref) * mask).sum(1)
    m["rollout/kl"] = float(k1_seq[used].mean()) if used.any() else 0.0
    m["rollout/kl_k3"] = float((kl_estimate(old, ref, "k3") * mask).sum(1)[used].mean()) if used.any() else 0.0
    return kl_tok


def sampler_grid(traj: Trajectories, N: int, T: int) -> Tensor:
    samp = torch.zeros(N, T)
    for n, lp in enumerate(traj.sampler_logps):
        samp[n, :len(lp)] = torch.tensor(lp)
    return samp


@dataclass
class ExperienceConfig:
    """The keys of :class:`~rlhfkit.rl.config.RLConfig` that shape the experience."""

    advantage: str
    kl_where: str                 # "reward" | "loss"
    kl_estimator: str = "k3"
    beta: float = 0.0             # the KL controller's current β
    reuse: bool = False           # old log-probs from each update's own forward
    exact_sampler: bool = True    # no top-k/top-p: the sampler's log-probs are the trainer's distribution
    keep_sampler: bool = False    # the updates read the sampler's log-probs (rollout correction)
    mask_truncated: bool = False
    filter_zero_std: bool = False
    num_minibatches: int = 1
    micro: int = 1
    gamma: float = 1.0
    lam: float = 0.95
    scale_rewards: str = "group"
    whiten: bool = True
    reduce: Callable | None = None  # data parallel: a sum over processes


def make_experience(models: Models, traj: Trajectories, scores: Tensor, ec: ExperienceConfig, pad_id: int,
                    train_cfg, m: dict) -> Experience:
    """Old/reference log-probs, values, KL-in-reward and advantages for ``traj`` (see the module
    docstring); ``m`` (the rollout metrics) gains the KL and value statistics."""
    P, G = len(traj.examples), traj.group
    N = P * G
    mask = response_mask(traj, ec.mask_truncated)
    T = mask.shape[1]
    keep = [p for p in range(P) if not (ec.filter_zero_std and bool(zero_spread(scores, P, G)[p]))]
    order = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    device = next(models.policy.parameters()).device
    plans = pack_minibatches(traj, keep, ec.num_minibatches, ec.micro, order, pad_id, train_cfg, device)
    flat_old, flat_ref, flat_val = no_grad_passes(models, plans, N, T, G, old=not ec.reuse)
    used = torch.zeros(N, dtype=torch.bool)  # sequences of dropped groups: out of the statistics
    for p in keep:
        used[p * G:(p + 1) * G] = True
    umask = mask * used[:, None]
    samp = sampler_grid(traj, N, T)
    old = flat_old.view(N, T) if flat_old is not None else None
    if ec.exact_sampler and old is not None:
        m["rollout/sampler_logp_diff"] = float(((samp - old).abs() * umask).sum() / umask.sum().clamp(min=1))

    token_rewards, seq_scores = torch.zeros(N, T), scores.clone()
    if flat_ref is not None and old is not None:
        kl_tok = kl_penalty(old, flat_ref.view(N, T), mask, used, ec.kl_estimator, m)
        if ec.kl_where == "reward" and ec.beta > 0:
            token_rewards -= ec.beta * kl_tok
            seq_scores = seq_scores - ec.beta * kl_tok.sum(1)
    last = (mask.sum(1).long() - 1).clamp(min=0)  # the score lands on each response's last token
    token_rewards[torch.arange(N), last] += scores * (mask.sum(1) > 0)
    values = flat_val.view(N, T) if flat_val is not None else None
    spec = get_advantage(ec.advantage)
    adv, returns = compute_advantages(ec.advantage, AdvantageInputs(
        mask=mask, scores=seq_scores, group_size=G, token_rewards=token_rewards if spec.token_rewards else None,
        values=values, gamma=ec.gamma, lam=ec.lam, scale=ec.scale_rewards, reduce=ec.reduce))
    if spec.whiten and ec.whiten:
        adv = masked_whiten(adv, umask, reduce=ec.reduce)
    if values is not None:
        var_r = masked_var(returns, umask)
        m["ppo/explained_variance"] = float(1 - masked_var(returns - values, umask) / var_r) if var_r > 0 else 0.0
        m["ppo/value_mean"] = float((values * umask).sum() / umask.sum().clamp(min=1))

    grids = {"advantages": adv, "mask": mask, "old_logp": old, "ref_logp": flat_ref, "old_values": flat_val,
             "returns": returns, "sampler_logp": samp if (ec.reuse and ec.exact_sampler) or ec.keep_sampler else None}
    minibatches = [slice_updates(parts, grids, G, T) for parts in plans]
    return Experience(minibatches, m, ec.reuse, order, adv, umask, used)


def slice_updates(parts, grids: dict, G: int, T: int) -> list[RLBatch]:
    """The per-target slices of the (N, T) grids for each packed micro-batch of a minibatch."""
    flat = {k: (v.reshape(-1) if v is not None else None) for k, v in grids.items()}
    rbs = []
    for b, ps in parts:
        idx = target_index(b, ps, G, T)
        dev = b.tgt_ids.device
        pick = {k: (v[idx].to(dev) if v is not None else None) for k, v in flat.items()}
        rbs.append(RLBatch(b, pick["old_logp"], pick["advantages"], pick["mask"], ref_logp=pick["ref_logp"],
                           old_values=pick["old_values"], returns=pick["returns"],
                           sampler_logp=pick["sampler_logp"]))
    return rbs


def with_count(rbs: list[RLBatch], loss_agg: str, reduce: Callable | None, world: int,
               top_q: float = 1.0) -> list[RLBatch]:
    """Each micro-batch's item count in the loss-aggregation unit, and the update's token total
    (the value loss is a mean over it on every process). With ``top_q`` < 1 (entropy masking) a
    token mean counts the ⌈q·N⌉ tokens the loss keeps; a sequence mean counts every sequence
    with response tokens (one whose tokens were all left out contributes 0)."""
    for rb in rbs:
        if loss_agg == "dapo":
            rb.count = float(topq_count(int(rb.mask.sum()), top_q) if top_q < 1 else rb.mask.sum())
        else:
            n = rb.mask.new_zeros(rb.batch.num_sequences).index_add(0, rb.batch.tgt_seq, rb.mask)
            rb.count = float((n > 0).sum())
    tokens = sum(float(rb.mask.sum()) for rb in rbs)
    if reduce is not None:  # the loop averages recipe-normalised terms over processes, hence / world
        tokens = float(reduce(torch.tensor([tokens], dtype=torch.float64))[0]) / world
    for rb in rbs:
        rb.update_tokens = max(tokens, 1.0)
    return rbs

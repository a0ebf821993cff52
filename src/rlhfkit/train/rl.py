"""Online RL: one recipe for PPO, GRPO, RLOO and REINFORCE++ (``advantage:`` picks).

    rlhfkit grpo --config grpo_arithmetic
    rlhfkit ppo  --config ppo_arithmetic

Every loop step: take ``train.batch_size`` prompts; sample ``rollout.num_generations``
responses each from the current policy (KV-cache decode); score them with the configured
rewards; compute the old log-probs (and reference log-probs / critic values) once, without
gradients, on the very batches the updates will use (with one update per rollout the old
log-probs are that update's own forward, detached: ``reuse_logps``); turn rewards into per-token
advantages with the chosen estimator; then run ``num_iterations`` epochs over
``num_minibatches`` minibatches, one optimizer update each (stopping the epochs early when
the approximate KL to the rollout policy passes ``target_kl``).

The G responses of a prompt are packed behind one copy of the prompt (the prompt is
computed once for the whole group), with the same block-diagonal masks as the offline
recipes.

Where the KL to the reference goes (``kl_in``): in the *reward* for PPO (per token,
−β·KL on every token before GAE), REINFORCE++ (per token) and RLOO (summed per sequence);
in the *loss* (+β·KL per token, k3 by default) for GRPO and REINFORCE-baseline.

PPO's critic is a separate model with a scalar value head (initialised from the first
reward model when one is configured, as in InstructGPT, else from the policy's weights):
separate weights keep the value regression from pulling on the policy's representation,
and on one CPU the extra 135 M parameters cost ~0.5 GB + their optimizer state.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time

import torch

from ..config import validate_all
from ..data.collate import Batch, collate
from ..data.pipeline import load_examples
from ..data.tokenize import Example
from ..errors import ConfigError
from ..losses.kl import kl_estimate
from ..losses.policy import aggregate, clipped_surrogate, clipped_value_loss, sequence_clipped_surrogate
from ..losses.sft import sft_loss
from ..models.forward import completion_logprobs, disable_dropout, unwrap
from ..models.loading import load_model, load_scalar_model
from ..models.reference import Reference, choose_mode
from ..rewards.base import build_rewards, reward_config_from
from ..rl.advantages import AdvantageInputs, compute_advantages, get_advantage, masked_var, masked_whiten
from ..rl.batches import OnPolicyStats, PolicyWithCritic, RLBatch, critic_of, policy_of, target_index, token_values
from ..rl.config import (CriticConfig, GRPOConfig, PPOConfig, RLConfig, RolloutConfig,  # noqa: F401
                         importance_level, kl_placement, validate)  # noqa: F401  (validate: public API)
from ..rl.kl_control import make_kl_controller
from ..rl.monitors import RewardHackingMonitor
from ..rl.rollout import SamplingParams, check_kv_cache, make_backend, rollout_options
from .common import dist_rank, dist_sum, save_model
from .completions import CompletionLog
from .loop import Recipe, Trainer, start_run
from .prompts import load_prompts


# ---------------------------------------------------------------------------- the recipe
class OnlineRL:
    """State and callbacks of one online-RL run (rollouts, rewards, advantages, losses)."""

    def __init__(self, cfg: RLConfig, model, tokenizer, log=print, ref_model=None, critic=None,
                 rewards=None):
        self.cfg, self.tok, self.log = cfg, tokenizer, log
        self.G = cfg.rollout.num_generations
        self.chunk = cfg.train.logprob_chunk
        self.importance = importance_level(cfg)
        # log-probs of sampled tokens (old, new, reference, evaluation KL) are taken under the
        # sampling temperature: the samples come from softmax(z/T) (docs/algorithms.md#temperature)
        self.temperature = cfg.rollout.temperature
        self.kl_where = kl_placement(cfg)
        self.policy = model
        self.critic = critic
        self.rewards = rewards if rewards is not None else build_rewards(cfg.rewards)
        wants_ref = cfg.kl_coef > 0 or cfg.kl_target > 0
        mode = cfg.reference
        if mode == "auto" and not wants_ref:
            mode = "none"
        self.ref = None
        if mode != "none":
            mode = choose_mode(mode, needs_reference=True, lora=cfg.model.lora.r > 0, needs_live=True)
            if mode == "model" and ref_model is None:
                ref_model = load_model(cfg.ref_model)[0] if cfg.ref_model else copy.deepcopy(unwrap(model))
            self.ref = Reference(mode, policy=model, model=ref_model, chunk=self.chunk)
        elif wants_ref:
            raise ConfigError("kl_coef > 0 needs a reference; use reference=auto|model|adapters")
        self.kl_ctl = make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.sampling = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens,
                                       temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                       top_k=cfg.rollout.top_k, n=self.G, stop=list(cfg.rollout.stop))
        # refuse a max_new_tokens whose KV cache cannot fit before any step (the decode loop
        # checks again with the real prompt lengths)
        rows = min(cfg.rollout.batch_size, cfg.train.batch_size * cfg.train.grad_accum * self.G)
        check_kv_cache(model, rows, cfg.rollout.max_new_tokens + 1)
        self.backend = make_backend(cfg.rollout.backend, model, tokenizer, **rollout_options(cfg.rollout))
        self.pad_id = tokenizer.pad_token_id
        self.ptx: list[Example] = []
        self.ptx_pos = 0
        self.last: dict = {}
        self.onpolicy = OnPolicyStats()
        self.state: dict = {}  # saved with every checkpoint
        self.completions = CompletionLog.for_run(cfg.train)  # train.log_completions

    # ----------------------------------------------------------------- rollout + scoring
    def _prompt(self, ex: Example):
        return ex.extra.get("prompt")

    def _extras(self, ex: Example) -> dict:
        return {k: v for k, v in ex.extra.items() if k != "prompt"}

    def score(self, exs: list[Example], texts: list[str], n: int):
        prompts = [self._prompt(ex) for ex in exs for _ in range(n)]
        extras = [self._extras(ex) for ex in exs for _ in range(n)]
        res = self.rewards.score(prompts, texts, extras)
        for msg in res.errors[:3]:
            self.log(f"[rl] {msg}")
        if len(res.errors) > 3:
            self.log(f"[rl] ... {len(res.errors) - 3} more reward errors in this batch")
        return res

    def plan(self, model, micro_batches: list, step: int):
        cfg = self.cfg
        exs = [ex for mb in micro_batches for ex in mb]
        policy, critic = policy_of(model), critic_of(model)
        if "kl_ctl" in self.state:  # the controller's value as checkpointed (resume-safe)
            self.kl_ctl.load_state_dict(self.state["kl_ctl"])
        t0 = time.perf_counter()
        # this process's prompts are rows [rank * P, (rank + 1) * P) of the global batch
        ro = self.backend.generate([ex.prompt for ex in exs], self.sampling,
                                   row_offset=dist_rank() * len(exs) * self.G)
        t_gen = time.perf_counter() - t0
        res = self.score(exs, ro.texts, self.G)
        scores = torch.tensor(res.total, dtype=torch.float32)
        P, G = len(exs), self.G
        N = P * G
        lengths = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float32)
        finished = torch.tensor(ro.finished, dtype=torch.bool)
        m = {"rollout/reward": float(scores.mean()), "rollout/reward_std": float(scores.std()) if N > 1 else 0.0,
             "rollout/length_mean": float(lengths.mean()), "rollout/length_max": float(lengths.max()),
             "rollout/truncated_frac": float((~finished).float().mean()),
             "rollout/gen_tokens_per_s": float(lengths.sum()) / max(t_gen, 1e-9),
             "rollout/gen_seconds": t_gen, "rollout/reward_errors": float(len(res.errors))}
        for name, vals in res.per_source.items():
            v = torch.tensor(vals, dtype=torch.float32)
            ok = ~torch.isnan(v)
            m[f"rollout/reward/{name}"] = float(v[ok].mean()) if ok.any() else float("nan")
        grouped = scores.view(P, G)
        zero_std = (grouped.max(1).values == grouped.min(1).values) if G > 1 else torch.zeros(P, dtype=torch.bool)
        m["rollout/zero_std_frac"] = float(zero_std.float().mean())

        # layout: one example per prompt, its G completions behind one copy of the prompt
        T = int(lengths.max())
        mask = torch.zeros(N, T)
        for n, c in enumerate(ro.completion_ids):
            mask[n, :len(c)] = 1.0
        if cfg.mask_truncated:
            mask[~finished] = 0.0
        keep = [p for p in range(P) if not (cfg.filter_zero_std and bool(zero_std[p]))]
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        order = [keep[i] for i in torch.randperm(len(keep), generator=gen).tolist()]
        mbs = [order[i::cfg.num_minibatches] for i in range(cfg.num_minibatches)]
        mbs = [sorted(mb) for mb in mbs if mb]
        micro = cfg.micro_batch_size or max(1, P)
        plans: list[list[tuple[Batch, list[int]]]] = []
        for mb in mbs:
            parts = []
            for i in range(0, len(mb), micro):
                ps = mb[i:i + micro]
                batch_exs = [Example(exs[p].row, exs[p].prompt, ro.completion_ids[p * G:(p + 1) * G])
                             for p in ps]
                b = collate(batch_exs, pad_id=self.pad_id, pack_length=cfg.train.pack_length,
                            share_prompt=True, pack=cfg.train.packing)
                dev = next(policy.parameters()).device
                parts.append((b.to(dev), ps))
            plans.append(parts)

        # no-grad passes on the exact batches the updates use; with one update per rollout and
        # no KL in the reward the old log-probs come from the update's own forward instead
        reuse = (cfg.reuse_logps and cfg.num_iterations == 1 and len(plans) == 1 and cfg.kl_target <= 0
                 and (self.ref is None or self.kl_where == "loss"))
        flat_old = torch.zeros(N * T) if not reuse else None
        flat_ref = torch.zeros(N * T) if self.ref is not None else None
        flat_val = torch.zeros(N * T) if critic is not None else None
        with torch.no_grad():
            for parts in plans:
                for b, ps in parts:
                    idx = target_index(b, ps, G, T)
                    if not reuse:
                        flat_old[idx] = completion_logprobs(policy, b, chunk=self.chunk,
                                                            temperature=self.temperature).token_logps.float().cpu()
                    if flat_ref is not None:
                        flat_ref[idx] = self.ref.logprobs(b, temperature=self.temperature).token_logps.float().cpu()
                    if flat_val is not None:
                        flat_val[idx] = token_values(critic, b).cpu()
        old = flat_old.view(N, T) if flat_old is not None else None
        # sequences of dropped (zero-std) groups have no old log-probs: leave them out of the stats
        used = torch.zeros(N, dtype=torch.bool)
        for p in keep:
            used[p * G:(p + 1) * G] = True
        umask = mask * used[:, None]
        samp = torch.zeros(N, T)
        for n, lp in enumerate(ro.logprobs):
            samp[n, :len(lp)] = torch.tensor(lp)
        # the sampler's log-probs are of softmax(z/T) after top-k/top-p; without those filters they
        # are the distribution the trainer scores, so the two must agree
        exact_sampler = cfg.rollout.top_p >= 1.0 and cfg.rollout.top_k == 0
        if exact_sampler and not reuse:
            m["rollout/sampler_logp_diff"] = float(((samp - old).abs() * umask).sum() / umask.sum().clamp(min=1))

        # rewards with the KL penalty, advantages
        beta = self.kl_ctl.value
        token_rewards = torch.zeros(N, T)
        seq_scores = scores.clone()
        if flat_ref is not None and not reuse:
            ref = flat_ref.view(N, T)
            kl_tok = kl_estimate(old, ref, cfg.kl_estimator) * mask
            k1_seq = ((old - ref) * mask).sum(1)
            m["rollout/kl"] = float(k1_seq[used].mean()) if used.any() else 0.0
            m["rollout/kl_k3"] = float((kl_estimate(old, ref, "k3") * mask).sum(1)[used].mean()) if used.any() else 0.0
            if self.kl_where == "reward" and beta > 0:
                token_rewards -= beta * kl_tok
                seq_scores = seq_scores - beta * kl_tok.sum(1)
        last = (mask.sum(1).long() - 1).clamp(min=0)
        token_rewards[torch.arange(N), last] += scores * (mask.sum(1) > 0)
        values = flat_val.view(N, T) if flat_val is not None else None
        spec = get_advantage(cfg.advantage)  # what the estimator reads, and whether it is whitened
        adv, returns = compute_advantages(cfg.advantage, AdvantageInputs(
            mask=mask, scores=seq_scores, group_size=G, token_rewards=token_rewards if spec.token_rewards else None,
            values=values, gamma=cfg.gamma, lam=cfg.lam, scale=cfg.scale_rewards, reduce=dist_sum()))
        if spec.whiten and cfg.whiten_advantages:
            adv = masked_whiten(adv, umask, reduce=dist_sum())
        self.completions.log_rollout(step, exs, G, ro.texts, res, adv, umask)
        if values is not None:
            var_r = masked_var(returns, umask)
            m["ppo/explained_variance"] = float(1 - masked_var(returns - values, umask) / var_r) if var_r > 0 else 0.0
            m["ppo/value_mean"] = float((values * umask).sum() / umask.sum().clamp(min=1))
        m["rollout/kl_coef"] = beta
        if flat_ref is not None and "rollout/kl" in m:
            self.kl_ctl.update(m["rollout/kl"], int(used.sum()))

        flat_adv = adv.reshape(-1)
        flat_ret = returns.reshape(-1) if returns is not None else None
        flat_mask = mask.reshape(-1)
        updates: list[list[RLBatch]] = []
        for parts in plans:
            rbs = []
            for b, ps in parts:
                idx = target_index(b, ps, G, T)
                dev = b.tgt_ids.device
                rb = RLBatch(b, None if reuse else flat_old[idx].to(dev), flat_adv[idx].to(dev),
                             flat_mask[idx].to(dev),
                             ref_logp=flat_ref[idx].to(dev) if flat_ref is not None else None,
                             old_values=flat_val[idx].to(dev) if flat_val is not None else None,
                             returns=flat_ret[idx].to(dev) if flat_ret is not None else None,
                             sampler_logp=samp.reshape(-1)[idx].to(dev) if reuse and exact_sampler else None)
                rb.count = self._count(rb)
                rbs.append(rb)
            tokens = sum(float(rb.mask.sum()) for rb in rbs)
            red = dist_sum()
            if red is not None:  # the value loss is a mean over the update's tokens on every
                # process; the loop averages recipe-normalised terms over processes, hence / world
                world = torch.distributed.get_world_size()
                tokens = float(red(torch.tensor([tokens], dtype=torch.float64))[0]) / world
            for rb in rbs:
                rb.update_tokens = max(tokens, 1.0)
            if self.ptx_dataset():
                rbs[0].ptx = self.next_ptx(next(policy.parameters()).device)
            if sum(rb.count for rb in rbs) > 0:
                updates.append(rbs)
        m["rollout/skipped_all"] = float(not updates)
        self.last = {}
        self.onpolicy = OnPolicyStats()

        def run():
            m["train/early_stopped"] = 0.0
            try:
                for epoch in range(cfg.num_iterations):
                    for u in torch.randperm(len(updates), generator=gen).tolist():
                        yield updates[u]
                        if cfg.target_kl > 0 and self.last.get("approx_kl", 0.0) > cfg.target_kl:
                            m["train/early_stopped"] = 1.0  # approx-KL passed target_kl: no more epochs
                            return
            finally:
                if reuse:  # the rollout metrics the skipped pass would have given, from the updates
                    self.onpolicy.write(m, flat_ref is not None, exact_sampler)

        counts = torch.tensor([float(sum(rb.num_real_tokens for u in updates for rb in u)), float(lengths.sum())],
                              dtype=torch.float64)
        red = dist_sum()  # counts of every process (the loop averages the already global numbers)
        counts = red(counts) if red is not None else counts
        m["train/train_tokens"], m["rollout/gen_tokens"] = float(counts[0]), float(counts[1])
        m["rollout/gen_tokens_per_s"] = float(counts[1]) / max(t_gen, 1e-9)
        return run(), m

    def _count(self, rb: RLBatch) -> float:
        S = rb.batch.num_sequences
        if self.cfg.loss_agg == "dapo":
            return float(rb.mask.sum())
        n = rb.mask.new_zeros(S).index_add(0, rb.batch.tgt_seq, rb.mask)
        return float((n > 0).sum())

    # ----------------------------------------------------------------- PPO-ptx data
    def ptx_dataset(self) -> bool:
        return self.cfg.ptx_coef > 0 and bool(self.ptx)

    def next_ptx(self, device) -> Batch:
        n = self.cfg.ptx_batch_size
        exs = [self.ptx[(self.ptx_pos + i) % len(self.ptx)] for i in range(n)]
        self.ptx_pos = (self.ptx_pos + n) % len(self.ptx)
        return collate(exs, pad_id=self.pad_id, pack_length=self.cfg.train.pack_length,
                       share_prompt=False, pack=self.cfg.train.packing).to(device)

    # ----------------------------------------------------------------- the loss
    def step(self, model, rb: RLBatch):
        cfg = self.cfg
        policy, critic = policy_of(model), critic_of(model)
        b = rb.batch
        out = completion_logprobs(policy, b, chunk=self.chunk, entropy=True, temperature=self.temperature)
        logp = out.token_logps
        old = rb.old_logp if rb.old_logp is not None else logp.detach()  # reuse_logps: ρ = 1
        mask = rb.mask
        if self.importance == "sequence":  # one ratio per completion (docs/algorithms.md#importance-level)
            seq_pg, seq_ratio, seq_clipped, live = sequence_clipped_surrogate(
                logp, old, rb.advantages, mask, b.tgt_seq, b.num_sequences,
                eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high)
            pg = torch.zeros_like(logp)
            ratio, clipped = seq_ratio[b.tgt_seq], seq_clipped[b.tgt_seq]
        else:
            pg, ratio, clipped = clipped_surrogate(logp, old, rb.advantages,
                                                   eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high)
        tok_loss = pg
        nt = mask.sum().clamp(min=1)
        metrics = {}
        if rb.ref_logp is not None:
            kl = kl_estimate(logp, rb.ref_logp, cfg.kl_estimator)
            if self.kl_where == "loss" and self.kl_ctl.value > 0:
                tok_loss = tok_loss + self.kl_ctl.value * kl
            metrics["kl_token"] = float((kl.detach() * mask).sum() / nt)
        if rb.old_logp is None:
            self.onpolicy.add(old, rb)
        if cfg.entropy_coef:
            tok_loss = tok_loss - cfg.entropy_coef * out.entropy
        loss_sum, _ = aggregate(tok_loss, mask, b.tgt_seq, b.num_sequences, cfg.loss_agg,
                                cfg.rollout.max_new_tokens)
        if self.importance == "sequence":  # the loop divides by the step's sequence count
            loss_sum = loss_sum + seq_pg.sum()
            metrics["policy_loss_seq"] = float(seq_pg.detach()[live].mean()) if live.any() else 0.0
        log_ratio = (logp.detach() - old)
        approx_kl = float((((ratio - 1) - log_ratio) * mask).sum() / nt)
        metrics.update({"policy_loss": float((pg.detach() * mask).sum() / nt),
                        "clip_frac": float((clipped.float() * mask).sum() / nt),
                        "approx_kl": approx_kl, "ratio_mean": float((ratio * mask).sum() / nt),
                        "entropy": float((out.entropy.detach() * mask).sum() / nt)})
        self.last["approx_kl"] = approx_kl
        extra = None
        if critic is not None:
            v = token_values(critic, b)
            vl, vclipped = clipped_value_loss(v, rb.old_values, rb.returns, cfg.critic.value_clip)
            extra = cfg.critic.vf_coef * (vl * mask).sum() / rb.update_tokens
            metrics["value_loss"] = float((vl.detach() * mask).sum() / nt)
            metrics["value_clip_frac"] = float((vclipped.float() * mask).sum() / nt)
        if rb.ptx is not None:
            po = completion_logprobs(policy, rb.ptx, chunk=self.chunk)
            nll, pm = sft_loss(po.token_logps, rb.ptx.tgt_mask)
            ptx = cfg.ptx_coef * nll.sum() / rb.ptx.tgt_mask.sum().clamp(min=1)
            extra = ptx if extra is None else extra + ptx
            metrics["ptx_nll"] = pm["nll"]
        return loss_sum, metrics, extra

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model, evals: list[Example]) -> dict:
        policy = policy_of(model)
        res: dict = {}
        greedy = dataclasses.replace(self.sampling, temperature=0.0, n=1)
        ro = self.backend.generate([ex.prompt for ex in evals], greedy)
        sc = self.score(evals, ro.texts, 1)
        res["greedy/reward"] = sum(sc.total) / len(sc.total)
        for name, vals in sc.per_source.items():
            res[f"greedy/{name}"] = _nanmean(vals)
        res["greedy/length"] = sum(len(c) for c in ro.completion_ids) / len(ro.completion_ids)
        k = self.cfg.eval_samples
        if k > 0:
            sp = dataclasses.replace(self.sampling, n=k)
            ro = self.backend.generate([ex.prompt for ex in evals], sp)
            sc = self.score(evals, ro.texts, k)
            res["sampled/reward"] = sum(sc.total) / len(sc.total)
            for name, vals in sc.per_source.items():
                res[f"sampled/{name}"] = _nanmean(vals)
            res["sampled/length"] = sum(len(c) for c in ro.completion_ids) / len(ro.completion_ids)
            res["sampled/truncated_frac"] = sum(not f for f in ro.finished) / len(ro.finished)
            if self.ref is not None:  # KL(π‖π_ref) per sequence, from the policy's own samples
                total, n = 0.0, 0
                for i in range(0, len(evals), self.cfg.train.eval_batch_size):
                    sub = evals[i:i + self.cfg.train.eval_batch_size]
                    exs = [Example(ex.row, ex.prompt, ro.completion_ids[(i + j) * k:(i + j + 1) * k])
                           for j, ex in enumerate(sub)]
                    b = collate(exs, pad_id=self.pad_id, pack_length=self.cfg.train.pack_length).to(
                        next(policy.parameters()).device)
                    lp = completion_logprobs(policy, b, chunk=self.chunk, temperature=self.temperature).seq_logps
                    rp = self.ref.logprobs(b, temperature=self.temperature).seq_logps
                    total += float((lp - rp).sum())
                    n += b.num_sequences
                res["sampled/kl"] = total / max(n, 1)
        return res


def _nanmean(vals: list[float]) -> float:
    ok = [v for v in vals if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else float("nan")


def build(cfg: RLConfig, log=print, model=None, tokenizer=None, ref_model=None) -> Trainer:
    validate_all(cfg)
    cfg.rewards = [reward_config_from(r) for r in cfg.rewards]
    rewards = build_rewards(cfg.rewards)  # bad references fail before any model is loaded
    if model is None:
        model, tokenizer = load_model(cfg.model)
    disable_dropout(model)
    train, evals = load_prompts(cfg, tokenizer, log)
    critic = None
    if get_advantage(cfg.advantage).needs_critic:
        name = cfg.critic.name or next((r.path.split(",")[0] for r in cfg.rewards if r.type == "model"), "")
        ccfg = dataclasses.replace(cfg.model, name=name or cfg.model.name,
                                   freeze_layers=cfg.model.freeze_layers if cfg.critic.freeze_layers < 0
                                   else cfg.critic.freeze_layers)
        critic = load_scalar_model(ccfg)[0]
        if not name:  # start from the policy's current weights (e.g. a model passed in memory)
            critic.load_state_dict({k: v for k, v in unwrap(model).state_dict().items()
                                    if not k.startswith("lm_head")}, strict=False)
        disable_dropout(critic)
        log(f"[rl] critic initialised from {name or 'the policy'}")
    rl = OnlineRL(cfg, model, tokenizer, log, ref_model=ref_model, critic=critic, rewards=rewards)
    if cfg.ptx_coef > 0:
        pcfg = dataclasses.replace(cfg.data, path=cfg.ptx_path, rows="", eval_path="", eval_rows="")
        rl.ptx = load_examples(pcfg, tokenizer, ("prompt_completion", "language_modeling"), log)[0]
    trained = PolicyWithCritic(model, critic) if critic is not None else model
    log(f"[rl] advantage={cfg.advantage} loss_agg={cfg.loss_agg} G={rl.G} kl_coef={cfg.kl_coef} "
        f"(kl in {rl.kl_where}) reference={rl.ref.mode if rl.ref else 'none'} "
        f"prompts={len(train)} eval_prompts={len(evals)}")

    def param_groups(m):
        if critic is None:
            return [p for p in m.parameters() if p.requires_grad]
        return [{"params": [p for p in model.parameters() if p.requires_grad]},
                {"params": [p for p in critic.parameters() if p.requires_grad],
                 "lr": cfg.critic.lr or cfg.train.lr}]

    def save(m, path):  # the plain parts, not their data-parallel wrappers
        save_model(model, tokenizer, path, cfg.model.lora, cfg)
        if critic is not None and cfg.critic.save:
            save_model(critic, tokenizer, os.path.join(os.path.dirname(path), "critic"), cfg.model.lora)

    gold = [n for n, w in zip(rewards.names, rewards.weights) if w == 0]
    monitor = RewardHackingMonitor(cfg.monitor, gold, log, state=rl.state.setdefault("monitor", {}))

    def on_step_end(step, rec):
        rl.state["kl_ctl"] = rl.kl_ctl.state_dict()
        # training throughput apart from generation: update tokens over the non-generation time
        busy = rec.get("train/step_time_s", 0.0) - rec.get("rollout/gen_seconds", 0.0)
        rec["train/tokens_per_s"] = rec.get("train/update_tokens", 0.0) / busy if busy > 0 else 0.0
        monitor.update(step, rec)

    recipe = Recipe(
        model=trained, examples=train, collate=lambda exs: exs, config=cfg,
        name=get_advantage(cfg.advantage).run_name or cfg.advantage,  # progress bar and log prefix
        step=rl.step, count=lambda rb: rb.count, plan=rl.plan,
        evaluate=(lambda m: rl.evaluate(m, evals)) if evals else None,
        save=save, state=rl.state, param_groups=param_groups, on_step_end=on_step_end,
        should_stop=lambda: monitor.stop_reason)
    return Trainer(cfg.train, recipe, log)


def run(cfg: RLConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

"""Online RL: one recipe for PPO, GRPO, RLOO and REINFORCE++ (``advantage:`` picks), in
single-turn tasks or multi-turn environments with tools (``env:``).

    rlhfkit grpo --config grpo_arithmetic
    rlhfkit ppo  --config ppo_arithmetic

One iteration reads top to bottom in :meth:`OnlineRL.iteration`:

    exp = self.experience(...)        # rollout -> score -> make_experience (rlhfkit.rl.experience)
    for epoch in range(num_iterations):
        for minibatch in shuffled(exp.minibatches):
            rec = update(minibatch)   # one optimizer step (the loss: rlhfkit.rl.loss.rl_loss)
            engine.update_weights(policy)
            if rec["train/approx_kl"] > target_kl: stop the epochs

``experience`` takes ``train.batch_size`` prompts, samples ``rollout.num_generations``
responses each (or runs that many episodes of the environment), scores them (DAPO's overlong
penalty and dynamic sampling when configured), and hands the trajectories to
:func:`~rlhfkit.rl.experience.make_experience`: the packed minibatches (a prompt's G responses
behind one copy of it), the no-grad passes on those very batches (old log-probs unless the
update's own forward provides them — ``reuse_logps`` with one update per rollout — reference
log-probs, critic values), the KL penalty where the estimator's spec puts it, and the
advantages. The loss of a micro-batch is the registered ``policy_loss`` (PPO's clipped
surrogate by default; GSPO, CISPO, dual-clip, Clip-Cov, KL-Cov), weighted by the rollout
correction when the sampler is not the trainer's distribution, plus the KL term when it lives
in the loss, the entropy bonus, the critic's value loss and PPO-ptx's SFT term.

Where the KL to the reference goes (``kl_in``): in the *reward* for PPO (per token,
−β·KL on every token before GAE), REINFORCE++ (per token) and RLOO (summed per sequence);
in the *loss* (+β·KL per token, k3 by default) for GRPO and REINFORCE-baseline.

PPO's critic is a separate model with a scalar value head (initialised from the first
reward model when one is configured, as in InstructGPT, else from the policy's weights):
separate weights keep the value regression from pulling on the policy's representation.
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
from ..models.forward import completion_logprobs, disable_dropout, unwrap
from ..models.loading import load_model, load_scalar_model
from ..models.reference import Reference, choose_mode
from ..rewards.base import CombinedScores, build_rewards, reward_config_from
from ..rl.advantages import get_advantage
from ..rl.batches import PolicyWithCritic, RLBatch, critic_of, policy_of  # noqa: F401  (policy_of: public API)
from ..rl.config import (CriticConfig, GRPOConfig, PPOConfig, RLConfig, RolloutConfig,  # noqa: F401
                         engine_name, importance_level, kl_placement, loss_params, policy_loss_name,
                         ray_options, validate)  # noqa: F401  (validate: public API)
from ..envs.base import load_environment
from ..rl.experience import (Experience, ExperienceConfig, Models, concat, make_experience, rollout_env,
                             rollout_metrics, rollout_scored, select_groups, with_count)
from ..rl.async_rollout import BackgroundRollout, decode_pending, encode_pending
from ..rl.shaping import groups_with_spread, overlong_penalty
from ..rl.kl_control import make_kl_controller
from ..rl.loss import LossConfig, onpolicy_metrics, rl_loss
from ..rl.monitors import RewardHackingMonitor
from ..backends import make_engine
from ..rl.rollout import SamplingParams, check_kv_cache
from .common import LossOutput, dist_rank, dist_sum, dist_world, save_model
from .completions import CompletionLog
from .loop import Recipe, Trainer, start_run
from .prompts import load_prompts


# ---------------------------------------------------------------------------- the recipe
class OnlineRL:
    """State of one online-RL run and its iteration (see :meth:`iteration`)."""

    def __init__(self, cfg: RLConfig, model, tokenizer, log=print, ref_model=None, critic=None,
                 rewards=None, env=None):
        self.cfg, self.tok, self.log = cfg, tokenizer, log
        self.G = cfg.rollout.num_generations
        self.chunk = cfg.train.logprob_chunk
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
        self.engine = make_engine(engine_name(cfg.rollout, model), model, tokenizer,
                                  batch_size=cfg.rollout.batch_size, runtime=cfg.runtime,
                                  ray=ray_options(cfg.rollout))
        self.pad_id = tokenizer.pad_token_id
        self.ptx: list[Example] = []
        self.prompts: list[Example] = []
        self.env = env if env is not None else (load_environment(cfg.env) if cfg.env else None)
        if self.env is None and hasattr(self.engine, "attach_rewards"):  # rollout.backend=ray
            there, here = self.engine.attach_rewards(self.rewards)
            log(f"[rl] {len(self.engine.workers)} Ray rollout workers; rewards scored in the workers: "
                f"{', '.join(there) or 'none'}; on the driver: {', '.join(here) or 'none'}")
        self.ptx_pos = 0
        self.state: dict = {}  # saved with every checkpoint
        self.completions = CompletionLog.for_run(cfg.train)  # train.log_completions
        self.correction = cfg.correction.mode
        if self.correction == "auto":  # correct only a sampler that is not the trainer's distribution
            self.correction = "none" if exact_logprobs(self.engine) and not cfg.rollout.async_ else "tis"
        self.background: BackgroundRollout | None = None  # rollout.async: the worker and its snapshot
        self.upcoming = None  # rollout.async: step -> that step's micro-batches of prompts (None past the end)
        self.loss_cfg = LossConfig(
            policy_loss=policy_loss_name(cfg), params=loss_params(cfg), entropy_top_q=cfg.entropy_top_q,
            correction=self.correction, correction_level=cfg.correction.level, correction_cap=cfg.correction.cap,
            kl_in_loss=self.kl_where == "loss", kl_estimator=cfg.kl_estimator, entropy_coef=cfg.entropy_coef,
            loss_agg=cfg.loss_agg, max_new_tokens=cfg.rollout.max_new_tokens, vf_coef=cfg.critic.vf_coef,
            value_clip=cfg.critic.value_clip, ptx_coef=cfg.ptx_coef, chunk=self.chunk, temperature=self.temperature)

    # ----------------------------------------------------------------- one iteration
    def iteration(self, model, micro_batches: list, step: int, update) -> dict:
        """One PPO/GRPO iteration, top to bottom: rollout -> score -> make_experience -> the
        epochs of minibatch updates (stopped when the approximate KL passes ``target_kl``)."""
        cfg = self.cfg
        exp = self.experience(model, micro_batches, step)
        m = exp.metrics
        m["train/early_stopped"] = 0.0
        sums: dict = {}
        for epoch in range(cfg.num_iterations):
            for u in torch.randperm(len(exp.minibatches), generator=exp.order).tolist():
                rec = update(exp.minibatches[u])              # one optimizer step
                self.engine.update_weights(policy_of(model))  # the sampler follows the new weights
                for k, v in rec["sums"].items():
                    sums[k] = sums.get(k, 0.0) + v
                if cfg.target_kl > 0 and rec.get("train/approx_kl", 0.0) > cfg.target_kl:
                    m["train/early_stopped"] = 1.0           # too far from the rollout policy
                    break
            if m["train/early_stopped"]:
                break
        if exp.reuse:  # the rollout metrics the skipped old-log-prob pass would have given
            onpolicy_metrics(sums, m, self.ref is not None, self.exact_sampler)
        return m

    @property
    def exact_sampler(self) -> bool:
        """The sampler's log-probs are of softmax(z/T) after top-k/top-p; without those filters
        they are the distribution the trainer scores, so the two must agree."""
        return self.cfg.rollout.top_p >= 1.0 and self.cfg.rollout.top_k == 0

    def experience(self, model, micro_batches: list, step: int) -> Experience:
        """Rollout, scoring and :func:`~rlhfkit.rl.experience.make_experience` for one step's prompts."""
        cfg = self.cfg
        exs = [ex for mb in micro_batches for ex in mb]
        policy, critic = policy_of(model), critic_of(model)
        if "kl_ctl" in self.state:  # the controller's value as checkpointed (resume-safe)
            self.kl_ctl.load_state_dict(self.state["kl_ctl"])
        if cfg.rollout.async_:
            traj, res, scores, m = self.sample_async(policy, exs, step)
        else:
            traj, res, scores, m = self.sample(exs, step)
            release = getattr(self.engine, "release", None)  # optional in an engine of one's own
            if release is not None:
                release()  # the sampling copy of the weights is not kept through the update
        exs = traj.examples  # dynamic sampling may have replaced some prompts
        reuse = (cfg.reuse_logps and cfg.num_iterations == 1 and cfg.num_minibatches == 1 and cfg.kl_target <= 0
                 and (self.ref is None or self.kl_where == "loss"))
        ec = ExperienceConfig(
            advantage=cfg.advantage, kl_where=self.kl_where, kl_estimator=cfg.kl_estimator, beta=self.kl_ctl.value,
            reuse=reuse, exact_sampler=self.exact_sampler, keep_sampler=self.correction != "none",
            mask_truncated=cfg.mask_truncated,
            filter_zero_std=cfg.filter_zero_std, num_minibatches=cfg.num_minibatches,
            micro=cfg.micro_batch_size or max(1, len(exs)), gamma=cfg.gamma, lam=cfg.lam,
            scale_rewards=cfg.scale_rewards, whiten=cfg.whiten_advantages, reduce=dist_sum())
        models = Models(policy, self.ref, critic, self.chunk, self.temperature)
        exp = make_experience(models, traj, scores, ec, self.pad_id, cfg.train, m)
        self.completions.log_rollout(step, exs, self.G, traj.texts, res, exp.advantages, exp.used_mask)
        m["rollout/kl_coef"] = ec.beta
        if self.ref is not None and "rollout/kl" in m:
            self.kl_ctl.update(m["rollout/kl"], int(exp.used.sum()))
        updates = []
        for rbs in exp.minibatches:
            with_count(rbs, cfg.loss_agg, dist_sum(), dist_world(), cfg.entropy_top_q)
            if self.ptx_dataset():
                rbs[0].ptx = self.next_ptx(next(policy.parameters()).device)
            if sum(rb.count for rb in rbs) > 0:
                updates.append(rbs)
        exp.minibatches = updates
        m["rollout/skipped_all"] = float(not updates)
        counts = torch.tensor([float(sum(rb.num_real_tokens for u in updates for rb in u)), float(traj.num_tokens)],
                              dtype=torch.float64)
        red = dist_sum()  # counts of every process (the loop averages the already global numbers)
        counts = red(counts) if red is not None else counts
        m["train/train_tokens"], m["rollout/gen_tokens"] = float(counts[0]), float(counts[1])
        m["rollout/gen_tokens_per_s"] = float(counts[1]) / max(traj.gen_seconds, 1e-9)
        return exp

    def sample_async(self, policy, exs: list[Example], step: int):
        """``rollout.async``: this step's rollout as the worker sampled it during the previous
        step (or now, on the first step and after a resume without one), then the next step's
        rollout started in the worker from the current weights (docs/algorithms.md#async-rollout)."""
        if self.background is None:
            self.background = BackgroundRollout(unwrap(policy), lambda snap: make_engine(
                engine_name(self.cfg.rollout, snap), snap, self.tok, batch_size=self.cfg.rollout.batch_size,
                runtime=self.cfg.runtime))
        t0 = time.perf_counter()
        got = self.background.take(step)
        saved = self.state.pop("pending_rollout", None)
        if got is None and saved is not None and saved.get("rank") == dist_rank():
            at, got = decode_pending(saved)
            got = got if at == step else None
        if got is None:  # nothing sampled ahead: sample now, from the current weights
            got = self.sample(exs, step, engine=self.background.engine)
        if [ex.row for ex in got[0].examples] != [ex.row for ex in exs] and not self.cfg.dynamic_sampling:
            raise RuntimeError(f"rollout.async: the rollout sampled ahead for step {step + 1} is of other prompts")
        wait = time.perf_counter() - t0
        nxt = self.upcoming(step + 1) if self.upcoming is not None else None
        if nxt:
            nexs = [ex for mb in nxt for ex in mb]
            self.background.start(step + 1, unwrap(policy), lambda eng, gen: self._sample_release(
                nexs, step + 1, eng, gen))
        traj, res, scores, m = got
        m = dict(m, **{"rollout/wait_seconds": wait, "rollout/async": 1.0})
        return traj, res, scores, m

    def _sample_release(self, exs, step, engine, generator):
        out = self.sample(exs, step, engine=engine, generator=generator)
        release = getattr(engine, "release", None)
        if release is not None:
            release()
        return out

    def before_save(self) -> None:
        """A checkpoint stores the rollout the worker is sampling for the next step (rollout.async)."""
        bg = self.background
        if bg is None or bg.pending_step < 0:
            return
        step = bg.pending_step
        got = bg.take(step)
        self.state["pending_rollout"] = dict(encode_pending(step, *got), rank=dist_rank())

    def sample(self, exs: list[Example], step: int, engine=None, generator=None):
        """Rollout and scores of ``exs`` (with DAPO's overlong penalty when configured); with
        ``dynamic_sampling`` the groups whose rewards all tie are replaced by groups of further
        prompts while extra rounds are left (docs/algorithms.md#dynamic-sampling)."""
        cfg = self.cfg
        P = len(exs)
        # this process's prompts are rows [rank * P, (rank + 1) * P) of the global batch
        traj, res = self._rollout_scores(exs, dist_rank() * P * self.G, engine, generator)
        m = rollout_metrics(traj, res, torch.tensor(res.total, dtype=torch.float32))
        if cfg.dynamic_sampling and self.G > 1:
            kept, rounds = [(traj, res)], 0
            spread = groups_with_spread(torch.tensor(res.total), self.G)
            have = int(spread.sum())
            gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step * 4099 + dist_rank())
            while have < P and rounds < cfg.dynamic_sampling_rounds:
                rounds += 1
                more = [self.prompts[i] for i in torch.randint(0, len(self.prompts), (P,), generator=gen).tolist()]
                t2, r2 = self._rollout_scores(more, dist_rank() * P * self.G, engine, generator)
                kept.append((t2, r2))
                have += int(groups_with_spread(torch.tensor(r2.total), self.G).sum())
            traj, res = self._keep_spread(kept, P)
            m["rollout/dynamic_rounds"] = float(rounds)
            m["rollout/gen_seconds"] = traj.gen_seconds
        m["rollout/groups_with_spread"] = float(groups_with_spread(torch.tensor(res.total), self.G).sum()) \
            if self.G > 1 else 0.0
        timings = getattr(engine if engine is not None else self.engine, "pop_timings", None)
        if timings is not None:  # rollout.backend=ray: the step-time split of the rollout
            m.update(timings())
        return traj, res, torch.tensor(res.total, dtype=torch.float32), m

    def _rollout_scores(self, exs: list[Example], row_offset: int, engine=None, generator=None):
        traj, res = self.generate_scored(exs, self.sampling, row_offset, engine, generator)
        if self.cfg.overlong_cache > 0:  # docs/algorithms.md#overlong-penalty
            lengths = torch.tensor([len(c) for c in traj.completion_ids], dtype=torch.float32)
            pen = overlong_penalty(lengths, self.cfg.rollout.max_new_tokens, self.cfg.overlong_cache,
                                   self.cfg.overlong_penalty).tolist()
            res.total = [t + p for t, p in zip(res.total, pen)]
            res.per_source["overlong"] = pen
        return traj, res

    def _keep_spread(self, kept: list, P: int):
        """The first P groups with reward spread over the rollouts in ``kept``, topped up with
        groups without spread (in rollout order) when too few have it."""
        G = self.G
        good, rest = [], []
        for j, (t, r) in enumerate(kept):
            sp = groups_with_spread(torch.tensor(r.total), G).tolist()
            for p in range(len(t.examples)):
                (good if sp[p] else rest).append((j, p))
        chosen = (good + rest)[:P]
        trajs = [select_groups(kept[j][0], [p]) for j, p in chosen]
        traj = concat(trajs)
        traj.gen_seconds = sum(t.gen_seconds for t, _ in kept)
        rows = [(j, p * G + k) for j, p in chosen for k in range(G)]
        total = [kept[j][1].total[i] for j, i in rows]
        names = kept[0][1].per_source.keys()
        per_source = {n: [kept[j][1].per_source[n][i] for j, i in rows] for n in names}
        errors = [e for _, r in kept for e in r.errors]
        return traj, CombinedScores(total, per_source, errors)

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
    def step(self, model, rb: RLBatch) -> LossOutput:
        return rl_loss(policy_of(model), critic_of(model), rb, self.loss_cfg, self.kl_ctl.value)

    # ----------------------------------------------------------------- evaluation
    def generate_scored(self, exs: list[Example], params, row_offset: int = 0, engine=None, generator=None):
        """(Trajectories, scores) of ``exs``: episodes of the environment, or single responses
        scored by the reward sources (``generator``: the sampling RNG; None = the global one)."""
        engine = engine if engine is not None else self.engine
        if self.env is not None:
            return rollout_env(engine, self.tok, self.env, exs, params, max_turns=self.cfg.env_max_turns or None,
                               max_tokens=self.cfg.env_max_tokens or None, row_offset=row_offset,
                               generator=generator)
        return rollout_scored(engine, self.rewards, exs, params, row_offset=row_offset, generator=generator,
                              log=self.log)

    @torch.no_grad()
    def evaluate(self, model, evals: list[Example]) -> dict:
        """Held-out prompts, greedy and sampled, from the policy's exact weights (an engine with a
        bf16/int8 or vLLM copy is replaced by the in-process decode loop for evaluation)."""
        res: dict = {}
        engine = exact_engine(self.engine, policy_of(model), self.tok, self.cfg.rollout, self.cfg.runtime)
        greedy = dataclasses.replace(self.sampling, temperature=0.0, n=1)
        traj, sc = self.generate_scored(evals, greedy, engine=engine)
        res["greedy/reward"] = sum(sc.total) / len(sc.total)
        for name, vals in sc.per_source.items():
            res[f"greedy/{name}"] = _nanmean(vals)
        res["greedy/length"] = traj.num_tokens / len(traj.completion_ids)
        k = self.cfg.eval_samples
        if k > 0:
            traj, sc = self.generate_scored(evals, dataclasses.replace(self.sampling, n=k), engine=engine)
            res["sampled/reward"] = sum(sc.total) / len(sc.total)
            for name, vals in sc.per_source.items():
                res[f"sampled/{name}"] = _nanmean(vals)
            res["sampled/length"] = traj.num_tokens / len(traj.completion_ids)
            res["sampled/truncated_frac"] = sum(not f for f in traj.finished) / len(traj.finished)
            if self.ref is not None:
                res["sampled/kl"] = self._sampled_kl(policy_of(model), traj, k)
        return res

    def close(self) -> None:
        """End what the rollout engine runs beside the trainer (the ``ray`` engine's actors)."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def _sampled_kl(self, policy, traj, k: int) -> float:
        """KL(π‖π_ref) per sequence, from the policy's own samples (the policy's tokens only)."""
        total, n, bs = 0.0, 0, self.cfg.train.eval_batch_size
        for i in range(0, len(traj.examples), bs):
            exs = []
            for j, ex in enumerate(traj.examples[i:i + bs]):
                rows = range((i + j) * k, (i + j + 1) * k)
                masks = [traj.loss_mask[r] for r in rows] if traj.loss_mask is not None else None
                exs.append(Example(ex.row, ex.prompt, [traj.completion_ids[r] for r in rows], masks=masks))
            b = collate(exs, pad_id=self.pad_id, pack_length=self.cfg.train.pack_length).to(
                next(policy.parameters()).device)
            lp = completion_logprobs(policy, b, chunk=self.chunk, temperature=self.temperature).seq_logps
            rp = self.ref.logprobs(b, temperature=self.temperature).seq_logps
            total += float((lp - rp).sum())
            n += b.num_sequences
        return total / max(n, 1)


def exact_engine(engine, policy, tokenizer, rollout_cfg, runtime):
    """``engine``, or, when it samples from a cheaper copy (bf16/int8, vLLM), an in-process engine
    on ``policy``'s exact weights: evaluation never decodes from the copy."""
    if exact_logprobs(engine):
        return engine
    name = "cpu" if next(policy.parameters()).device.type == "cpu" else "hf"
    return make_engine(name, policy, tokenizer, batch_size=rollout_cfg.batch_size,
                       runtime=dataclasses.replace(runtime, sampler_dtype="fp32"))


def exact_logprobs(engine) -> bool:
    """Whether the engine's log-probs are those of the trainer's own distribution: not for vLLM
    (other kernels) or a bf16/int8 sampling copy (``runtime.sampler_dtype``)."""
    if getattr(engine, "name", "") == "vllm":
        return False
    rt = getattr(engine, "runtime", None)
    return rt is None or rt.sampler_dtype == "fp32"


def _nanmean(vals: list[float]) -> float:
    ok = [v for v in vals if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else float("nan")


def build(cfg: RLConfig, log=print, model=None, tokenizer=None, ref_model=None) -> Trainer:
    validate_all(cfg)
    cfg.rewards = [reward_config_from(r) for r in cfg.rewards]
    rewards = build_rewards(cfg.rewards)  # bad references fail before any model is loaded
    env = load_environment(cfg.env) if cfg.env else None
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
    rl = OnlineRL(cfg, model, tokenizer, log, ref_model=ref_model, critic=critic, rewards=rewards, env=env)
    rl.prompts = train  # the pool dynamic sampling draws further prompts from
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
        waited = rec.get("rollout/wait_seconds", rec.get("rollout/gen_seconds", 0.0))  # async: only the wait
        busy = rec.get("train/step_time_s", 0.0) - waited
        rec["train/tokens_per_s"] = rec.get("train/update_tokens", 0.0) / busy if busy > 0 else 0.0
        monitor.update(step, rec)

    recipe = Recipe(
        model=trained, examples=train, collate=lambda exs: exs, config=cfg,
        name=get_advantage(cfg.advantage).run_name or cfg.advantage,  # progress bar and log prefix
        step=rl.step, count=lambda rb: rb.count, iteration=rl.iteration,
        evaluate=(lambda m: rl.evaluate(m, evals)) if evals else None,
        save=save, state=rl.state, param_groups=param_groups, on_step_end=on_step_end,
        should_stop=lambda: monitor.stop_reason, before_save=rl.before_save)
    trainer = Trainer(cfg.train, recipe, log)
    ga = cfg.train.grad_accum
    rl.upcoming = lambda s: ([trainer.micro_batch(k) for k in range(s * ga, (s + 1) * ga)]
                             if s < trainer.total_steps else None)
    trainer.close_rollout = rl.close
    return trainer


def run(cfg: RLConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    trainer = build(cfg, log, **kw)
    try:
        return trainer.train()
    finally:
        trainer.close_rollout()

"""Online (iterative) DPO: rounds of sample → label → DPO update, on the one training loop.

    rlhfkit online-dpo --config online_dpo_arithmetic

One round is one step of the loop (:class:`~.loop.Trainer`) and reads top to bottom in
:meth:`OnlineDPO.iteration`:

    traj   = rollout(engine, prompts)               # num_generations samples per prompt, current policy
    scores = score(labeller, traj)                  # the reward sources' weighted sum
    pairs  = make_pairs(...)                        # best vs worst per prompt; all-tie prompts skipped
    reference log-probs of the pairs                # refresh: the policy as the round starts
    for epoch in range(train.epochs):
        for minibatch in shuffled(pairs):
            update(minibatch)                       # one optimizer step of the DPO-family loss
            engine.update_weights(policy)           # the sampler follows the new weights

With ``labeller: studio`` people label the samples instead (:mod:`rlhfkit.studio.human_loop`):
each round is published as a studio project (ranking of the n samples per prompt, or pairwise),
the main process waits for the labels (``studio.timeout_s``, ``studio.min_labels``), and the
majority-aggregated labels give the best-vs-worst pairs; the reward sources then only score the
evaluation.

Each round takes the loop's next ``prompts_per_round`` training prompts (per process; a fresh
shuffle each pass over the prompts, from ``train.seed``) and samples ``rollout.num_generations``
responses per prompt with the rollout engine (``rollout.backend``), scores them with the
labeller (``rewards``: a verifier, reward models, user functions), and turns every prompt whose
responses do not all score the same into one preference pair (docs/algorithms.md#online-dpo).
The pairs of every process are gathered, so data-parallel processes train on the same round.
The reference is the initial policy for every round (``reference_update: fixed``: LoRA's
disabled adapters, else one frozen copy) or the policy as the round starts (``refresh``: its
log-probs precomputed on the round's pairs, no copy; a copy refreshed each round only for losses
that read the reference's token distribution, such as TDPO). Reference-free losses load none.

``train.batch_size`` / ``train.grad_accum`` / ``train.epochs`` shape each round's updates; one
optimizer (and its state) and one LR schedule (advanced once per round) span the run. The loop
gives the rest: ``metrics.jsonl`` (one record per round: ``rollout/*``, the round's mean
``train/*``; ``eval/*`` before the first round and every ``train.eval_steps`` rounds), trackers,
checkpoints every ``train.save_steps`` rounds with exact resume (the sampling RNG is in the
checkpoint), SIGTERM, the run-dir lock and ``final/`` with its card.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch

from ..config import DataConfig, ModelConfig, TrainConfig, check_range, validate_all
from ..data.tokenize import Example
from ..errors import ConfigError, Preempted
from ..models.forward import disable_dropout, unwrap
from ..models.loading import load_model
from ..models.reference import Reference
from ..rewards.base import RewardConfig, build_rewards, reward_config_from
from ..backends import make_engine
from ..backends.base import RuntimeOptions
from ..rl.config import RolloutConfig, engine_name, ray_options
from ..rl.experience import rollout, score
from ..rl.rollout import SamplingParams
from ..studio import human_loop
from . import dpo
from .common import LossOutput, dist_rank, dist_world, make_collate, save_model
from .completions import CompletionLog
from .loop import Recipe, Trainer, start_run
from .rl import exact_engine


@dataclasses.dataclass
class OnlineDPOConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=1024, max_prompt_length=512))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/online_dpo", lr=5e-6, batch_size=8, warmup_ratio=0.0, lr_scheduler="constant",
        eval_steps=1, save_steps=1))
    """batch_size / grad_accum / epochs: each round's DPO updates over its pairs; eval_steps and
    save_steps count rounds; max_steps is not used (``rounds`` sets the run's length)."""
    task: str = ""
    """'arithmetic' = the built-in task instead of data.path prompts."""
    task_size: int = 512
    task_eval_size: int = 64
    rewards: list[RewardConfig] = dataclasses.field(default_factory=lambda: [RewardConfig()])
    """The labeller: reward sources whose weighted sum ranks the sampled responses (with
    ``labeller: studio``: the evaluation's scores only)."""
    labeller: str = "rewards"
    """rewards (the reward sources rank each round's samples) | studio (people rank them in
    ``rlhfkit studio``; settings under ``studio``)."""
    studio: human_loop.StudioLabellerConfig = dataclasses.field(default_factory=human_loop.StudioLabellerConfig)
    """Where and how people label each round (``labeller: studio``; docs/algorithms.md#online-dpo)."""
    rollout: RolloutConfig = dataclasses.field(default_factory=lambda: RolloutConfig(num_generations=4))
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    """The sampler's performance switches (packed weights, lean decoder, shared prefill, sampler_dtype)."""
    rounds: int = 2
    prompts_per_round: int = 64
    """Prompts sampled per round and process."""
    reference_update: str = "fixed"
    """fixed (the initial policy every round) | refresh (the policy at the start of each round)."""
    loss_type: str = "sigmoid"
    """Any DPO-family pair loss of ``rlhfkit dpo`` (docs/algorithms.md)."""
    beta: float = 0.1
    eval_samples: int = 4
    """Sampled responses per held-out prompt (plus one greedy)."""


def validate(cfg: OnlineDPOConfig) -> None:
    """Range checks of online DPO's own keys (ConfigError naming the key and its range)."""
    if cfg.reference_update not in ("fixed", "refresh"):
        raise ConfigError(f"reference_update must be fixed|refresh, got '{cfg.reference_update}'")
    check_range("rounds", cfg.rounds, lo=1)
    check_range("prompts_per_round", cfg.prompts_per_round, lo=1)
    check_range("eval_samples", cfg.eval_samples, lo=0)
    if cfg.labeller not in ("rewards", "studio"):
        raise ConfigError(f"labeller must be rewards|studio, got '{cfg.labeller}'")
    if cfg.labeller == "studio":
        cfg.studio.check_ready("studio.", cfg.rollout.num_generations)
    if cfg.rollout.num_generations < 2:
        raise ConfigError(f"online DPO needs rollout.num_generations >= 2 (a pair needs two responses), got "
                          f"{cfg.rollout.num_generations}")
    if cfg.train.max_steps:
        raise ConfigError(f"train.max_steps ({cfg.train.max_steps}) is not used by online DPO: `rounds` sets the "
                          "run's length and train.epochs the passes over each round's pairs; remove it")
    d = dpo_config(cfg)
    if "plackett_luce" in dpo.loss_names(d):
        raise ConfigError("online DPO trains on pairs; loss_type plackett_luce ranks lists (use a pair loss)")
    dpo.validate(d)  # the loss name (did-you-mean) and beta


OnlineDPOConfig.validate = validate


def dpo_config(cfg: OnlineDPOConfig, reference: str = "auto") -> dpo.DPOConfig:
    """The DPO settings each round's loss uses."""
    return dpo.DPOConfig(model=cfg.model, data=cfg.data, train=cfg.train, loss_type=cfg.loss_type,
                         beta=cfg.beta, reference=reference)


def make_pairs(exs: list[Example], completions: list[list[int]], scores: list[float], n: int) -> list[Example]:
    """Best vs worst response of each prompt; prompts whose responses all tie give no pair."""
    pairs = []
    for p, ex in enumerate(exs):
        s = scores[p * n:(p + 1) * n]
        hi, lo = max(range(n), key=lambda i: s[i]), min(range(n), key=lambda i: s[i])
        if s[hi] > s[lo] and completions[p * n + hi] and completions[p * n + lo]:
            pairs.append(Example(ex.row, ex.prompt, [completions[p * n + hi], completions[p * n + lo]]))
    return pairs


def update_chunks(num_pairs: int, batch_size: int, grad_accum: int, world: int, rank: int,
                  order: list[int]) -> list[list[list[int]]]:
    """This process's micro-batches (pair indices) of each update over ``order``.

    An update takes the next ``batch_size × grad_accum × world`` pairs, split into ``grad_accum``
    micro-batches and each of those between the processes as evenly as possible; a last update too
    small to give every process a pair in each micro-batch is dropped (data-parallel processes must
    run the same number of forward/backward passes)."""
    per_update = batch_size * grad_accum * world
    out = []
    for u in range(0, num_pairs, per_update):
        chunk = order[u:u + per_update]
        if len(chunk) < grad_accum * world:
            break
        micros = []
        for part in _split(chunk, grad_accum):
            micros.append(_split(part, world)[rank])
        out.append(micros)
    return out


def _split(xs: list, k: int) -> list[list]:
    """``xs`` in ``k`` contiguous parts whose sizes differ by at most one (the first ones larger)."""
    q, r = divmod(len(xs), k)
    parts, i = [], 0
    for j in range(k):
        n = q + (j < r)
        parts.append(xs[i:i + n])
        i += n
    return parts


def gather_pairs(pairs: list[Example]) -> list[Example]:
    """Every process's pairs, in rank order (the pairs themselves with one process)."""
    if dist_world() == 1:
        return pairs
    got: list = [None] * dist_world()
    torch.distributed.all_gather_object(got, pairs)
    return [p for part in got for p in part]


class OnlineDPO:
    """State of one online-DPO run and its round (see :meth:`iteration`)."""

    def __init__(self, cfg: OnlineDPOConfig, model, tokenizer, rewards, log=print):
        self.cfg, self.tok, self.rewards, self.log = cfg, tokenizer, rewards, log
        self.n = cfg.rollout.num_generations
        probe = dpo_config(cfg)
        needs_ref = dpo._spec_any(probe, "needs_reference")
        self.live = dpo._spec_any(probe, "needs_token_kl") or probe.ld_alpha < 1
        if not needs_ref:
            mode = "none"
        elif cfg.reference_update == "fixed":  # the initial policy: adapters off, else a frozen copy
            mode = "adapters" if cfg.model.lora.r > 0 else "model"
        else:  # the policy as each round starts: precomputed, or a copy refreshed per round
            mode = "model" if self.live else "precompute"
        ref_model = copy.deepcopy(unwrap(model)) if mode == "model" else None
        self.ref = Reference(mode, policy=_plain(model), model=ref_model, chunk=cfg.train.logprob_chunk)
        self.dcfg = dpo_config(cfg, reference=mode)
        self.collate = make_collate(tokenizer, cfg.data, cfg.train)
        self.engine = make_engine(engine_name(cfg.rollout, model), model, tokenizer,
                                  batch_size=cfg.rollout.batch_size, runtime=cfg.runtime,
                                  ray=ray_options(cfg.rollout))
        self.sampling = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                       top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, n=self.n,
                                       stop=list(cfg.rollout.stop))
        self.completions = CompletionLog.for_run(cfg.train)  # train.log_completions: every N rounds
        self.state: dict = {}  # saved with every checkpoint (bco_pair's running mean)
        self.trainer = None  # set by build(): a round stopped for want of labels checkpoints through it
        # the studio database (every process checks the settings; only the main one publishes and waits)
        self.studio = human_loop.open_studio(cfg.studio) if cfg.labeller == "studio" else None

    # ----------------------------------------------------------------- one round
    def iteration(self, model, micro_batches: list, step: int, update) -> dict:
        """One round, top to bottom: rollout -> score -> pairs -> reference -> the epochs of updates."""
        exs = [ex for mb in micro_batches for ex in mb]
        if self.cfg.labeller == "studio":
            pairs, m = self.human_round(exs, step)
        else:
            pairs, m = self.scored_round(exs, step)
        self.train_round(model, pairs, step, update)
        return m

    def scored_round(self, exs: list[Example], step: int) -> tuple[list[Example], dict]:
        """rollout -> score(labeller) -> best-vs-worst pairs of every process."""
        traj = rollout(self.engine, exs, self.sampling, row_offset=dist_rank() * len(exs) * self.n)
        release = getattr(self.engine, "release", None)
        if release is not None:
            release()  # the sampling copy of the weights is not kept through the updates
        res = score(self.rewards, traj, self.log)
        self.completions.log_rollout(step, exs, self.n, traj.texts, res)
        pairs = gather_pairs(make_pairs(exs, traj.completion_ids, res.total, self.n))
        m = {"rollout/reward": sum(res.total) / len(res.total), "rollout/pairs": float(len(pairs)),
             "rollout/prompts": float(len(exs) * dist_world()),
             "rollout/gen_tokens_per_s": traj.num_tokens / max(traj.gen_seconds, 1e-9)}
        return pairs, m

    def human_round(self, exs: list[Example], step: int) -> tuple[list[Example], dict]:
        """rollout -> a studio project -> people's labels -> best-vs-worst pairs (every process
        gets them all). A restarted round reads the project it published before."""
        sc, name = self.cfg.studio, human_loop.round_name(self.cfg.studio, step)
        main = dist_rank() == 0  # (the process group exists once the loop runs, not yet in __init__)
        found = _from_main(human_loop.published(self.studio, name) if main else None)
        m = {"rollout/prompts": float(len(exs) * dist_world())}
        if not found:
            traj = rollout(self.engine, exs, self.sampling, row_offset=dist_rank() * len(exs) * self.n)
            release = getattr(self.engine, "release", None)
            if release is not None:
                release()
            m["rollout/gen_tokens_per_s"] = traj.num_tokens / max(traj.gen_seconds, 1e-9)
            records = gather_pairs(human_loop.round_records(exs, traj.completion_ids, traj.texts, self.n,
                                                            self.tok.decode))
            if main:
                human_loop.publish(self.studio, sc, name, records, seed=self.cfg.train.seed * 100_003 + step)
                self.log(f"[online-dpo] round {step + 1}: published {len(records)} items to studio project "
                         f"'{name}' ({sc.kind}); waiting for labels (timeout {sc.timeout_s:g}s)"
                         + ("" if sc.names() else "; no annotator is assigned (studio.annotators): assign some "
                            f"with rlhfkit studio project assign {name} --users NAME,..."))
        else:
            m["rollout/gen_tokens_per_s"] = 0.0
            self.log(f"[online-dpo] round {step + 1}: studio project '{name}' was published before; reading its "
                     "labels (no new samples)")
        out = None
        if main:
            t0 = time.monotonic()
            term = lambda: bool(getattr(self.trainer, "_term", False))  # noqa: E731 - SIGTERM seen by the loop
            p, items, votes, complete = human_loop.wait_for_labels(self.studio, sc, name, self.log, interrupted=term)
            pairs, labelled = human_loop.label_pairs(p["kind"], items, votes, self.n)
            out = {"pairs": pairs, "labelled": labelled, "items": len(items), "complete": complete, "term": term(),
                   "labels": sum(len(v) for v in votes.values()), "wait_s": time.monotonic() - t0}
        out = _from_main(out)
        pairs = out["pairs"]
        if out["term"]:
            self._stop_for_labels(step, name, out, sigterm=True)
        if not out["complete"]:
            if out["labelled"] < sc.min_labels:
                self._stop_for_labels(step, name, out)
            self.log(f"[online-dpo] round {step + 1}: timeout after {sc.timeout_s:g}s; training on the "
                     f"{out['labelled']}/{out['items']} labelled items of '{name}'")
        m.update({"rollout/pairs": float(len(pairs)), "studio/labelled_items": float(out["labelled"]),
                  "studio/items": float(out["items"]), "studio/labels": float(out["labels"]),
                  "studio/wait_s": out["wait_s"]})
        return pairs, m

    def _stop_for_labels(self, step: int, name: str, out: dict, sigterm: bool = False) -> None:
        """Too few labels after the timeout, or SIGTERM while waiting: checkpoint the finished
        rounds (if not already) and stop; a resumed run reads the same project."""
        tr, saved = self.trainer, ""
        if tr is not None and step > 0:
            every = tr.cfg.save_steps
            if not (every and step % every == 0):
                tr._save(step)
            saved = f"; checkpoint after round {step}: {tr.last_good}"
        if sigterm:
            raise Preempted(f"terminated by SIGTERM while round {step + 1} waited for the labels of studio project "
                            f"'{name}' ({out['labelled']} of {out['items']} items labelled){saved}; continue with "
                            "--train.resume true (the round reads the same project and its labels)")
        raise human_loop.LabelsMissing(
            f"round {step + 1}: {out['labelled']} of {out['items']} items of studio project '{name}' labelled after "
            f"studio.timeout_s={self.cfg.studio.timeout_s:g}s, fewer than studio.min_labels="
            f"{self.cfg.studio.min_labels}{saved}. Label more items, then continue with --train.resume true "
            "(the round reads the same project)")

    def train_round(self, model, pairs: list[Example], step: int, update) -> None:
        """reference log-probs of the pairs, then the epochs of DPO updates."""
        cfg, policy = self.cfg, _plain(model)
        if self.ref.mode == "precompute" and pairs:
            self.ref.precompute(pairs, self.collate, cfg.train.eval_batch_size)  # π_ref = the policy now
        elif self.ref.mode == "model" and cfg.reference_update == "refresh":
            self.ref.model.load_state_dict(unwrap(model).state_dict())
        device = next(policy.parameters()).device
        tc = cfg.train
        updates = 0
        for epoch in range(math.ceil(tc.epochs)):
            g = torch.Generator().manual_seed(tc.seed * 1_000_003 + step * 4099 + epoch)
            order = torch.randperm(len(pairs), generator=g).tolist()
            chunks = update_chunks(len(pairs), tc.batch_size, tc.grad_accum, dist_world(), dist_rank(), order)
            if epoch + 1 > tc.epochs:  # a fractional last epoch: its share of the updates
                chunks = chunks[:math.ceil((tc.epochs - epoch) * len(chunks))]
            for micros in chunks:
                update([self.collate([pairs[i] for i in mb]).to(device) for mb in micros])  # one optimizer step
                self.engine.update_weights(policy)  # the sampler follows the new weights
                updates += 1
        if not updates:
            self.log(f"[online-dpo] round {step + 1}: {len(pairs)} pair(s), too few for one update "
                     f"(every prompt's responses tie, or fewer than train.grad_accum x processes); no update")

    def step(self, model, batch) -> LossOutput:
        return LossOutput(*dpo.dpo_step(model, batch, self.ref, self.dcfg, self.cfg.train.logprob_chunk, self.state))

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model, evals: list[Example]) -> dict:
        """Held-out prompts: the labeller's mean reward of greedy responses and of ``eval_samples``
        sampled ones, decoded from the policy's exact weights."""
        engine = exact_engine(self.engine, _plain(model), self.tok, self.cfg.rollout, self.cfg.runtime)
        greedy = dataclasses.replace(self.sampling, temperature=0.0, n=1)
        res = {"greedy/reward": _mean(score(self.rewards, rollout(engine, evals, greedy), self.log).total)}
        if self.cfg.eval_samples > 0:
            sampled = dataclasses.replace(self.sampling, n=self.cfg.eval_samples)
            res["sampled/reward"] = _mean(score(self.rewards, rollout(engine, evals, sampled), self.log).total)
        return res


def _from_main(obj):
    """``obj`` of the main process on every process."""
    if dist_world() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _plain(model):
    """The model inside its data-parallel wrappers (a peft model stays one)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _prompts(cfg: OnlineDPOConfig, tok, log):
    from .prompts import load_prompts  # the prompt sources of GRPO/PPO (task or data file)

    return load_prompts(cfg, tok, log)


def build(cfg: OnlineDPOConfig, log=print, model=None, tokenizer=None) -> Trainer:
    validate_all(cfg)  # a bad name or value fails before any model is loaded
    cfg.rewards = [reward_config_from(r) for r in cfg.rewards]
    rewards = build_rewards(cfg.rewards)
    if model is None:
        model, tokenizer = load_model(cfg.model)
    disable_dropout(model)
    train, evals = _prompts(cfg, tokenizer, log)
    if not train:
        raise ConfigError("online DPO: no training prompts (check task / data.path / data.rows)")
    od = OnlineDPO(cfg, model, tokenizer, rewards, log)
    log(f"[online-dpo] loss_type={cfg.loss_type} beta={cfg.beta} reference={od.ref.mode} "
        f"({cfg.reference_update}) rounds={cfg.rounds} prompts={len(train)} eval_prompts={len(evals)}")
    # the loop's view: one step per round, a micro-batch of prompts_per_round prompts
    loop_cfg = dataclasses.replace(cfg.train, max_steps=cfg.rounds, batch_size=cfg.prompts_per_round,
                                   grad_accum=1)
    recipe = Recipe(
        model=model, examples=train, collate=lambda exs: exs, config=cfg, name="online-dpo",
        step=od.step, count=lambda b: float(b.num_examples), iteration=od.iteration,
        evaluate=(lambda m: od.evaluate(m, evals)) if evals else None, state=od.state,
        save=lambda m, path: save_model(m, tokenizer, path, cfg.model.lora, cfg))
    trainer = Trainer(loop_cfg, recipe, log)
    od.trainer = trainer

    def close():
        rewards.close()
        if od.studio is not None:
            od.studio.dispose()
    trainer.close_rewards = close
    return trainer


def run(cfg: OnlineDPOConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    trainer = build(cfg, log, **kw)
    try:
        return trainer.train()
    finally:
        trainer.close_rewards()

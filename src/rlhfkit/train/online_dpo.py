"""Online (iterative) DPO: rounds of sample → label → DPO update.

Each round takes the next ``prompts_per_round`` training prompts, samples
``rollout.num_generations`` responses per prompt from the *current* policy, scores them
with the labeller (any reward sources: a verifier, reward models, user functions), and
turns every prompt whose responses do not all score the same into one preference pair —
the best response chosen, the worst rejected. The policy is then trained on that round's
pairs with any DPO-family loss for ``train.epochs``. The reference is either the initial
policy for every round (``reference_update: fixed``, one frozen copy) or the policy as it
was when the round started (``refresh``: its log-probs are precomputed, no copy). Held-out
prompts are scored (greedy and sampled) before the first round and after each one; every
round writes one record to ``output_dir/rounds.jsonl`` and its DPO run to
``output_dir/round-N``; with ``train.log_completions: N`` every N-th round's sampled responses and
their rewards go to ``output_dir/completions.jsonl`` (``step`` = the round).

Resume (``train.resume``): after every round the trainable weights, the sampling generator and the
round records are checkpointed atomically in ``output_dir/rounds``. A restarted run loads
the newest complete one, samples the next round again from the same generator state (so the same
pairs), and the round's DPO run resumes from its own checkpoints (``train.save_steps``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import torch

from ..config import DataConfig, ModelConfig, TrainConfig, to_dict
from ..data.tokenize import Example
from ..errors import ConfigError
from ..models.forward import unwrap
from ..models.loading import load_model
from ..rewards.base import RewardConfig, build_rewards, reward_config_from
from ..backends.base import RuntimeOptions
from ..rl.config import RolloutConfig
from ..rl.experience import Trajectories, from_rollout, score
from ..rl.config import engine_options
from ..rl.rollout import HFBackend, SamplingParams
from . import dpo
from .checkpoint import latest_checkpoint, load_state, save_state
from .completions import CompletionLog
from .export import save_final
from .loop import start_run
from .trackers import open_trackers


@dataclasses.dataclass
class OnlineDPOConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=1024, max_prompt_length=512))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/online_dpo", lr=5e-6, batch_size=8, warmup_ratio=0.0, lr_scheduler="constant"))
    """Per-round DPO training (epochs over that round's pairs)."""
    task: str = ""
    """'arithmetic' = the built-in task instead of data.path prompts."""
    task_size: int = 512
    task_eval_size: int = 64
    rewards: list[RewardConfig] = dataclasses.field(default_factory=lambda: [RewardConfig()])
    """The labeller: reward sources whose weighted sum ranks the sampled responses."""
    rollout: RolloutConfig = dataclasses.field(default_factory=lambda: RolloutConfig(num_generations=4))
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    """The sampler's performance switches (packed weights, lean decoder, shared prefill)."""
    rounds: int = 2
    prompts_per_round: int = 64
    reference_update: str = "fixed"
    """fixed (the initial policy every round) | refresh (the policy at the start of each round)."""
    loss_type: str = "sigmoid"
    beta: float = 0.1
    eval_samples: int = 4
    """Sampled responses per held-out prompt (plus one greedy)."""


def _prompts(cfg: OnlineDPOConfig, tok, log):
    from .prompts import load_prompts  # the prompt sources of GRPO/PPO (task or data file)

    return load_prompts(cfg, tok, log)


def _score(rewards, exs: list[Example], texts: list[str], n: int) -> list[float]:
    """The total reward of each text."""
    return score(rewards, Trajectories(exs, n, [], [], [], texts), lambda *a: None).total


def make_pairs(exs: list[Example], completions: list[list[int]], scores: list[float], n: int) -> list[Example]:
    """Best vs worst response of each prompt; prompts whose responses all tie give no pair."""
    pairs = []
    for p, ex in enumerate(exs):
        s = scores[p * n:(p + 1) * n]
        hi, lo = max(range(n), key=lambda i: s[i]), min(range(n), key=lambda i: s[i])
        if s[hi] > s[lo] and completions[p * n + hi] and completions[p * n + lo]:
            pairs.append(Example(ex.row, ex.prompt, [completions[p * n + hi], completions[p * n + lo]]))
    return pairs


@torch.no_grad()
def evaluate(model, tok, rewards, evals: list[Example], cfg: OnlineDPOConfig,
             generator: torch.Generator | None = None) -> dict:
    model.eval()
    be = HFBackend(model, tok, **engine_options(cfg.rollout, cfg.runtime))
    base = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                          top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, stop=list(cfg.rollout.stop))
    g = be.generate([e.prompt for e in evals], dataclasses.replace(base, temperature=0.0, n=1))
    res = {"eval/greedy/reward": sum(_score(rewards, evals, g.texts, 1)) / len(evals)}
    if cfg.eval_samples > 0:
        s = be.generate([e.prompt for e in evals], dataclasses.replace(base, n=cfg.eval_samples), generator)
        sc = _score(rewards, evals, s.texts, cfg.eval_samples)
        res["eval/sampled/reward"] = sum(sc) / len(sc)
    return res


def run(cfg: OnlineDPOConfig, log=print) -> dict:
    start_run(cfg.train)
    if cfg.reference_update not in ("fixed", "refresh"):
        raise ConfigError(f"reference_update must be fixed|refresh, got '{cfg.reference_update}'")
    if cfg.rounds < 1 or cfg.prompts_per_round < 1 or cfg.rollout.num_generations < 2:
        raise ConfigError("online DPO needs rounds >= 1, prompts_per_round >= 1 and "
                          "rollout.num_generations >= 2 (a pair needs two responses)")
    # one tracker run for the whole online run (each round's DPO trainer logs only to its own dir)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    trackers = open_trackers(cfg.train.report_to, cfg.train.output_dir, lambda: to_dict(cfg))
    try:
        return _rounds(cfg, log, trackers)
    finally:
        for t in trackers:
            t.close()


def _rounds(cfg: OnlineDPOConfig, log, trackers: list) -> dict:
    cfg.rewards = [reward_config_from(r) for r in cfg.rewards]
    rewards = build_rewards(cfg.rewards)
    model, tok = load_model(cfg.model)
    train, evals = _prompts(cfg, tok, log)
    if not train:
        raise ConfigError("no training prompts")
    fixed_ref = None
    if cfg.reference_update == "fixed" and cfg.model.lora.r == 0:
        fixed_ref = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    log_path = os.path.join(cfg.train.output_dir, "rounds.jsonl")
    ckpt_root = os.path.join(cfg.train.output_dir, "rounds")
    history: list[dict] = []
    done = 0
    gen = torch.Generator().manual_seed(cfg.train.seed)  # sampling noise of rollouts and evaluation
    if cfg.train.resume:
        path = latest_checkpoint(ckpt_root, log)
        if path is None:
            log(f"[online-dpo] resume: no round checkpoint in {ckpt_root}; starting fresh")
        else:
            state, states = load_state(path, model=unwrap(model))
            done, history = state["step"], states["history"]
            gen.set_state(states["generator"])
            log(f"[online-dpo] resumed from {path} (round {done}/{cfg.rounds})")
    with open(log_path, "w") as f:  # the records of completed rounds; nothing after them
        f.writelines(json.dumps(rec) + "\n" for rec in history)

    def record(rec):
        history.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for t in trackers:
            t.log(rec["round"], {k: v for k, v in rec.items() if k != "round"})
        log(f"[online-dpo] round {rec['round']}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)))

    if evals and not history:
        record({"round": 0, **evaluate(model, tok, rewards, evals, cfg, gen)})
    n = cfg.rollout.num_generations
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                            top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, n=n, stop=list(cfg.rollout.stop))
    completions = CompletionLog.for_run(cfg.train)  # train.log_completions: every N rounds
    for r in range(done + 1, cfg.rounds + 1):
        start = ((r - 1) * cfg.prompts_per_round) % len(train)
        exs = [train[(start + i) % len(train)] for i in range(min(cfg.prompts_per_round, len(train)))]
        model.eval()
        be = HFBackend(model, tok, **engine_options(cfg.rollout, cfg.runtime))
        traj = from_rollout(exs, be.generate([e.prompt for e in exs], params, gen))
        res = score(rewards, traj, log)
        scores = res.total
        completions.log_rollout(r - 1, exs, n, traj.texts, res)
        pairs = make_pairs(exs, traj.completion_ids, scores, n)
        rec = {"round": r, "rollout/reward": sum(scores) / len(scores), "pairs": float(len(pairs)),
               "prompts": float(len(exs))}
        if pairs:
            rdir = os.path.join(cfg.train.output_dir, f"round-{r}")
            # a round that finished without its round state being saved has no resumable checkpoint
            # (none is kept at the end): it is trained again, from the same restored sampling state
            again = r == done + 1 and cfg.train.resume
            cont = again and latest_checkpoint(os.path.join(rdir, "checkpoints")) is not None
            dcfg = dpo.DPOConfig(model=cfg.model, data=cfg.data, loss_type=cfg.loss_type, beta=cfg.beta,
                                 reference="model" if fixed_ref is not None else "auto",
                                 train=dataclasses.replace(cfg.train, output_dir=rdir, eval_steps=0, resume=cont,
                                                           report_to=[],
                                                           overwrite=cfg.train.overwrite or (again and not cont)))
            trainer = dpo.build(dcfg, log=log, model=model, tokenizer=tok, examples=(pairs, []),
                                ref_model=fixed_ref)
            trainer.train()
            last = trainer.last_record
            rec.update({k: v for k, v in last.items() if isinstance(v, float) and k.startswith("train/")
                        and (k == "train/loss" or "reward" in k)})
        else:
            log(f"[online-dpo] round {r}: every prompt's responses tie; no pairs, no update")
        if evals:
            rec.update(evaluate(model, tok, rewards, evals, cfg, gen))
        record(rec)
        save_state(ckpt_root, r, model=unwrap(model), state={"rounds": cfg.rounds},
                   states={"history": history, "generator": gen.get_state()}, keep=max(1, cfg.train.save_total_limit))
    last = next((h for h in reversed(history) if any(k.startswith("eval/") for k in h)), {})
    save_final(model, tok, cfg, train, {k: v for k, v in last.items() if k.startswith("eval/")}, log,
               step=cfg.rounds)
    rewards.close()
    return {"rounds": history}

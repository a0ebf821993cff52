"""Typed configuration of the online-RL recipe (``rlhfkit grpo`` / ``rlhfkit ppo``) and its
validation; see :mod:`rlhfkit.train.rl` for what the keys drive."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..config import DataConfig, ModelConfig, TrainConfig, check_choice, check_range, did_you_mean
from ..backends.base import RuntimeOptions
from ..errors import ConfigError
from ..losses.kl import KL_ESTIMATORS
from ..losses.objectives import PolicyLossParams, check_policy_loss
from ..losses.policy import LOSS_AGGREGATIONS
from ..rewards.base import RewardConfig
from .advantages import get_advantage
from .monitors import MonitorConfig
from .shaping import SCORE_SCALES


@dataclass
class RolloutConfig:
    backend: str = "auto"
    """The rollout engine: cpu (the decode loop with the CPU speed work of the ``runtime``
    section: packed weights, the lean decoder over its own weight copy, bf16/int8 sampling
    copies) | hf (the model's own forward on the training module) | vllm (GPU, optional extra) |
    ray (the cpu or hf engine in Ray actors, ``ray_*`` below; optional extra ``rlhfkit[ray]``) |
    auto (cpu for a model on the CPU, hf otherwise)."""
    num_generations: int = 8
    """Samples per prompt (G)."""
    max_new_tokens: int = 64
    """Tokens sampled per response at most (>= 1); the KV cache this needs, layers x 2 x kv_heads x
    head_dim x (prompt + new tokens) x rows x dtype bytes, is checked against free memory."""
    temperature: float = 1.0
    """> 0: sample from softmax(z/T) (online RL requires > 0); 0 = greedy decoding (eval only)."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1] (1 = off)."""
    top_k: int = 0
    """>= 0; 0 = no top-k filtering."""
    stop: list[str] = field(default_factory=list)
    """Stop strings (comma-separated on the command line)."""
    batch_size: int = 64
    """Sequences decoded together."""
    async_: bool = False
    """``rollout.async``: sample step k+1 in a worker thread while step k updates, from a copy of the
    weights before that update (one step off-policy; correction.mode auto = tis). One more copy
    of the policy's weights in memory. docs/algorithms.md#async-rollout."""
    ray_workers: int = 2
    """backend=ray: Ray actors sampling (and scoring) shards of each batch of prompts, in [1, 1024]."""
    ray_address: str = ""
    """backend=ray: the Ray cluster to join ('auto', HOST:PORT or ray://HOST:PORT); empty = a
    local Ray started for the run with ray_workers x ray_worker_cpus CPUs."""
    ray_engine: str = "cpu"
    """backend=ray: the engine each actor runs on its copy of the policy: cpu | hf."""
    ray_worker_cpus: int = 1
    """backend=ray: CPUs (and torch threads) per actor, in [1, 1024]."""
    ray_timeout: float = 600.0
    """backend=ray: seconds (> 0) a call waits for an actor before failing with a clear error
    (a dead actor fails at once)."""

    def validate(self, p: str = "rollout.") -> None:
        check_choice(p + "backend", self.backend, ("auto", "cpu", "hf", "vllm", "ray"))
        ray_options(self).validate(p + "ray_")
        if self.backend == "ray":
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ConfigError(f"{p}backend=ray needs the ray package, which is not installed: "
                                  "pip install rlhfkit[ray] (or use rollout.backend=cpu or hf)")
            if self.async_:
                raise ConfigError(f"{p}async is not available with {p}backend=ray (the Ray actors hold their "
                                  "own weights); use one or the other")
        check_range(p + "num_generations", self.num_generations, lo=1)
        check_range(p + "max_new_tokens", self.max_new_tokens, lo=1)
        check_range(p + "temperature", self.temperature, lo=0)
        check_range(p + "top_p", self.top_p, lo=0, hi=1, lo_open=True)
        check_range(p + "top_k", self.top_k, lo=0)
        check_range(p + "batch_size", self.batch_size, lo=1)
        if not isinstance(self.async_, bool):
            raise ConfigError(f"{p}async must be true or false (got {self.async_!r})")


@dataclass
class CriticConfig:
    name: str = ""
    """Critic initialisation: a model dir/name; empty = the first reward model if any, else the policy's weights."""
    lr: float = 0.0
    """Critic learning rate (0 = train.lr)."""
    freeze_layers: int = -1
    """Frozen lower layers of the critic (-1 = same as model.freeze_layers)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    value_clip: float = 0.2
    """ε_v of the clipped value loss (0 = unclipped)."""
    save: bool = True
    """Write the trained critic to OUTPUT_DIR/critic at the end (false: only the policy is exported;
    checkpoints always hold the critic, so resuming is unaffected)."""

    def validate(self, p: str = "critic.") -> None:
        check_range(p + "lr", self.lr, lo=0)
        check_range(p + "freeze_layers", self.freeze_layers, lo=-1)
        check_range(p + "vf_coef", self.vf_coef, lo=0)
        check_range(p + "value_clip", self.value_clip, lo=0)


@dataclass
class ObjectiveConfig:
    """Knobs of the registered policy losses (``policy_loss``); each loss reads only its own
    (docs/algorithms.md#policy-losses). PPO's clip range is ``clip_eps_low`` / ``clip_eps_high``."""

    dual_clip: float = 3.0
    """dual_clip: c > 1; the loss of a token with A < 0 is at most −c·A."""
    cispo_eps_low: float = 1.0
    """cispo: the IS weight's floor is 1 − cispo_eps_low (1.0: no floor, as in MiniMax-M1)."""
    cispo_eps_high: float = 4.0
    """cispo: the IS weight's cap is 1 + cispo_eps_high."""
    gspo_eps_low: float = 3e-4
    """gspo: clip below 1 of the length-normalised sequence ratio."""
    gspo_eps_high: float = 4e-4
    """gspo: clip above 1."""
    clip_cov_frac: float = 2e-4
    """clip_cov: fraction of the tokens whose gradient is removed."""
    clip_cov_lower: float = 1.0
    """clip_cov: tokens are picked among those with covariance in [clip_cov_lower, clip_cov_upper]."""
    clip_cov_upper: float = 5.0
    kl_cov_frac: float = 2e-3
    """kl_cov: fraction of the tokens, highest covariance first, that get the penalty."""
    kl_cov_coef: float = 1.0
    """kl_cov: β of the penalty β·|log π − log π_old|."""


@dataclass
class CorrectionConfig:
    """Importance correction for a sampler whose log-probs differ from the trainer's
    (docs/algorithms.md#rollout-correction)."""

    mode: str = "auto"
    """none | tis (truncated IS weights) | mis (masked: weights over the cap drop the token or
    sequence) | auto (tis when the engine does not sample the trainer's exact distribution, e.g. a
    bf16/int8 sampling copy, none otherwise)."""
    level: str = "token"
    """token (one weight per token) | sequence (one weight exp(Σ_t Δ) per response)."""
    cap: float = 2.0
    """The weights' cap C (>= 1)."""

    def validate(self, p: str = "correction.") -> None:
        check_choice(p + "mode", self.mode, ("auto", "none", "tis", "mis"))
        check_choice(p + "level", self.level, ("token", "sequence"))
        check_range(p + "cap", self.cap, lo=1)


@dataclass
class RLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=1024, max_prompt_length=512))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/grpo", lr=1e-6, batch_size=4, warmup_ratio=0.0, lr_scheduler="constant",
        max_steps=100, eval_batch_size=32))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    """The rollout engine's performance switches (docs: rlhfkit.backends.base.RuntimeOptions)."""
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig()])
    """Reward sources, summed with their weights (YAML list; shorthand: arithmetic, gsm8k, format, model:PATH, fn:module:function)."""
    task: str = ""
    """Generated prompts instead of data.path: arithmetic ('What is a + b?') | word_problems
    (GSM8K-style, numbers that need a calculator) | guess_number (rows of the guessing game)."""
    env: str = ""
    """A multi-turn environment (docs/environments.md): calculator (word problems with a calculator
    tool) | guess_number | single_turn | module:Class; empty = one response scored by ``rewards``.
    With an environment the episode's reward is the environment's and ``rewards`` is not used."""
    env_max_turns: int = 0
    """Policy turns per episode at most (0 = the environment's own limit)."""
    env_max_tokens: int = 0
    """Completion tokens per episode at most, policy and environment together (0 = no budget
    beyond env_max_turns x rollout.max_new_tokens plus the environment's messages)."""
    task_size: int = 2000
    """Generated training problems (task=arithmetic)."""
    task_eval_size: int = 64
    """Generated held-out problems (task=arithmetic), disjoint from the training ones."""
    advantage: str = "grpo"
    """gae (PPO, critic) | grpo | rloo | reinforce_pp | reinforce_baseline."""
    scale_rewards: str = "group"
    """grpo: divide the group-centred rewards by the std of the group | batch (of the whole batch) |
    none (Dr.GRPO); true/false mean group/none (docs/algorithms.md#score-scaling)."""
    loss_agg: str = "grpo"
    """grpo (sequence mean of token means) | dr_grpo (token sum / max_new_tokens) | dapo (token mean)."""
    num_iterations: int = 1
    """Epochs over each rollout (PPO epochs; GRPO's μ)."""
    num_minibatches: int = 1
    """Optimizer updates per epoch (prompts are split into this many minibatches)."""
    micro_batch_size: int = 0
    """Prompts per forward pass inside a minibatch (gradients accumulate; 0 = whole minibatch)."""
    reuse_logps: bool = True
    """With one update per rollout (num_iterations 1, num_minibatches 1) and no KL term in the
    reward or adaptive KL, take the rollout policy's log-probs from the update's own forward
    (detached) instead of a separate no-grad pass: ratios are exactly 1, one forward less."""
    importance_level: str = "auto"
    """token (one ratio per token, PPO/GRPO) | sequence (one ratio exp(Σ_t Δlog π) per
    completion, clipped per sequence, as in the RLOO paper) | auto (sequence for rloo, token
    otherwise). docs/algorithms.md#importance-level."""
    policy_loss: str = "auto"
    """The policy objective (docs/algorithms.md#policy-losses): ppo (token ratio) | seq_ppo
    (sequence ratio) | gspo | cispo | dual_clip | clip_cov | kl_cov | auto (ppo or seq_ppo, by
    importance_level); knobs in ``objective``."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    """Upper clip (0.28 = DAPO clip-higher)."""
    entropy_top_q: float = 1.0
    """Train only on the top-q fraction of the highest-entropy response tokens of each
    micro-batch (0.2 as in Wang et al. 2025; 1 = every token). docs/algorithms.md#entropy-top-q."""
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: sample further prompts until the step has train.batch_size groups
    whose rewards differ (at most dynamic_sampling_rounds extra rollouts). docs/algorithms.md#dynamic-sampling."""
    dynamic_sampling_rounds: int = 3
    overlong_cache: int = 0
    """DAPO soft overlong punishment: responses in the last overlong_cache tokens before
    rollout.max_new_tokens lose up to overlong_penalty (0 = off). docs/algorithms.md#overlong-penalty."""
    overlong_penalty: float = 1.0
    kl_coef: float = 0.0
    """β, KL strength (0 with reference=auto loads no reference)."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3."""
    kl_in: str = "auto"
    """reward | loss | auto (reward for gae, reinforce_pp, rloo; loss for grpo, reinforce_baseline)."""
    kl_target: float = 0.0
    """> 0: adaptive KL controller aiming at this mean sequence KL."""
    kl_horizon: int = 10000
    target_kl: float = 0.0
    """> 0: stop the epochs of a rollout once the approximate KL to the rollout policy exceeds it."""
    filter_zero_std: bool = False
    """Drop groups whose rewards are all equal (no signal) from the update."""
    mask_truncated: bool = False
    """Exclude responses cut at max_new_tokens from the loss."""
    whiten_advantages: bool = True
    """gae: normalise advantages over the batch."""
    gamma: float = 1.0
    lam: float = 0.95
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    ptx_coef: float = 0.0
    """PPO-ptx: weight of an SFT loss on ptx_path rows mixed into every update."""
    ptx_path: str = ""
    """SFT rows (prompt/completion or text) for PPO-ptx."""
    ptx_batch_size: int = 4
    reference: str = "auto"
    """auto | model | adapters | none. With kl_coef 0, 'model'/'adapters' still load one to report KL."""
    ref_model: str = ""
    """Reference weights (empty = a frozen copy of the initial policy)."""
    eval_samples: int = 4
    """Sampled responses per held-out prompt at evaluation (0 = greedy only)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Reward-hacking monitors: length drift, KL blow-up, proxy vs gold (weight-0) reward."""


@dataclass
class PPOConfig(RLConfig):
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/ppo", lr=1e-6, batch_size=16, warmup_ratio=0.0, lr_scheduler="constant",
        max_steps=100, eval_batch_size=32))
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(num_generations=1))
    advantage: str = "gae"
    loss_agg: str = "dapo"
    num_iterations: int = 2
    num_minibatches: int = 2
    kl_coef: float = 0.05
    kl_estimator: str = "k1"


GRPOConfig = RLConfig


def importance_level(cfg: RLConfig) -> str:
    """``token`` or ``sequence``: what one importance ratio covers (auto: sequence for rloo)."""
    if cfg.importance_level != "auto":
        return cfg.importance_level
    return get_advantage(cfg.advantage).importance


def engine_name(rollout: RolloutConfig, model) -> str:
    """The engine ``rollout.backend`` names (auto: cpu for a model on the CPU, hf otherwise)."""
    if rollout.backend != "auto":
        return rollout.backend
    return "cpu" if next(model.parameters()).device.type == "cpu" else "hf"


def ray_options(rollout: RolloutConfig):
    """The :class:`~rlhfkit.backends.ray.RayOptions` of ``rollout.ray_*``."""
    from ..backends.ray import RayOptions

    return RayOptions(workers=rollout.ray_workers, address=rollout.ray_address, engine=rollout.ray_engine,
                      worker_cpus=rollout.ray_worker_cpus, timeout=rollout.ray_timeout)


def engine_options(rollout: RolloutConfig, runtime: RuntimeOptions) -> dict:
    """Constructor options of :class:`rlhfkit.rl.rollout.HFBackend` (the evaluation's and online
    DPO's sampler, which re-reads the weights on every call)."""
    return dict(batch_size=rollout.batch_size, packed_weights=runtime.packed_weights,
                lean_decode=runtime.lean_decode, shared_prefill=runtime.shared_prefill)


def policy_loss_name(cfg: RLConfig) -> str:
    """The registered policy loss: ``policy_loss``, or for auto ppo / seq_ppo by importance level."""
    if cfg.policy_loss != "auto":
        return cfg.policy_loss
    return "seq_ppo" if importance_level(cfg) == "sequence" else "ppo"


def loss_params(cfg: RLConfig) -> PolicyLossParams:
    o = cfg.objective
    return PolicyLossParams(eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high,
                            **{f.name: getattr(o, f.name) for f in dataclasses.fields(o)})


def _scale(v) -> str:
    s = str(v).lower()
    s = {"true": "group", "1": "group", "yes": "group", "false": "none", "0": "none", "no": "none"}.get(s, s)
    check_choice("scale_rewards", s, SCORE_SCALES)
    return s


def kl_placement(cfg: RLConfig) -> str:
    if cfg.kl_in != "auto":
        return cfg.kl_in
    return get_advantage(cfg.advantage).kl_in


def validate(cfg: RLConfig) -> None:
    """Checks of the online-RL keys (ConfigError naming the key and its allowed range); also
    runs the sections' own checks (rollout, critic), so a config built in Python is checked as
    one parsed by build_config."""
    cfg.rollout.validate()
    cfg.runtime.validate()
    cfg.critic.validate()
    cfg.correction.validate()
    cfg.scale_rewards = _scale(cfg.scale_rewards)
    check_range("entropy_top_q", cfg.entropy_top_q, lo=0, hi=1, lo_open=True)
    check_range("dynamic_sampling_rounds", cfg.dynamic_sampling_rounds, lo=0)
    check_range("overlong_cache", cfg.overlong_cache, lo=0, hi=cfg.rollout.max_new_tokens - 1)
    check_range("overlong_penalty", cfg.overlong_penalty, lo=0)
    check_range("env_max_turns", cfg.env_max_turns, lo=0)
    check_range("env_max_tokens", cfg.env_max_tokens, lo=0)
    if cfg.rollout.temperature == 0:
        raise ConfigError("rollout.temperature must be > 0 for online RL (0 is greedy decoding: "
                          "every sample of a prompt would be the same); evaluation is greedy anyway")
    for key in ("kl_coef", "clip_eps_low", "clip_eps_high", "kl_target", "target_kl",
                "entropy_coef", "ptx_coef"):
        check_range(key, getattr(cfg, key), lo=0)
    check_range("clip_eps_low", cfg.clip_eps_low, lo=0, hi=1, hi_open=True)
    check_range("gamma", cfg.gamma, lo=0, hi=1)
    check_range("lam", cfg.lam, lo=0, hi=1)
    check_range("kl_horizon", cfg.kl_horizon, lo=1)
    check_range("micro_batch_size", cfg.micro_batch_size, lo=0)
    check_range("eval_samples", cfg.eval_samples, lo=0)
    check_range("ptx_batch_size", cfg.ptx_batch_size, lo=1)
    check_choice("reference", cfg.reference, ("auto", "model", "adapters", "none"))
    check_choice("importance_level", cfg.importance_level, ("auto", "token", "sequence"))
    get_advantage(cfg.advantage)  # an unknown estimator: ConfigError with the valid names
    if importance_level(cfg) == "sequence" and cfg.loss_agg == "dapo":
        raise ConfigError("importance_level=sequence averages the objective over sequences; use "
                          "loss_agg grpo or dr_grpo (dapo averages over tokens)")
    if cfg.loss_agg not in LOSS_AGGREGATIONS:
        raise ConfigError(f"loss_agg must be one of {LOSS_AGGREGATIONS}, got '{cfg.loss_agg}'"
                          f"{did_you_mean(cfg.loss_agg, LOSS_AGGREGATIONS)}")
    if cfg.kl_estimator not in KL_ESTIMATORS:
        raise ConfigError(f"kl_estimator must be one of {KL_ESTIMATORS}, got '{cfg.kl_estimator}'"
                          f"{did_you_mean(cfg.kl_estimator, KL_ESTIMATORS)}")
    if cfg.kl_in not in ("auto", "reward", "loss"):
        raise ConfigError(f"kl_in must be auto|reward|loss, got '{cfg.kl_in}'")
    G = cfg.rollout.num_generations
    if G < 1 or cfg.rollout.max_new_tokens < 1:
        raise ConfigError("rollout.num_generations and rollout.max_new_tokens must be >= 1")
    need = get_advantage(cfg.advantage).min_group
    if G < need:
        raise ConfigError(f"advantage={cfg.advantage} compares the samples of a prompt: set "
                          f"rollout.num_generations >= {need}")
    if cfg.num_iterations < 1 or cfg.num_minibatches < 1:
        raise ConfigError("num_iterations and num_minibatches must be >= 1")
    prompts = cfg.train.batch_size * cfg.train.grad_accum
    if cfg.num_minibatches > prompts:
        raise ConfigError(f"num_minibatches ({cfg.num_minibatches}) exceeds the prompts per step "
                          f"({prompts} = train.batch_size x train.grad_accum)")
    if cfg.monitor.window < 1:
        raise ConfigError("monitor.window must be >= 1")
    if cfg.ptx_coef > 0 and _world_size() > 1:
        raise ConfigError("PPO-ptx (ptx_coef > 0) runs a second policy forward per update, which "
                          "data-parallel training does not support yet; run it in one process")
    if cfg.ptx_coef > 0 and not cfg.ptx_path:
        raise ConfigError("ptx_coef > 0 needs ptx_path (SFT rows to mix in)")
    check_policy_loss(policy_loss_name(cfg), loss_params(cfg), cfg.loss_agg,
                      key=lambda k: {"eps_low": "clip_eps_low", "eps_high": "clip_eps_high"}.get(k, "objective." + k))


RLConfig.validate = validate


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))

"""DRO recipe: single-trajectory data (prompt, completion, scalar reward) with a learned value.

    rlhfkit dro --config dro_hh

Direct Reward Optimisation (Richemond et al. 2024; docs/algorithms.md#dro) regresses the
KL-regularised optimality condition r(x, y) − V(x) = τ·log π(y|x)/π_ref(y|x) with a squared
loss, learning the policy π_θ and a value V_φ(x) of the prompt together (DRO-V, Algorithm 1).

Rows are those KTO reads — ``prompt`` + ``completion`` + ``label``, preference pairs split into
a thumbs-up and a thumbs-down row — plus an optional real-valued ``reward`` column (rename
another column to it with ``data.columns``); rows with ``prompt`` + ``completion`` + ``reward``
and no label are read too. ``reward_source`` picks the reward: the ``reward`` column, the label
mapped through ``thumbs_up`` / ``thumbs_down``, or (``auto``) the column where a row has one.

The value V(x) (``value_model``):

* ``separate`` (default): a second causal LM with a scalar head, initialised from the policy's
  weights (or ``value_model_name``), read at the last prompt token — PPO's critic layout. The
  paper found two separate networks with one value per prompt best and parameter sharing with
  the policy harmful; this is that design. It costs a second model, its optimizer state and its
  forward/backward over each batch.
* ``reference_head``: a linear head on the frozen reference's final hidden state at the last
  prompt token. The reference never changes, so its features are computed once before
  training (one forward per example) and V is a linear regression on them: almost free, and it
  pulls on nothing the policy trains. A weaker V (Proposition 1 of the paper: the policy's
  error is bounded by V's) for a fraction of the cost; give it a larger ``value_lr``.

Either way the value parameters train in their own optimizer group (``value_lr``) and are part
of the trained module, so checkpoints and resume hold them; ``final/`` holds the policy.
Held-out evaluation uses preference pairs, scored like DPO and KTO (implicit reward τ·h).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ..config import DataConfig, ModelConfig, TrainConfig, check_choice, check_range, validate_all
from ..data.collate import Batch
from ..data.pipeline import load_records
from ..data.tokenize import Example, tokenize_records
from ..errors import ConfigError, DataError
from ..losses.unpaired import get_unpaired_loss
from ..models.forward import completion_logprobs, hidden_states, unwrap
from ..models.loading import load_model, load_scalar_model
from ..models.reference import Reference, choose_mode
from ..rl.batches import PolicyWithCritic, critic_of, policy_of
from .common import LossOutput, eval_batches, make_collate, precompute_reference, save_model
from .dpo import DPOConfig, evaluate_pairs
from .kto import split_pairs
from .loop import Recipe, Trainer, start_run

VALUE_MODELS = ("separate", "reference_head")
REWARD_SOURCES = ("auto", "label", "reward")


@dataclasses.dataclass
class DROConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=512))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/dro", lr=1e-6, warmup_ratio=0.1))
    tau: float = 1.0
    """Regularisation τ > 0 (the paper's default 1.0): the KL strength of the target policy
    π* ∝ π_ref·exp(r/τ); smaller τ lets the policy move further from the reference."""
    rescale_policy: bool = True
    """Scale the policy gradient by 1/τ (DRO-V, Algorithm 1); false = the exact gradient of the
    squared loss."""
    value_model: str = "separate"
    """separate (a second LM with a scalar head, like PPO's critic) | reference_head (a linear
    head on the frozen reference's last-prompt-token hidden state)."""
    value_model_name: str = ""
    """separate: weights the value model starts from ('' = a copy of the policy's)."""
    value_lr: float = 0.0
    """Learning rate of the value parameters (0 = train.lr)."""
    reward_source: str = "auto"
    """auto (the ``reward`` column where a row has one, else its label) | label | reward."""
    thumbs_up: float = 1.0
    """Reward of a desirable row (label true; the chosen side of a pair)."""
    thumbs_down: float = 0.0
    """Reward of an undesirable row (label false; the rejected side of a pair)."""
    reference: str = "auto"
    """auto | precompute | adapters | model."""
    ref_model: str = ""
    """reference=model: the reference's weights ('' = model.name)."""

    def validate(self) -> None:
        check_range("tau", self.tau, lo=0, lo_open=True)
        check_choice("value_model", self.value_model, VALUE_MODELS)
        if self.value_model_name and self.value_model != "separate":
            raise ConfigError("value_model_name is only read with value_model: separate "
                              f"(got value_model: {self.value_model})")
        check_range("value_lr", self.value_lr, lo=0)
        check_choice("reward_source", self.reward_source, REWARD_SOURCES)
        check_range("thumbs_up", self.thumbs_up)
        check_range("thumbs_down", self.thumbs_down)
        if not self.thumbs_up > self.thumbs_down:
            raise ConfigError(f"thumbs_up must be greater than thumbs_down (got {self.thumbs_up} and "
                              f"{self.thumbs_down}): a thumbs-up must be worth more than a thumbs-down")
        check_choice("reference", self.reference, ("auto", "precompute", "adapters", "model"))


def assign_rewards(examples: list[Example], cfg: DROConfig, source: str) -> list[float]:
    """r(x, y) of every example, stored in ``ex.extra["dro_reward"]``; a row without the chosen
    source is a DataError naming it."""
    out = []
    for ex in examples:
        raw, label = ex.extra.get("reward"), ex.label
        if cfg.reward_source == "reward" or (cfg.reward_source == "auto" and raw is not None):
            if raw is None:
                raise DataError("reward_source: reward, but the row has no numeric 'reward'",
                                source=source, row=ex.row, field="reward")
            r = float(raw)
        else:
            if label is None:
                raise DataError("the row has neither a 'label' (thumbs up/down) nor a numeric 'reward'"
                                if cfg.reward_source == "auto" else
                                "reward_source: label, but the row has no 'label'",
                                source=source, row=ex.row, field="label")
            r = cfg.thumbs_up if label else cfg.thumbs_down
        ex.extra["dro_reward"] = r
        out.append(r)
    return out


def first_targets(batch: Batch) -> Tensor:
    """(S,) index (into the batch's targets) of each sequence's first completion token."""
    T = batch.tgt_seq.numel()
    order = torch.arange(T, device=batch.tgt_seq.device)
    first = torch.full((batch.num_sequences,), T, dtype=torch.long, device=order.device)
    return first.scatter_reduce(0, batch.tgt_seq, order, reduce="amin")


def prompt_end_positions(batch: Batch) -> Tensor:
    """(S,) flat index of each sequence's last prompt token (the one predicting its first
    completion token): where V(x) reads the prompt."""
    return batch.tgt_pos[first_targets(batch)]


class FeatureValueHead(nn.Module):
    """V(x) = w·f(x) + b on precomputed features f (``ex.extra["value_features"]``), w and b
    starting at 0."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, feats: Tensor) -> Tensor:  # (S, H) -> (S,)
        return self.linear(feats).squeeze(-1)


def prompt_values(value, batch: Batch, kind: str) -> Tensor:
    """(S,) V(x) of each sequence's prompt."""
    if kind == "reference_head":
        dev = next(value.parameters()).device
        feats = torch.stack([batch.examples[e].extra["value_features"]
                             for e in batch.seq_example.tolist()]).to(dev)
        return value(feats).float()
    h = hidden_states(value, batch, causal_lm=False).index_select(0, prompt_end_positions(batch))
    return unwrap(value).score(h).squeeze(-1).float()


@torch.no_grad()
def precompute_features(ref: Reference, examples: list[Example], collate_fn, batch_size: int, device) -> None:
    """``ex.extra["value_features"]``: the reference's final hidden state at the last prompt
    token of each example (fixed for the run: π_ref is frozen)."""
    module = ref.module()
    was_training = module.training
    module.eval()
    for b in eval_batches(examples, batch_size, collate_fn, device):
        out = ref.logprobs(b, return_hidden=True)            # hidden: (T, H) at target positions
        feats = out.hidden.index_select(0, first_targets(b).to(out.hidden.device)).float().cpu()  # (S, H)
        for s, e in enumerate(b.seq_example.tolist()):
            b.examples[e].extra["value_features"] = feats[s]
    module.train(was_training)


def dro_step(model, batch: Batch, ref: Reference, cfg: DROConfig, chunk: int):
    policy, value = policy_of(model), critic_of(model)
    out = completion_logprobs(policy, batch, chunk=chunk)         # one completion per example
    ref_seq = ref.sequence_logps(batch)
    rewards = torch.tensor([batch.examples[e].extra["dro_reward"] for e in batch.seq_example.tolist()],
                           dtype=torch.float32, device=out.seq_logps.device)
    values = prompt_values(value, batch, cfg.value_model).to(out.seq_logps.device)
    loss, m = get_unpaired_loss("dro")(out.seq_logps, ref_seq, values, rewards, tau=cfg.tau,
                                       rescale_policy=cfg.rescale_policy)
    return loss.sum(), m


def _value_model(cfg: DROConfig, policy, log) -> nn.Module:
    if cfg.value_model == "reference_head":
        return FeatureValueHead(unwrap(policy).config.hidden_size)
    value = load_scalar_model(dataclasses.replace(cfg.model, name=cfg.value_model_name or cfg.model.name))[0]
    if not cfg.value_model_name:  # start from the policy's current weights (also a model passed in memory)
        value.load_state_dict({k: v for k, v in unwrap(policy).state_dict().items()
                               if not k.startswith("lm_head")}, strict=False)
    log(f"[dro] value model initialised from {cfg.value_model_name or 'the policy'}")
    return value


def build(cfg: DROConfig, log=print, model=None, tokenizer=None) -> Trainer:
    validate_all(cfg)
    if model is None:
        model, tokenizer = load_model(cfg.model)
    recs = split_pairs(load_records(cfg.data.path, cfg.data.rows, cfg.data,
                                    ("unpaired", "preference", "prompt_completion"), log))
    train = tokenize_records(recs, tokenizer, cfg.data, source=cfg.data.path, log=log)
    if not train:
        raise DataError("no training rows left after loading", source=cfg.data.path)
    rewards = assign_rewards(train, cfg, cfg.data.path)
    evals = []
    if cfg.data.eval_path or cfg.data.eval_rows:
        path = cfg.data.eval_path or cfg.data.path
        erecs = load_records(path, cfg.data.eval_rows, cfg.data, ("preference",), log)
        evals = tokenize_records(erecs, tokenizer, cfg.data, source=f"{path} (eval)", log=log)
    collate_fn = make_collate(tokenizer, cfg.data, cfg.train)
    mode = choose_mode(cfg.reference, needs_reference=True, lora=cfg.model.lora.r > 0)
    ref_model = load_model(cfg.ref_model or cfg.model.name)[0] if mode == "model" else None
    ref = Reference(mode, policy=model, model=ref_model, chunk=cfg.train.logprob_chunk)
    value = _value_model(cfg, model, log)
    trained = PolicyWithCritic(model, value)
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    log(f"[dro] {len(train)} rows, reward mean {mean:.4g} std {std:.4g}, tau={cfg.tau}, "
        f"value_model={cfg.value_model}, reference={mode}")

    def param_groups(m):
        return [{"params": [p for p in model.parameters() if p.requires_grad]},
                {"params": [p for p in value.parameters() if p.requires_grad],
                 "lr": cfg.value_lr or cfg.train.lr}]

    chunk = cfg.train.logprob_chunk
    eval_cfg = DPOConfig(beta=cfg.tau, train=cfg.train)
    recipe = Recipe(
        model=trained, examples=train, collate=collate_fn, name="dro", config=cfg,
        step=lambda m, b: LossOutput(*dro_step(m, b, ref, cfg, chunk)),
        count=lambda b: float(b.num_examples), param_groups=param_groups,
        evaluate=(lambda m: evaluate_pairs(policy_of(m), ref, evals, collate_fn, cfg.train.eval_batch_size,
                                           eval_cfg)) if evals else None,
        save=lambda m, path: save_model(model, tokenizer, path, cfg.model.lora, cfg))
    trainer = Trainer(cfg.train, recipe, log)
    visited = [train[i] for i in trainer.visited_examples()]
    if cfg.value_model == "reference_head":  # before any update: π_ref is the initial policy
        precompute_features(ref, visited, collate_fn, cfg.train.eval_batch_size,
                            next(model.parameters()).device)
    if mode == "precompute":
        precompute_reference(ref, trainer, train, evals, collate_fn, cfg.train, cfg.model.name, log)
    return trainer


def run(cfg: DROConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

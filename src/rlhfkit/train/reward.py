"""Reward-model recipe: Bradley-Terry on preference pairs or K-ranked lists.

    rlhfkit rm --config rm_hh

Pairs and lists share one path: an example is a prompt with K completions and label
scores (a pair is K = 2 with scores [1, 0]); all K completions go through the model in one
forward with the prompt computed once, and the loss covers every strictly ordered pair.
After training the mean/std of the rewards on training rows are stored in the saved
config (``rlhfkit_reward_mean`` / ``rlhfkit_reward_std``) so scores can be normalised later.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import DataConfig, ModelConfig, TrainConfig, check_range, validate_all
from ..data.collate import sequence_index
from ..data.pipeline import load_examples
from ..losses.reward import listwise_bt_loss, ranked_pairs
from ..models.forward import sequence_scores
from ..models.loading import load_scalar_model
from ..rewards.reward_model import prompt_style
from .common import LossOutput, eval_batches, make_collate, model_device, save_model
from .loop import Recipe, Trainer, start_run


@dataclasses.dataclass
class RMConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=512))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/rm", lr=1e-5))
    margin: float = 0.0
    """Required reward gap m in -log sigmoid(r_w - r_l - m); a pair row's ``margin`` column
    (e.g. annotator strength from ``rlhfkit studio export``) is added to it for that pair."""
    center_rewards_coef: float = 0.0
    """Weight c of the centring term c·(r_w + r_l)^2 per pair that keeps rewards centred at zero
    without shrinking their margin (Eisenstein et al. 2023; 0 = off)."""
    norm_rows: int = 256
    """Training rows scored after training to store the reward mean/std."""

    def validate(self) -> None:
        check_range("margin", self.margin)
        check_range("center_rewards_coef", self.center_rewards_coef, lo=0)
        check_range("norm_rows", self.norm_rows, lo=0)


RM_KINDS = ("preference", "listwise")


def label_matrix(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, K) label scores and validity mask of a batch of pairs/lists."""
    K = max(len(ex.completions) for ex in batch.examples)
    scores = torch.zeros(batch.num_examples, K)
    valid = torch.zeros(batch.num_examples, K, dtype=torch.bool)
    for e, ex in enumerate(batch.examples):
        s = ex.scores if ex.scores is not None else [1.0, 0.0]  # pairs: chosen beats rejected
        scores[e, :len(s)] = torch.tensor(s)
        valid[e, :len(s)] = True
    return scores, valid


def num_pairs(batch) -> float:
    scores, valid = label_matrix(batch)
    return float(ranked_pairs(scores, valid)[0].numel())


def row_margins(batch, margin: float = 0.0) -> torch.Tensor | float:
    """``margin`` plus each row's ``margin`` column, (E,); the scalar when no row has one."""
    rows = [ex.extra.get("margin") for ex in batch.examples]
    if all(m is None for m in rows):
        return margin
    return torch.tensor([margin + (m or 0.0) for m in rows])


def rm_step(model, batch, margin: float = 0.0, center_coef: float = 0.0):
    """One micro-batch: (sum of pair losses, metrics)."""
    seq_r = sequence_scores(model, batch)                        # (S,)
    idx = sequence_index(batch, max(len(ex.completions) for ex in batch.examples))  # (E, K)
    rewards = seq_r[idx.clamp(min=0)]                            # (E, K)
    scores, valid = label_matrix(batch)
    loss, metrics = listwise_bt_loss(rewards, scores.to(rewards.device), valid.to(rewards.device),
                                     row_margins(batch, margin), center_coef)
    return loss.sum(), metrics


def evaluate_pairs(model, examples, collate_fn, batch_size: int, margin: float = 0.0) -> dict:
    n, loss, correct, gap = 0, 0.0, 0.0, 0.0
    for b in eval_batches(examples, batch_size, collate_fn, model_device(model)):
        total, m = rm_step(model, b, margin)
        k = num_pairs(b)
        n += k
        loss += float(total)
        correct += m["accuracy"] * k
        gap += m["margin"] * k
    return {"loss": loss / n, "accuracy": correct / n, "margin": gap / n}


def reward_stats(model, examples, collate_fn, batch_size: int) -> tuple[float, float]:
    vals = []
    with torch.no_grad():
        for b in eval_batches(examples, batch_size, collate_fn, model_device(model)):
            vals.append(sequence_scores(model, b).float().cpu())
    v = torch.cat(vals)
    return float(v.mean()), float(v.std().clamp(min=1e-6)) if v.numel() > 1 else 1.0


def build(cfg: RMConfig, log=print, model=None, tokenizer=None) -> Trainer:
    validate_all(cfg)
    if model is None:
        model, tokenizer = load_scalar_model(cfg.model)
    train, evals = load_examples(cfg.data, tokenizer, RM_KINDS, log)
    collate_fn = make_collate(tokenizer, cfg.data, cfg.train)

    def save(m, path):
        m.eval()
        mean, std = reward_stats(m, train[:cfg.norm_rows], collate_fn, cfg.train.eval_batch_size)
        log(f"[rm] reward mean {mean:.4f}, std {std:.4f} on {min(len(train), cfg.norm_rows)} "
            "training rows (stored for normalisation)")
        save_model(m, tokenizer, path, cfg.model.lora, cfg, extra_config={
            "rlhfkit_reward_mean": mean, "rlhfkit_reward_std": std,
            "rlhfkit_chat_template": cfg.data.chat_template,
            "rlhfkit_prompt_style": prompt_style(train[:cfg.norm_rows or 256], tokenizer)})

    recipe = Recipe(
        model=model, examples=train, collate=collate_fn, name="rm", config=cfg,
        step=lambda m, b: LossOutput(*rm_step(m, b, cfg.margin, cfg.center_rewards_coef)),
        count=num_pairs,
        evaluate=(lambda m: evaluate_pairs(m, evals, collate_fn, cfg.train.eval_batch_size, cfg.margin))
        if evals else None,
        save=save)
    return Trainer(cfg.train, recipe, log)


def run(cfg: RMConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

"""SFT recipe: completion-only (assistant-only) NLL on prompt/completion or chat data.

    rlhfkit sft --config sft_gsm8k
"""

from __future__ import annotations

import dataclasses
import math


from ..config import DataConfig, ModelConfig, TrainConfig, check_range, validate_all
from ..data.pipeline import load_examples
from ..losses.sft import sft_loss
from ..models.forward import completion_logprobs
from ..models.loading import load_model
from .common import LossOutput, eval_batches, make_collate, model_device, save_model
from .loop import Recipe, Trainer, start_run
from .sparsity import DeltaL1


@dataclasses.dataclass
class SFTConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=1024))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/sft", lr=2e-5))
    l1_coef: float = 0.0
    """λ of a proximal L1 step on the fine-tuning delta after every update (LoRA: the adapter
    weights; full: the change from the starting weights), >= 0; 0 = off. PAFT's sparse SFT delta
    for merging with a preference-trained one (docs/algorithms.md#paft)."""

    def validate(self, p: str = "") -> None:
        check_range(p + "l1_coef", self.l1_coef, lo=0)


SFT_KINDS = ("language_modeling", "prompt_completion")


def sft_step(model, batch, chunk: int = 1024):
    """One micro-batch: (sum of token NLLs, metrics)."""
    out = completion_logprobs(model, batch, chunk=chunk)
    per_token, metrics = sft_loss(out.token_logps, batch.tgt_mask)
    return per_token.sum(), metrics


def evaluate_nll(model, examples, collate_fn, batch_size: int, chunk: int) -> dict:
    total, n = 0.0, 0.0
    for b in eval_batches(examples, batch_size, collate_fn, model_device(model)):
        loss_sum, m = sft_step(model, b, chunk)
        total += float(loss_sum)
        n += m["tokens"]
    nll = total / max(n, 1.0)
    return {"nll": nll, "perplexity": math.exp(min(nll, 50.0))}


def build(cfg: SFTConfig, log=print, model=None, tokenizer=None) -> Trainer:
    validate_all(cfg)
    if model is None:
        model, tokenizer = load_model(cfg.model)
    train, evals = load_examples(cfg.data, tokenizer, SFT_KINDS, log)
    collate_fn = make_collate(tokenizer, cfg.data, cfg.train)
    chunk = cfg.train.logprob_chunk
    recipe = Recipe(
        model=model, examples=train, collate=collate_fn, name="sft", config=cfg,
        step=lambda m, b: LossOutput(*sft_step(m, b, chunk)),
        count=lambda b: float(b.tgt_mask.sum()),
        evaluate=(lambda m: evaluate_nll(m, evals, collate_fn, cfg.train.eval_batch_size, chunk))
        if evals else None,
        save=lambda m, path: save_model(m, tokenizer, path, cfg.model.lora, cfg),
        after_update=DeltaL1(model, cfg.l1_coef, cfg.model.lora.r > 0) if cfg.l1_coef > 0 else None)
    return Trainer(cfg.train, recipe, log)


def run(cfg: SFTConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

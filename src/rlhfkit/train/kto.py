"""KTO recipe: unpaired thumbs-up / thumbs-down data.

    rlhfkit kto --config kto_hh

Rows are ``prompt`` + ``completion`` + ``label``; preference pairs are split into one
desirable and one undesirable row each. The KL reference point z₀ is estimated from
mismatched pairs: every example carries a second completion, the one of a fixed other
example, scored under its own prompt (laid out with the shared prompt, so it costs only
the completion's tokens). Held-out evaluation uses preference pairs when the eval data has
them, so KTO and DPO report the same implicit-reward accuracy.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from ..config import DataConfig, ModelConfig, TrainConfig, check_choice, check_range, validate_all
from ..data.collate import sequence_index
from ..data.pipeline import load_records
from ..data.tokenize import Example, tokenize_records
from ..errors import ConfigError, DataError
from ..losses.unpaired import kto_loss
from ..models.forward import completion_logprobs
from ..models.loading import load_model
from ..models.reference import Reference, choose_mode
from .common import LossOutput, precompute_reference, make_collate, save_model
from .dpo import DPOConfig, evaluate_pairs
from .loop import Recipe, Trainer, start_run


@dataclasses.dataclass
class KTOConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=512))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/kto", lr=1e-6, warmup_ratio=0.1))
    beta: float = 0.1
    """KL strength β."""
    desirable_weight: float = 1.0
    """λ_D."""
    undesirable_weight: float = 1.0
    """λ_U (balance λ_D·n_D ≈ λ_U·n_U when the labels are unbalanced)."""
    reference: str = "auto"
    """auto | precompute | adapters | model."""
    ref_model: str = ""

    def validate(self) -> None:
        check_range("beta", self.beta, lo=0, lo_open=True)
        check_range("desirable_weight", self.desirable_weight, lo=0)
        check_range("undesirable_weight", self.undesirable_weight, lo=0)
        if self.desirable_weight == 0 and self.undesirable_weight == 0:
            raise ConfigError("desirable_weight and undesirable_weight are both 0: nothing would be trained")
        check_choice("reference", self.reference, ("auto", "precompute", "adapters", "model"))


def split_pairs(records: list[dict]) -> list[dict]:
    """Preference records -> unpaired records (chosen = desirable, rejected = undesirable);
    other records pass through unchanged."""
    out = []
    for r in records:
        if r["kind"] != "preference":
            out.append(r)
            continue
        for field, label in (("chosen", True), ("rejected", False)):
            out.append({"kind": "unpaired", "row": r["row"], "prompt": r["prompt"],
                        "completion": r[field], "label": label})
    return out


def with_mismatched(examples: list[Example], seed: int) -> list[Example]:
    """Give each example a second completion taken from another example (for z₀)."""
    if len(examples) < 2:
        raise DataError("KTO needs at least 2 rows to estimate the KL reference point")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a derangement
    return [Example(ex.row, ex.prompt, [ex.completions[0], examples[partner[i]].completions[0]],
                    label=ex.label) for i, ex in enumerate(examples)]


def kto_step(model, batch, ref: Reference, cfg: KTOConfig, chunk: int):
    out = completion_logprobs(model, batch, chunk=chunk)
    ref_seq = ref.sequence_logps(batch)
    idx = sequence_index(batch, 2).to(out.seq_logps.device)
    labels = torch.tensor([bool(ex.label) for ex in batch.examples], device=idx.device)
    loss, m = kto_loss(out.seq_logps[idx[:, 0]], ref_seq[idx[:, 0]], labels,
                       out.seq_logps[idx[:, 1]], ref_seq[idx[:, 1]], beta=cfg.beta,
                       desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    return loss.sum(), m


def build(cfg: KTOConfig, log=print, model=None, tokenizer=None, examples=None) -> Trainer:
    """The KTO trainer. ``examples=(train, evals)`` gives tokenized examples instead of reading
    ``cfg.data`` (negatives): ``train`` unpaired ones (one completion and a ``label`` each; their
    mismatched completions are added here), ``evals`` preference pairs or none."""
    validate_all(cfg)
    if model is None:
        model, tokenizer = load_model(cfg.model)
    if examples is not None:
        train, evals = examples
        if any(len(ex.completions) != 1 or ex.label is None for ex in train):
            raise DataError("KTO's in-memory training examples must hold one completion and a label each")
        train = with_mismatched(train, cfg.train.seed)
    else:
        recs = split_pairs(load_records(cfg.data.path, cfg.data.rows, cfg.data, ("unpaired", "preference"), log))
        for r in recs:
            if r.get("label") is None:  # a reward-only row (DRO data) has no thumbs for KTO
                raise DataError("KTO needs a 'label' (thumbs up/down) on every row; rows with only a "
                                "real-valued 'reward' are for `rlhfkit dro`", source=cfg.data.path,
                                row=r["row"], field="label")
        train = with_mismatched(tokenize_records(recs, tokenizer, cfg.data, source=cfg.data.path, log=log),
                                cfg.train.seed)
        evals = []
    if examples is None and (cfg.data.eval_path or cfg.data.eval_rows):
        path = cfg.data.eval_path or cfg.data.path
        erecs = load_records(path, cfg.data.eval_rows, cfg.data, ("preference",), log)
        evals = tokenize_records(erecs, tokenizer, cfg.data, source=f"{path} (eval)", log=log)
    collate_fn = make_collate(tokenizer, cfg.data, cfg.train)
    mode = choose_mode(cfg.reference, needs_reference=True, lora=cfg.model.lora.r > 0)
    ref_model = load_model(cfg.ref_model or cfg.model.name)[0] if mode == "model" else None
    ref = Reference(mode, policy=model, model=ref_model, chunk=cfg.train.logprob_chunk)
    n_d = sum(bool(ex.label) for ex in train)
    log(f"[kto] {n_d} desirable / {len(train) - n_d} undesirable rows, reference={mode}")
    chunk = cfg.train.logprob_chunk
    eval_cfg = DPOConfig(beta=cfg.beta, train=cfg.train)
    recipe = Recipe(
        model=model, examples=train, collate=collate_fn, name="kto", config=cfg,
        step=lambda m, b: LossOutput(*kto_step(m, b, ref, cfg, chunk)),
        count=lambda b: float(b.num_examples),
        evaluate=(lambda m: evaluate_pairs(m, ref, evals, collate_fn, cfg.train.eval_batch_size, eval_cfg))
        if evals else None,
        save=lambda m, path: save_model(m, tokenizer, path, cfg.model.lora, cfg))
    trainer = Trainer(cfg.train, recipe, log)
    if mode == "precompute":
        precompute_reference(ref, trainer, train, evals, collate_fn, cfg.train, cfg.model.name, log)
    return trainer


def run(cfg: KTOConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

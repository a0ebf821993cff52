"""Pieces every recipe shares: collate settings, evaluation batching, saving outputs,
data-parallel helpers."""

from __future__ import annotations

import functools
import json
import os

import torch
from torch import Tensor

from ..config import DataConfig, LoraConfig, TrainConfig, to_dict
from ..data.collate import collate


def make_collate(tokenizer, data: DataConfig, train: TrainConfig, share_prompt: bool = True):
    return functools.partial(collate, pad_id=tokenizer.pad_token_id,
                             pack_length=train.pack_length or data.max_length,
                             share_prompt=share_prompt and train.packing, pack=train.packing)


def eval_batches(examples, batch_size: int, collate_fn, device=None):
    for i in range(0, len(examples), batch_size):
        b = collate_fn(examples[i:i + batch_size])
        yield b.to(device) if device is not None else b


def model_device(model):
    return next(model.parameters()).device


def save_model(model, tokenizer, path: str, lora: LoraConfig, config=None, extra_config: dict | None = None):
    """``save_pretrained`` outputs: full weights, or LoRA adapters (merged when asked), written
    into a temporary directory that then replaces ``path`` whole (no old file survives beside them)."""
    from .checkpoint import atomic_dir

    with atomic_dir(path) as tmp:
        _save_model(model, tokenizer, tmp, lora, config, extra_config)


def _save_model(model, tokenizer, path: str, lora: LoraConfig, config=None, extra_config: dict | None = None):
    if lora.r > 0 and lora.merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target = model.get_base_model() if hasattr(model, "get_base_model") and not (
        lora.r > 0 and not lora.merge) else model
    if extra_config:
        cfg_obj = getattr(target, "config", None) or model.config
        for k, v in extra_config.items():
            setattr(cfg_obj, k, v)
    target.save_pretrained(path)
    if lora.r > 0 and not lora.merge and extra_config:
        # adapters only: keep the extra fields next to them
        with open(os.path.join(path, "rlhfkit.json"), "w") as f:
            json.dump(extra_config, f, indent=1)
    tokenizer.save_pretrained(path)
    if config is not None:
        with open(os.path.join(path, "rlhfkit_recipe.json"), "w") as f:
            json.dump(to_dict(config), f, indent=1)


def precompute_reference(ref, trainer, train: list, evals: list, collate_fn, tcfg: TrainConfig,
                         model_key: str, log) -> None:
    """Reference log-probs, once, for the training examples the run will visit (a run stopped
    early by max_steps visits fewer than all) and for the held-out ones; cached in the run dir."""
    visited = [train[i] for i in trainer.visited_examples()]
    for name, exs in (("train", visited), ("eval", evals)):  # eval batches line up with evaluation
        if exs:
            ref.precompute(exs, collate_fn, tcfg.eval_batch_size, log=log, model_key=model_key,
                           cache=os.path.join(tcfg.output_dir, f"ref_logps_{name}.pt"))


def dist_sum():
    """A sum over data-parallel processes (None with one process): advantage statistics
    such as REINFORCE++'s batch normalisation and PPO's whitening then cover the global batch."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
            torch.distributed.get_world_size() == 1:
        return None

    def reduce(t: Tensor) -> Tensor:
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t
    return reduce


def dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0

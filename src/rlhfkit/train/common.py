"""Pieces every recipe shares: collate settings, evaluation batching, saving outputs,
data-parallel helpers."""

from __future__ import annotations

import copy
import functools
import json
import os

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import DataConfig, LoraConfig, TrainConfig, to_dict
from ..data.collate import collate


@dataclass
class LossOutput:
    """What a recipe's ``step(model, batch)`` returns to the loop.

    ``sum``: the sum of the micro-batch's per-item losses (the loop divides by the item count
    of the whole optimizer step, which ``Recipe.count`` gives before any forward runs, so the
    division can happen before each micro-batch's backward). ``metrics``: per-micro-batch means,
    averaged by the loop with the micro-batches' item counts as weights. ``extra``: a term the
    recipe already normalised (e.g. PPO-ptx's SFT mean), added as it is. ``sums``: raw totals
    (e.g. token counts and KL sums) the loop adds over micro-batches and processes and returns
    with the update's record, for statistics a mean of means would get wrong."""

    sum: Tensor
    metrics: dict = field(default_factory=dict)
    extra: Tensor | None = None
    sums: dict = field(default_factory=dict)


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


def save_model(model, tokenizer, path: str, lora: LoraConfig, config=None, extra_config: dict | None = None,
               base: str | None = None):
    """``save_pretrained`` outputs: full weights, or LoRA adapters (merged when asked), written
    into a temporary directory that then replaces ``path`` whole (no old file survives beside them).

    Outputs travel: the base model is recorded by a name a user can resolve (the hub name of the
    embedded model; never a path of this machine), the resolved config (paths made portable) is
    saved as ``rlhfkit_config.yaml``, and a scalar-head model gets a pad token distinct from its
    end-of-turn token, so that ``AutoModelForSequenceClassification`` reads the score where
    rlhfkit does (the last token). ``base`` defaults to ``config.model.name``."""
    from .checkpoint import atomic_dir

    with atomic_dir(path) as tmp:
        _save_model(model, tokenizer, tmp, lora, config, extra_config, base)


def portable_config(obj):
    """``obj`` (a config dict) with every absolute path made portable (:func:`portable_path`)."""
    from ..models.loading import portable_path

    if isinstance(obj, dict):
        return {k: portable_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_config(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(os.path.expanduser(obj)) and len(obj) > 1:
        return portable_path(obj)
    return obj


def _distinct_pad(tokenizer, eos_id):
    """A token to pad with that is not the end-of-turn token (None if the vocabulary has none)."""
    for t in (tokenizer.pad_token, tokenizer.unk_token, "<|endoftext|>", "<pad>", "<|pad|>", tokenizer.bos_token):
        if t and t in tokenizer.get_vocab() and tokenizer.convert_tokens_to_ids(t) != eos_id:
            return t
    return None


def _save_model(model, tokenizer, path: str, lora: LoraConfig, config=None, extra_config: dict | None = None,
                base: str | None = None):
    from ..models.loading import base_model_info

    base = base or getattr(getattr(config, "model", None), "name", None)
    info = base_model_info(base) if base else None
    adapters = lora.r > 0 and hasattr(model, "peft_config")
    if adapters and lora.merge and hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()  # the trained model keeps its adapters
        adapters = False
    target = model if adapters or not hasattr(model, "get_base_model") else model.get_base_model()
    cfg_obj = getattr(target, "config", None) or model.config
    if adapters and hasattr(model, "get_base_model"):
        cfg_obj = model.get_base_model().config
    saved = dict(vars(cfg_obj))
    fields = dict(extra_config or {})
    if info is not None:
        try:
            with open(os.path.join(base, "config.json")) as f:
                root = json.load(f).get("rlhfkit_base_model")
        except (OSError, ValueError, TypeError):
            root = None
        fields["rlhfkit_base_model"] = root or info["name"]
        cfg_obj._name_or_path = info["name"]
    scalar = type(getattr(model, "get_base_model", lambda: model)()).__name__.endswith("ForSequenceClassification")
    tok = tokenizer
    if scalar and tokenizer.eos_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        pad = _distinct_pad(tokenizer, tokenizer.eos_token_id)
        if pad is not None:
            tok = copy.deepcopy(tokenizer)
            tok.pad_token = pad
            cfg_obj.pad_token_id = tok.pad_token_id
    for k, v in fields.items():
        setattr(cfg_obj, k, v)
    try:
        target.save_pretrained(path)
    finally:  # the live model keeps its own config
        for k in [k for k in vars(cfg_obj) if k not in saved]:
            delattr(cfg_obj, k)
        vars(cfg_obj).update(saved)
    if adapters:
        _portable_adapters(path, info, fields)
    tok.save_pretrained(path)
    if config is not None:
        import yaml

        with open(os.path.join(path, "rlhfkit_config.yaml"), "w") as f:
            yaml.safe_dump(portable_config(to_dict(config)), f, sort_keys=False)


def _portable_adapters(path: str, info: dict | None, fields: dict) -> None:
    """Adapters name a base a user can resolve; rlhfkit.json says how rlhfkit reloads it; no
    blank PEFT README (the model card replaces it)."""
    f = os.path.join(path, "adapter_config.json")
    if info is not None and os.path.isfile(f):
        with open(f) as fh:
            acfg = json.load(fh)
        acfg["base_model_name_or_path"] = info["name"]
        with open(f, "w") as fh:
            json.dump(acfg, fh, indent=2, sort_keys=True)
    extra = dict(fields)
    if info is not None and info["rlhfkit_name"]:
        extra["rlhfkit_base_name"] = info["rlhfkit_name"]
    elif info is not None and info.get("local"):
        extra["rlhfkit_base_relpath"] = os.path.relpath(info["local"], path)
    if extra:
        with open(os.path.join(path, "rlhfkit.json"), "w") as fh:
            json.dump(extra, fh, indent=1)
    readme = os.path.join(path, "README.md")
    if os.path.isfile(readme):
        os.remove(readme)


def precompute_reference(ref, trainer, train: list, evals: list, collate_fn, tcfg: TrainConfig,
                         model_key: str, log) -> None:
    """Reference log-probs, once, for the training examples the run will visit (a run stopped
    early by max_steps visits fewer than all) and for the held-out ones; cached in the run dir,
    one file per data-parallel process (each computes and writes its own examples)."""
    visited = [train[i] for i in trainer.visited_examples()]
    rank = f".rank{dist_rank()}" if dist_world() > 1 else ""
    for name, exs in (("train", visited), ("eval", evals)):  # eval batches line up with evaluation
        if exs:
            ref.precompute(exs, collate_fn, tcfg.eval_batch_size, log=log, model_key=model_key,
                           cache=os.path.join(tcfg.output_dir, f"ref_logps_{name}{rank}.pt"))


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


def dist_world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0

"""Atomic, verifiable training checkpoints.

A checkpoint directory ``checkpoints/step-000123`` holds the trainable weights (frozen
weights never change, so they are not repeated), the optimizer and scheduler states, the
trainer state (step = data position), any recipe state, and every RNG state. It is written
into a temporary directory that is renamed into place only when complete; ``manifest.json``
(written last) records each file's size, so a torn or truncated checkpoint is detected on
resume and the previous one is used instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import TrainingError

MANIFEST = "manifest.json"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def trainable_state(model) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: str, step: int, *, model, optimizer, scheduler, state: dict,
                    extra: dict | None = None, keep: int = 2) -> str:
    """Write ``root/step-{step}`` atomically; delete all but the newest ``keep``."""
    return save_state(root, step, model=model, state=state, keep=keep, states={
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "extra": extra or {}})


def save_state(root: str, step: int, *, model, state: dict, states: dict, keep: int = 2) -> str:
    """Atomic checkpoint of the trainable weights, ``states`` (pickled with the RNG states)
    and the JSON ``state``, as ``root/step-{step}``; keeps the newest ``keep``."""
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step-{step:06d}")
    tmp = tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=root)
    try:
        save_file(trainable_state(model), os.path.join(tmp, "trainable.safetensors"))
        torch.save(dict(states, rng=rng_state()), os.path.join(tmp, "states.pt"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(dict(state, step=step), f, indent=1)
        sizes = {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(sizes, f)
        for n in os.listdir(tmp):  # flush file contents before the rename publishes them
            with open(os.path.join(tmp, n), "rb") as fh:
                os.fsync(fh.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(f"could not write checkpoint {final}: {getattr(e, 'strerror', None) or e}. Free disk "
                            "space or fix permissions; earlier checkpoints are kept") from e
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step-") and n[5:].isdigit())
    return [os.path.join(root, n) for n in names]


def is_complete(path: str) -> bool:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            sizes = json.load(f)
        return all(os.path.getsize(os.path.join(path, n)) == s for n, s in sizes.items())
    except (OSError, ValueError):
        return False


def latest_checkpoint(root: str, log=None) -> str | None:
    """Newest complete checkpoint; torn ones are reported and skipped."""
    for path in reversed(list_checkpoints(root)):
        if is_complete(path):
            return path
        if log:
            log(f"checkpoint {path} is incomplete or corrupted; trying the previous one")
    return None


def load_checkpoint(path: str, *, model, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore weights, optimizer, scheduler and RNG; return (trainer state, recipe extra)."""
    state, states = load_state(path, model=model)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    return state, states.get("extra", {})


def load_state(path: str, *, model) -> tuple[dict, dict]:
    """Restore the weights and RNG states of a ``save_state`` checkpoint; return
    (its JSON state, its pickled states)."""
    weights = load_file(os.path.join(path, "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise TrainingError(f"checkpoint {path} does not match this model (e.g. '{missing[0]}'); "
                            "resume with the same model and LoRA/freeze settings")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    states = torch.load(os.path.join(path, "states.pt"), weights_only=False)
    set_rng_state(states["rng"])
    with open(os.path.join(path, "trainer_state.json")) as f:
        return json.load(f), states

"""What a run sets up before its loop: config checks, seed and threads, the optimizer and the
learning-rate schedule, and the allocator switch of ``train.return_freed_memory``."""

from __future__ import annotations

import math

import torch

from ..backends.cpu.memory import return_freed_memory  # noqa: F401  (re-exported)
from ..config import TrainConfig
from ..errors import TrainingError
from .trackers import require_trackers

__all__ = ["check_train_config", "make_optimizer", "make_scheduler", "return_freed_memory", "start_run"]


def check_train_config(cfg: TrainConfig) -> None:
    """Reject impossible training settings before anything is loaded (TrainConfig.validate), and
    trackers in ``train.report_to`` that are not installed."""
    cfg.validate()
    require_trackers(cfg.report_to)


def start_run(cfg: TrainConfig) -> None:
    """Before a recipe builds anything: seed, and the CPU thread count (so reference
    precomputation and rollouts already run with ``train.threads``)."""
    check_train_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)


def make_optimizer(groups, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where PyTorch has one for ``device`` and train.fused_optimizer is on."""
    fused = cfg.fused_optimizer and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **({"fused": True} if fused else {}))


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler == "constant":
            return 1.0
        if cfg.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        raise TrainingError(f"unknown lr_scheduler '{cfg.lr_scheduler}'; use cosine|linear|constant")

    factor(total_steps)  # validate the name before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""Supervised fine-tuning: negative log-likelihood of the trainable completion tokens."""

from __future__ import annotations

from torch import Tensor


def sft_loss(token_logps: Tensor, mask: Tensor) -> tuple[Tensor, dict]:
    """Per-token NLL.

    token_logps: (T,) log p(y_t | x, y_<t) of every completion token; mask: (T,) 1 where the
    token carries loss. Returns ``(per_token_loss (T,) with zeros where masked, metrics)``;
    the caller divides the sum by the number of trainable tokens of the whole optimizer step
    (token mean over the step, so gradient accumulation does not change the loss).

    See docs/algorithms.md#sft.
    """
    nll = -token_logps * mask
    n = mask.sum().clamp(min=1)
    return nll, {"nll": float(nll.detach().sum() / n), "tokens": float(mask.sum())}

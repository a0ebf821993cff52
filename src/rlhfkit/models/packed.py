"""Decode-speed linear layers on CPU: weights reordered once for oneDNN's GEMM.

A decode step multiplies a handful of rows (one new token per live sequence) by every
weight matrix. PyTorch's default fp32 GEMM is slow for such skinny inputs: at 4-16 rows it
runs 2-4x slower than reading the weights once would allow. oneDNN's linear with the
weight reordered into its blocked layout stays close to that memory-bandwidth limit from 4
rows up; below that the plain GEMV already is, and is used. :func:`packed_linears`
reorders every fp32 ``nn.Linear`` of a model on entry (one extra copy of the weights while
it is open, freed on exit) and routes the module's no-grad calls through it; anything else
(autograd, other dtypes or devices) takes the ordinary path. Results equal ``F.linear`` up
to float summation order.

Weights are reordered on every entry, so the packed copy always reflects the current
weights: an optimizer step between two rollouts needs no further synchronisation.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
from torch import nn

_SUPPORTED: bool | None = None
MIN_ROWS = 4
"""Fewer input rows than this take the plain path (measured at 1 and 2 threads: oneDNN is
5-30 % slower than PyTorch's GEMV at 1-2 rows, 1.2-3x faster from 4 rows up)."""


def packed_linear_available() -> bool:
    """True when this torch build has the oneDNN reordered-weight linear (x86 CPU builds)."""
    global _SUPPORTED
    if _SUPPORTED is None:
        try:
            # fixed values, not the global RNG: probing must not shift a seeded (or resumed) stream
            w = torch.linspace(-1.0, 1.0, 32).view(8, 4)
            x = torch.linspace(0.5, -0.5, 12).view(3, 4)
            pw = torch.ops.mkldnn._reorder_linear_weight(w, 3)
            y = torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], "")
            _SUPPORTED = bool(torch.allclose(y, x @ w.T, atol=1e-5))
        except Exception:  # no oneDNN in this build: the plain path is used
            _SUPPORTED = False
    return _SUPPORTED


def reorder_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` (out, in) in oneDNN's blocked layout for inputs of about ``rows`` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, int(rows)))


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` for a weight from :func:`reorder_weight` (any leading dims)."""
    shape = x.shape
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]).contiguous(), packed, bias, "none", [], "")
    return y.view(*shape[:-1], y.shape[-1])


def few_rows(x: torch.Tensor) -> bool:
    """Fewer than MIN_ROWS input rows: the plain GEMV is as fast or faster."""
    return x.numel() < MIN_ROWS * x.shape[-1]


def _packed_forward(packed: torch.Tensor):
    def forward(self, x):
        if (torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu"
                or self.weight.dtype != torch.float32 or few_rows(x)):
            return nn.functional.linear(x, self.weight, self.bias)
        return packed_matmul(x, packed, self.bias)
    return forward


@contextmanager
def packed_linears(model: nn.Module, rows: int = 8, enabled: bool = True):
    """Inside the block, no-grad calls of ``model``'s fp32 CPU ``nn.Linear`` layers use oneDNN
    with reordered weights (``rows``: the typical number of input rows, a layout hint).
    A no-op when ``enabled`` is false, the model is not on the CPU, or oneDNN is missing."""
    mods = []
    if enabled and packed_linear_available():
        mods = [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"
                and m.weight.dtype == torch.float32]
    try:
        with torch.no_grad():
            for m in mods:
                m.forward = types.MethodType(_packed_forward(reorder_weight(m.weight, rows)), m)
        yield model
    finally:
        for m in mods:
            m.__dict__.pop("forward", None)

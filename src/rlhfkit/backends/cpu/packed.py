"""Decode-speed matrix products on the CPU: weights reordered once into oneDNN's blocked layout.

A decode step multiplies a handful of rows (one new token per live sequence) by every weight
matrix; PyTorch's default fp32 GEMM handles such skinny inputs poorly, while oneDNN's linear
with the weight reordered for it stays close to the memory-bandwidth limit. Below
:data:`MIN_ROWS` input rows the plain matrix-vector product is used instead. Results equal
``F.linear`` up to float summation order.

Two ways to use it on a model's linear layers, neither of which changes the model:

- :func:`packed_calls`: inside the block, ``F.linear`` calls on the given weights are routed
  to their reordered copies (a scoped ``TorchFunctionMode``; the modules and their
  ``forward`` are untouched). The ``cpu`` rollout engine uses it when it runs a model's own
  Hugging Face forward.
- :func:`packed_linears`: the older form that sets a per-instance ``forward`` on every fp32
  ``nn.Linear`` for the duration of the block (no longer used inside rlhfkit; kept for callers
  of the public name).

The reordered copies are made on entry, so they reflect the weights at that moment.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_SUPPORTED: bool | None = None
MIN_ROWS = 4
"""Inputs of fewer rows than this take the plain matrix-vector product (at one to three rows it
is the faster of the two; from four rows up the reordered weights are)."""


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
    """``weight`` (out, in) in oneDNN's blocked layout for inputs of about ``rows`` rows (fp32
    or bf16; the product then runs in that dtype)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, int(rows)))


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` for a weight from :func:`reorder_weight` (any leading dims; ``x`` in
    the weight's dtype)."""
    shape = x.shape
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]).contiguous(), packed, bias, "none", [], "")
    return y.view(*shape[:-1], y.shape[-1])


def few_rows(x: torch.Tensor) -> bool:
    """Fewer than MIN_ROWS input rows: the plain GEMV is as fast or faster."""
    return x.numel() < MIN_ROWS * x.shape[-1]


def _packable(m: nn.Module) -> bool:
    return type(m) is nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32


class _PackedCalls(TorchFunctionMode):
    """Routes no-grad ``F.linear(x, w, b)`` with a registered fp32 CPU ``w`` to its reordered copy."""

    def __init__(self, table: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.table = table

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2:
            hit = self.table.get(id(args[1]))
            x = args[0]
            if (hit is not None and hit[0] is args[1] and not torch.is_grad_enabled()
                    and x.dtype == torch.float32 and x.device.type == "cpu" and not few_rows(x)):
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return packed_matmul(x, hit[1], bias)
        return func(*args, **kwargs)


@contextmanager
def packed_calls(model: nn.Module, rows: int = 8, enabled: bool = True):
    """Inside the block, no-grad products with ``model``'s fp32 CPU ``nn.Linear`` weights use
    oneDNN with reordered copies of them (``rows``: the typical number of input rows, a layout
    hint); the model itself is not modified. A no-op when ``enabled`` is false, the model is
    not on the CPU, or oneDNN is missing."""
    mods = [m for m in model.modules() if _packable(m)] if enabled and packed_linear_available() else []
    if not mods:
        yield model
        return
    with torch.no_grad():
        table = {id(m.weight): (m.weight, reorder_weight(m.weight, rows)) for m in mods}
    with _PackedCalls(table):
        yield model


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
    with reordered weights, through a per-instance ``forward`` removed again on exit
    (``rows``: the typical number of input rows, a layout hint). A no-op when ``enabled`` is
    false, the model is not on the CPU, or oneDNN is missing."""
    mods = []
    if enabled and packed_linear_available():
        mods = [m for m in model.modules() if _packable(m)]
    try:
        with torch.no_grad():
            for m in mods:
                m.forward = types.MethodType(_packed_forward(reorder_weight(m.weight, rows)), m)
        yield model
    finally:
        for m in mods:
            m.__dict__.pop("forward", None)

"""oneDNN-reordered linear weights for CPU decoding; they live in :mod:`rlhfkit.backends.cpu.packed`."""

from __future__ import annotations

from ..backends.cpu.packed import (MIN_ROWS, few_rows, packed_calls, packed_linear_available,  # noqa: F401
                                   packed_linears, packed_matmul, reorder_weight)

__all__ = ["MIN_ROWS", "few_rows", "packed_calls", "packed_linear_available", "packed_linears",
           "packed_matmul", "reorder_weight"]

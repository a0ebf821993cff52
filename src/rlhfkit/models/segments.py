"""Attention over packed rows, one sample block at a time.

A packed row holds several samples under a block-diagonal mask (:mod:`rlhfkit.data.collate`).
Scaled-dot-product attention with that mask still computes every query against every key of
the row: row_length² scores, most of them masked away. The samples' own attention needs only
Σ (block length × keys it may see). This module registers an attention implementation,
``rlhfkit_segments``, that is the ordinary SDPA implementation except when the forward call
carries ``blocks`` (the layout collate built): then each block is one SDPA call over exactly
its keys, causal within the block, after an optional fully visible prefix (the shared prompt
in front of each completion). Padding positions get zero output (nothing reads them).

The result equals the masked SDPA up to float summation order (tested on log-probs and
gradients). It is the default (``model.segment_attention``) for models loaded with
``attn_implementation: sdpa``; generation and any call without ``blocks`` are plain SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NAME = "rlhfkit_segments"

Block = tuple[int, int, int, int]
"""(query start, query end, prefix start, prefix end) columns of one row; prefix end ==
prefix start means no prefix (the block attends causally to itself only)."""


def segment_attention(query: Tensor, key: Tensor, value: Tensor, blocks: list[list[Block]],
                      scale: float | None = None, dropout: float = 0.0) -> Tensor:
    """Attention of packed rows block by block. ``query`` (R, H, L, D), ``key``/``value``
    (R, Hkv, L, D); returns (R, H, L, D)."""
    R, H, L, D = query.shape
    gqa = key.shape[1] != H
    rows = []
    for r, row in enumerate(blocks):
        parts, end = [], 0
        for qs, qe, ps, pe in row:
            if qs != end:
                raise ValueError(f"row {r}: blocks must tile the row from column 0 (block at {qs}, expected {end})")
            q = query[r:r + 1, :, qs:qe]
            if pe > ps:
                k = torch.cat([key[r:r + 1, :, ps:pe], key[r:r + 1, :, qs:qe]], 2)
                v = torch.cat([value[r:r + 1, :, ps:pe], value[r:r + 1, :, qs:qe]], 2)
                n, p = qe - qs, pe - ps
                mask = torch.ones(n, p + n, dtype=torch.bool, device=query.device)
                mask[:, p:] = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale,
                                                   enable_gqa=gqa)
            else:
                o = F.scaled_dot_product_attention(q, key[r:r + 1, :, qs:qe], value[r:r + 1, :, qs:qe],
                                                   is_causal=True, dropout_p=dropout, scale=scale, enable_gqa=gqa)
            parts.append(o)
            end = qe
        if end < L:  # padding at the end of the row
            parts.append(query.new_zeros(1, H, L - end, D))
        rows.append(torch.cat(parts, 2) if len(parts) > 1 else parts[0])
    return torch.cat(rows, 0) if len(rows) > 1 else rows[0]


def _forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
             is_causal=None, blocks=None, **kwargs):
    """The ``rlhfkit_segments`` attention implementation (HF attention-interface signature)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = segment_attention(query, key, value, blocks, scale=scaling, dropout=dropout)
    return out.transpose(1, 2).contiguous(), None


_REGISTERED = False


def register() -> str:
    """Register ``rlhfkit_segments`` with transformers (attention and mask functions; the mask
    is SDPA's, so calls without blocks behave exactly as ``sdpa``). Returns the name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, _forward)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _REGISTERED = True
    return NAME


def uses_segments(model) -> bool:
    from .forward import unwrap

    return getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None) == NAME

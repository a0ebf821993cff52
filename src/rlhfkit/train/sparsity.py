"""Sparse fine-tuning deltas: a proximal L1 step after every optimizer update
(docs/algorithms.md#paft).

PAFT trains SFT and preference alignment in parallel from one base and merges the two deltas;
a dense SFT delta interferes with the alignment delta when they are merged, so SFT is trained
with an L1 penalty that drives most entries of its delta to zero. Here the penalty λ‖δ‖₁ is
applied as its proximal operator after each optimizer step, with that step's learning rate η:

    δ ← sign(δ) · max(|δ| − η·λ, 0)

which sets entries exactly to zero (an L1 term in the loss, under Adam's per-entry scaling,
only shrinks them). δ is a LoRA adapter's own weights (the paper's L1 on the adapters; they
start at B = 0) or, for full fine-tuning, the trainable weights minus the starting model's (one
copy of the trainable weights is kept as the anchor; a resumed run re-reads it from the base).
"""

from __future__ import annotations

import torch


class DeltaL1:
    def __init__(self, model, coef: float, lora: bool):
        self.coef = float(coef)
        self.anchors: dict[int, torch.Tensor] = {}
        if not lora:
            for p in model.parameters():
                if p.requires_grad:
                    self.anchors[id(p)] = p.detach().clone()

    @torch.no_grad()
    def __call__(self, optimizer) -> dict:
        """The proximal step on every parameter the optimizer updates; returns the delta's sparsity."""
        zeros, total = 0, 0
        for group in optimizer.param_groups:
            thr = float(group["lr"]) * self.coef
            for p in group["params"]:
                anchor = self.anchors.get(id(p))
                d = p - anchor if anchor is not None else p.clone()
                d = torch.sign(d) * torch.clamp(d.abs() - thr, min=0.0)
                p.copy_(anchor + d if anchor is not None else d)
                zeros += int((d == 0).sum())
                total += d.numel()
        return {"delta_sparsity": zeros / max(total, 1)}

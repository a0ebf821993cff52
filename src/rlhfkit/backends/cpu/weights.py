"""The decoding weights of the lean CPU forward, in fp32, bf16 or int8.

:meth:`DecoderWeights.build` gathers what :class:`~rlhfkit.backends.cpu.lean_decode.LeanDecoder`
needs from a supported model: the token embeddings, per layer the two RMSNorm weights and four
projections (q/k/v as one matrix, o, gate/up as one matrix, down), the final norm and the LM
head. Each projection is one of:

- :class:`Fp32Linear`: the policy's numbers; with ``packed`` the matrix is kept in oneDNN's
  reordered layout (:mod:`rlhfkit.backends.cpu.packed`);
- :class:`Bf16Linear`: bfloat16 weights, the product in bfloat16 (oneDNN's reordered bf16
  layout where available), accumulated and returned in fp32;
- :class:`Int8Linear`: symmetric per-output-channel int8 weights with fp32 scales; each input
  row is quantized to int8 with its own scale (so a row's result does not depend on the other
  rows of the batch), multiplied in integers (``torch._int_mm``, exact int32 accumulation) and
  rescaled to fp32.

``live=True`` (fp32 only) reads the model's tensors where no copy is needed (single matrices,
norms, embeddings; rows below oneDNN's threshold use the layers' own weights): what a decoder
rebuilt for every call may do. Otherwise every tensor is the builder's own, so the weights stay
as they were at build time whatever later happens to the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.forward import unwrap
from .packed import few_rows, packed_linear_available, packed_matmul, reorder_weight


def _bias(layers: list[nn.Linear]) -> Tensor | None:
    if layers[0].bias is None:
        return None
    return torch.cat([m.bias.detach().float() for m in layers])


def _weight(layers: list[nn.Linear]) -> Tensor:
    """The row-wise concatenation of the layers' weights (the weight itself for one layer)."""
    if len(layers) == 1:
        return layers[0].weight.detach()
    return torch.cat([m.weight.detach() for m in layers])


class Fp32Linear:
    """``x @ W.T + b`` in fp32. With ``packed`` W lives only in oneDNN's layout; inputs of fewer
    than MIN_ROWS rows then use ``few_rows_layers`` (the source layers' own weights) when given,
    else the packed copy."""

    def __init__(self, w: Tensor, b: Tensor | None, rows: int, packed: bool,
                 few_rows_layers: list[nn.Linear] | None = None):
        self.b, self.layers = b, few_rows_layers
        self.p = reorder_weight(w, rows) if packed else None
        self.w = None if packed else w

    def __call__(self, x: Tensor) -> Tensor:
        if self.p is None:
            return F.linear(x, self.w, self.b)
        if self.layers is None or not few_rows(x):
            return packed_matmul(x, self.p, self.b)
        outs = [F.linear(x, m.weight, m.bias) for m in self.layers]
        return outs[0] if len(outs) == 1 else torch.cat(outs, -1)

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.p, self.w, self.b) if t is not None]


class Bf16Linear:
    """``x @ W.T + b`` with W stored in bfloat16 and the product taken in bfloat16."""

    def __init__(self, w: Tensor, b: Tensor | None, rows: int, packed: bool):
        wb = w.to(torch.bfloat16).contiguous()
        self.b = b
        self.p = reorder_weight(wb, rows) if packed else None
        self.w = None if packed else wb

    def __call__(self, x: Tensor) -> Tensor:
        xb = x.to(torch.bfloat16)
        y = (packed_matmul(xb, self.p, None) if self.p is not None else F.linear(xb, self.w)).float()
        return y if self.b is None else y.add_(self.b)

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.p, self.w, self.b) if t is not None]


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of each row of ``w``: ``(q int8, scale fp32)`` with
    ``w[i] ≈ q[i] * scale[i]`` and ``scale[i] = max|w[i]| / 127``."""
    w = w.detach().float()
    scale = w.abs().amax(-1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear:
    """``x @ W.T + b`` with per-output-channel int8 weights and per-row int8 activations."""

    def __init__(self, w: Tensor, b: Tensor | None):
        q, self.scale = quantize_rows(w)
        self.qt = q.t().contiguous()  # (in, out): the layout torch._int_mm reads fastest
        self.b = b

    def __call__(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        xs = x2.abs().amax(-1, keepdim=True).clamp_(min=1e-12) / 127.0
        xq = torch.round(x2 / xs).to(torch.int8)
        y = torch._int_mm(xq, self.qt).float().mul_(xs).mul_(self.scale)
        if self.b is not None:
            y.add_(self.b)
        return y.view(*shape[:-1], y.shape[-1])

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.qt, self.scale, self.b) if t is not None]


class Embedding:
    """Rows of a token-embedding table as fp32: the table in fp32, bf16, or int8 with a scale
    per row."""

    def __init__(self, weight: Tensor, dtype: str, copy: bool):
        self.scale = None
        if dtype == "int8":
            self.table, self.scale = quantize_rows(weight)
        elif dtype == "bf16":
            self.table = weight.detach().to(torch.bfloat16).contiguous()
        else:
            self.table = weight.detach().clone() if copy else weight.detach()

    def __call__(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        rows = self.table.index_select(0, flat).float()
        if self.scale is not None:
            rows.mul_(self.scale.index_select(0, flat)[:, None])
        return rows

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.table, self.scale) if t is not None]


class Norm:
    """An RMSNorm's weight (own copy unless live) and epsilon."""

    def __init__(self, norm: nn.Module, copy: bool):
        w = norm.weight.detach()
        self.w = w.float().clone() if copy else w
        self.eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))

    def __call__(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.w, self.eps)


class DecoderWeights:
    """Everything the lean forward multiplies by, in one precision (see the module docstring)."""

    def __init__(self, model, dtype: str = "fp32", rows: int = 8, packed: bool = True, live: bool = False):
        if live and dtype != "fp32":
            raise ValueError("live weights are fp32 only")
        m = unwrap(model)
        base = m.model
        self.dtype, self.live = dtype, live
        packed = packed and packed_linear_available()
        cfg = m.config
        a0 = base.layers[0].self_attn
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd, self.scale = a0.head_dim, a0.scaling
        self.rotary = base.rotary_emb  # parameter-free: cos/sin of the positions
        copy = not live
        with torch.no_grad():
            self.embed = Embedding(base.embed_tokens.weight, dtype, copy)
            self.layers = []
            for layer in base.layers:
                a, f = layer.self_attn, layer.mlp
                self.layers.append((
                    Norm(layer.input_layernorm, copy),
                    self._linear([a.q_proj, a.k_proj, a.v_proj], rows, packed),
                    self._linear([a.o_proj], rows, packed),
                    Norm(layer.post_attention_layernorm, copy),
                    self._linear([f.gate_proj, f.up_proj], rows, packed),
                    self._linear([f.down_proj], rows, packed)))
            self.norm = Norm(base.norm, copy)
            self.head = self._linear([m.get_output_embeddings()], rows, packed)

    def _linear(self, layers: list[nn.Linear], rows: int, packed: bool):
        w, b = _weight(layers), _bias(layers)
        if self.dtype == "bf16":
            return Bf16Linear(w, b, rows, packed)
        if self.dtype == "int8":
            return Int8Linear(w, b)
        if self.live:
            return Fp32Linear(w, b, rows, packed, few_rows_layers=layers if packed else None)
        if not packed and len(layers) == 1:
            w = w.clone()  # a concatenation already is a copy
        return Fp32Linear(w.float(), b, rows, packed)

    def nbytes(self) -> int:
        """Bytes of the tensors this object holds (the model's own tensors included when live)."""
        parts = list(self.embed.tensors()) + list(self.head.tensors()) + [self.norm.w]
        for n1, qkv, o, n2, gu, down in self.layers:
            parts += [n1.w, n2.w] + qkv.tensors() + o.tensors() + gu.tensors() + down.tensors()
        return sum(t.element_size() * t.numel() for t in parts)

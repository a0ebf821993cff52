"""A lean no-grad forward for sampling from Llama-family models on the CPU.

The generic Hugging Face forward runs some forty small tensor operations per layer (mask
building, cache bookkeeping, head reshapes, rotary, norms) for a single new token.
:class:`LeanDecoder` runs the same mathematics with fewer, larger operations over a
:class:`~rlhfkit.backends.cpu.weights.DecoderWeights`:

- q/k/v projections as one matrix, gate/up projections as one matrix (in fp32, possibly in
  oneDNN's reordered layout, or in bf16 / int8);
- a key/value cache preallocated for prompt + ``max_new_tokens`` (no growth, no copies);
- one fused RMSNorm kernel, and attention of a decode step as one SDPA call per layer in
  which the query heads sharing a key/value head form the query axis.

With fp32 weights the results equal the Hugging Face forward up to float summation order.
:func:`lean_decoder_issue` says why a model cannot use it (it is then decoded by the ordinary
forward): only ``LlamaForCausalLM``, ``MistralForCausalLM`` (without sliding window) and
``Qwen2ForCausalLM`` with plain ``nn.Linear`` layers (no LoRA wrappers, no quantized layers),
fp32 on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.forward import unwrap
from .weights import DecoderWeights

SUPPORTED = {"llama", "mistral", "qwen2"}


def lean_decoder_issue(model) -> str | None:
    """None when :class:`LeanDecoder` can run ``model``; else the reason it cannot."""
    m = unwrap(model)
    cfg = getattr(m, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED:
        return f"model type {kind!r} (supported: {sorted(SUPPORTED)})"
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return "MLP other than bias-free SiLU-gated"
    if getattr(cfg, "sliding_window", None) is not None and (kind != "qwen2" or getattr(cfg, "use_sliding_window", False)):
        return "sliding-window attention"
    p = next(m.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        return f"weights are {p.dtype} on {p.device.type} (the lean decoder runs fp32 on the CPU)"
    base = getattr(m, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or not hasattr(base, "rotary_emb") or not hasattr(base, "norm"):
        return "unexpected module layout"
    for layer in layers:
        a, f = layer.self_attn, layer.mlp
        lin = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, f.gate_proj, f.up_proj, f.down_proj]
        if any(type(x) is not nn.Linear for x in lin) or a.o_proj.bias is not None:
            return "projection layers other than plain nn.Linear (LoRA or quantized layers)"
        if hasattr(a, "q_norm") or hasattr(a, "k_norm"):
            return "per-head query/key norms"
    if type(getattr(base, "embed_tokens", None)) is not nn.Embedding:
        return "input embeddings other than plain nn.Embedding"
    if type(m.get_output_embeddings()) is not nn.Linear:
        return "LM head other than plain nn.Linear"
    return None


class LeanDecoder:
    """Prefill and one-token steps of a supported model over a preallocated cache.

    ``weights`` (a :class:`DecoderWeights`) is what it multiplies by; without it, fp32 weights
    read from ``model`` are built here (``packed``: oneDNN layout; ``rows``: the expected batch
    width, a layout hint). ``prefill(ids, valid, capacity)`` takes left-padded prompts
    (``valid``: 1 for real tokens), allocates a cache of ``capacity`` columns and returns the
    last position's logits; ``step(tokens)`` appends one token per row and returns the next
    logits; ``select(rows)`` keeps only those batch rows.
    """

    def __init__(self, model=None, rows: int = 8, packed: bool = True, weights: DecoderWeights | None = None):
        if weights is None:
            weights = DecoderWeights(model, "fp32", rows=rows, packed=packed, live=True)
        self.w = weights
        self.nh, self.nkv, self.hd, self.scale = weights.nh, weights.nkv, weights.hd, weights.scale
        self.q_size, self.kv_size = self.nh * self.hd, self.nkv * self.hd
        self.cap = 0
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.key_ok: Tensor | None = None   # (B, cap) which cache columns hold real tokens
        self.pos: Tensor | None = None      # (B,) position of the next token of each row
        self.t = 0                          # cache columns filled

    def _rope(self, x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
        """x * cos + rotate_half(x) * sin, with rotate_half(x) * sin = roll(x) * sin_signed."""
        return torch.addcmul(x * cos, x.roll(self.hd // 2, -1), sin_signed)

    def _forward(self, ids: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """Run ``ids`` (B, S) at positions ``pos`` (B, S) into cache columns t..t+S-1;
        ``mask`` (B, 1, S, t+S) bool: which keys each query sees. Last position's logits."""
        B, S = ids.shape
        t0, t1 = self.t, self.t + S
        # the engine's own embedding rows, not the module: hooks some wrappers put on the input
        # embeddings (e.g. to make them require grad for checkpointing) must not fire here
        x = self.w.embed(ids)                            # (B * S, H)
        cos, sin = self.w.rotary(x, pos)                 # (B, S, hd)
        h = self.hd // 2
        cos, sin = cos[:, None], torch.cat((-sin[..., :h], sin[..., h:]), -1)[:, None]  # over heads
        g = self.nh // self.nkv
        for i, (n1, qkv_l, o_l, n2, gu_l, down_l) in enumerate(self.w.layers):
            qkv = qkv_l(n1(x)).view(B, S, -1)
            qk = qkv[..., :self.q_size + self.kv_size].view(B, S, self.nh + self.nkv, self.hd).transpose(1, 2)
            qk = self._rope(qk, cos, sin)                 # queries and keys in one go
            q, k = qk[:, :self.nh], qk[:, self.nh:]
            v = qkv[..., self.q_size + self.kv_size:].view(B, S, self.nkv, self.hd).transpose(1, 2)
            self.k[i][:, :, t0:t1] = k
            self.v[i][:, :, t0:t1] = v
            K, V = self.k[i][:, :, :t1], self.v[i][:, :, :t1]
            if S == 1:  # the g query heads of a key/value head become the query axis
                o = F.scaled_dot_product_attention(q.reshape(B, self.nkv, g, self.hd), K, V,
                                                   attn_mask=mask, scale=self.scale)
            else:
                o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=self.scale,
                                                   enable_gqa=g > 1)
                o = o.transpose(1, 2)
            x = x + o_l(o.reshape(B * S, self.q_size))
            gu = gu_l(n2(x))
            gate, up = gu.chunk(2, dim=-1)
            x = x + down_l(F.silu(gate) * up)
        self.t = t1
        last = self.w.norm(x.view(B, S, -1)[:, -1])
        return self.w.head(last)

    @torch.no_grad()
    def prefill(self, ids: Tensor, valid: Tensor, capacity: int) -> Tensor:
        B, S = ids.shape
        self.cap = capacity
        if S > self.cap:
            raise ValueError(f"prompt of {S} tokens exceeds the cache capacity {self.cap}")
        self.k = [torch.zeros(B, self.nkv, self.cap, self.hd) for _ in self.w.layers]
        self.v = [torch.zeros(B, self.nkv, self.cap, self.hd) for _ in self.w.layers]
        self.key_ok = torch.zeros(B, self.cap, dtype=torch.bool)
        self.key_ok[:, :S] = valid.bool()
        self.t = 0
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        # a padding query sees itself too, so no softmax row is empty
        mask = (causal & self.key_ok[:, None, :S]) | torch.eye(S, dtype=torch.bool)
        self.pos = pos[:, -1] + 1
        return self._forward(ids, pos, mask[:, None])

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        if self.t >= self.cap:
            raise ValueError(f"cache capacity {self.cap} exhausted")
        self.key_ok[:, self.t] = True
        mask = self.key_ok[:, None, None, :self.t + 1]
        out = self._forward(tokens[:, None], self.pos[:, None], mask)
        self.pos = self.pos + 1
        return out

    def select(self, rows: Tensor) -> None:
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.key_ok, self.pos = self.key_ok.index_select(0, rows), self.pos.index_select(0, rows)

"""The rollout engine: batched sampling from the policy for online RL.

``Rollout`` = completions sampled for a batch of prompts (several per prompt), with the
token ids, the log-prob of every sampled token under the *sampling* distribution
(temperature / top-k / top-p applied), and whether each sample finished (EOS or a stop
string) or was cut at ``max_new_tokens``.

Backends implement :class:`RolloutBackend`. ``hf`` is a lean decode loop over the Hugging
Face model itself: left-padded prompts, one prefill, then one token per step through the
KV cache, written in place (:class:`GrowingLayer`); rows that finished are dropped from the
batch (their cache rows too), and the loop ends when every row hit EOS / a stop string. It
shares the policy's weights, so there is nothing to synchronise after an update. On the CPU
its linear layers run through oneDNN with the weights reordered at the start of each call
(``packed_weights``, :mod:`rlhfkit.models.packed`; the same results up to float summation
order), and Llama-family fp32 models are run by :class:`~rlhfkit.rl.lean_decode.LeanDecoder`
(``lean_decode``: fused projections and a preallocated cache, the same mathematics with
fewer operations per token) instead of the generic forward. A GPU engine (e.g. vLLM) plugs
in by implementing ``generate`` and ``sync_weights``.

Sampling is batch-invariant: sample ``i`` of a call draws its noise from its own generator,
seeded from one draw of the caller's RNG and its global row number (``row_offset + i``), and
picks its token by Gumbel-max. A prompt therefore gets the same samples whether it is
generated alone, in a larger batch, or on another data-parallel process (which passes its
shard's ``row_offset``), up to float ties.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..errors import ConfigError
from ..models.forward import unwrap
from ..models.packed import packed_linears
from .lean_decode import LeanDecoder, lean_decoder_issue


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    """Samples per prompt."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: the sample ends at the token that completes one (the text is cut before it)."""


@dataclass
class Rollout:
    prompt_ids: list[list[int]]          # (P) prompts as token ids
    completion_ids: list[list[int]]      # (P·n) sampled tokens, prompt-major; EOS included when hit
    logprobs: list[list[float]]          # (P·n) log-prob of each sampled token (sampling distribution)
    finished: list[bool]                 # EOS or stop string reached (False = cut at max_new_tokens)
    texts: list[str]                     # decoded responses (special tokens and stop strings removed)
    n: int
    gen_seconds: float = 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def kv_cache_bytes(model_config, rows: int, tokens: int, dtype_bytes: int = 4) -> int:
    """Bytes of a KV cache for ``rows`` sequences of ``tokens`` positions: layers × 2 (keys and
    values) × kv_heads × head_dim × tokens × rows × bytes per element."""
    c = model_config
    layers = int(getattr(c, "num_hidden_layers", 0) or getattr(c, "n_layer", 0) or 0)
    heads = int(getattr(c, "num_attention_heads", 0) or getattr(c, "n_head", 0) or 1)
    kv_heads = int(getattr(c, "num_key_value_heads", 0) or heads)
    head_dim = getattr(c, "head_dim", None) or int(getattr(c, "hidden_size", 0) or getattr(c, "n_embd", 0)) // heads
    return layers * 2 * kv_heads * int(head_dim) * int(tokens) * int(rows) * int(dtype_bytes)


def available_memory_bytes(device=None) -> int | None:
    """Free memory of ``device``: the GPU's free memory, else the OS's MemAvailable (Linux),
    else the free (or total) physical pages; None when it cannot be told."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    for name in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return int(os.sysconf(name)) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            continue
    return None


def check_kv_cache(model, rows: int, tokens: int, *, available: int | None = None,
                   what: str = "rollout.max_new_tokens") -> int:
    """ConfigError, with the figure, when the KV cache of ``rows`` × ``tokens`` cannot fit in the
    free memory of the model's device (``available`` overrides it); returns the estimate."""
    m = unwrap(model)
    p = next(m.parameters())
    need = kv_cache_bytes(m.config, rows, tokens, p.element_size())
    free = available_memory_bytes(p.device) if available is None else available
    if free is not None and need > free:
        raise ConfigError(f"{what}: the KV cache of {rows} rows x {tokens} tokens would take "
                          f"{need / 1e9:.1f} GB, more than the {free / 1e9:.1f} GB of free memory "
                          f"(layers x 2 x kv_heads x head_dim x tokens x rows x {p.element_size()} bytes); "
                          f"lower {what} or rollout.batch_size")
    return need


class GrowingLayer(DynamicLayer):
    """A KV-cache layer whose keys/values live in a buffer with room to grow: a decode step
    writes its token in place instead of concatenating the whole cache into a new tensor
    (O(length) per step, not O(length) copies of it); the capacity doubles when full."""

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = 0 if self._k is None else self.keys.shape[-2]
        m = n + key_states.shape[-2]
        if self._k is None or m > self._k.shape[-2]:
            B, H, _, D = key_states.shape
            cap = max(2 * m, m + 64)
            k, v = key_states.new_empty(B, H, cap, D), value_states.new_empty(B, H, cap, value_states.shape[-1])
            if n:
                k[:, :, :n], v[:, :, :n] = self.keys, self.values
            self._k, self._v = k, v
        self._k[:, :, n:m], self._v[:, :, n:m] = key_states, value_states
        self.keys, self.values = self._k[:, :, :m], self._v[:, :, :m]
        return self.keys, self.values

    def batch_select_indices(self, indices: Tensor) -> None:
        if self._k is not None:
            m = self.keys.shape[-2]
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :m], self._v[:, :, :m]


def new_kv_cache(model) -> DynamicCache:
    """The model's usual dynamic cache, with growing-buffer layers where it would use plain
    full-attention layers (sliding-window and other special layers are kept as they are)."""
    cache = DynamicCache(config=unwrap(model).config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


class RolloutBackend:
    """Interface: ``generate(prompt_ids, params) -> Rollout``; ``sync_weights(model)`` after
    each policy update (a no-op when the backend runs the training module itself)."""

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None, row_offset: int = 0) -> Rollout:  # pragma: no cover
        raise NotImplementedError

    def sync_weights(self, model) -> None:
        pass


def sample_tokens(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                  row_generators: list[torch.Generator] | None = None) -> tuple[Tensor, Tensor]:
    """Draw one token per row; return ``(tokens (B,), log-probs (B,))`` under the sampling
    distribution (after temperature, top-k and top-p). Greedy when temperature == 0 (the
    log-prob is then that of the untempered softmax). With ``row_generators`` (one CPU
    generator per row) each row samples by Gumbel-max from its own noise, independent of the
    other rows; otherwise all rows draw from ``generator`` (or the global RNG)."""
    logits = logits.float()
    if params.temperature <= 0:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(1, tok[:, None]).squeeze(1)
    logits = logits / params.temperature
    V = logits.shape[-1]
    if 0 < params.top_k < V:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop_sorted = cum - torch.softmax(sorted_logits, -1) >= params.top_p  # mass before this token
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    logp = torch.log_softmax(logits, -1)
    if row_generators is not None:
        u = torch.stack([torch.rand(V, generator=g) for g in row_generators]).clamp_(min=1e-30)
        tok = (logp - torch.log(-torch.log(u)).to(logp.device)).argmax(-1)
    else:
        tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
    return tok, logp.gather(1, tok[:, None]).squeeze(1)


class HFBackend(RolloutBackend):
    """KV-cache decode loop on a Hugging Face causal LM (see the module docstring)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, packed_weights: bool = True,
                 lean_decode: bool = True, shared_prefill: bool = True):
        self.model, self.tok, self.batch_size = model, tokenizer, max(1, int(batch_size))
        self.packed_weights, self.lean_decode, self.shared_prefill = packed_weights, lean_decode, shared_prefill
        eos = tokenizer.eos_token_id
        cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = set([eos] if isinstance(eos, int) else list(eos or []))
        ids |= set([cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or []))
        if not ids:
            raise ConfigError("the tokenizer has no EOS token; set tokenizer.eos_token before sampling")
        self.eos_ids = sorted(ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None, row_offset: int = 0) -> Rollout:
        t0 = time.perf_counter()
        # one draw from the caller's RNG (the global one by default, so a checkpointed RNG
        # state replays it), then a generator per sample keyed by its global row number
        base = int(torch.randint(0, 2**62, (1,), generator=generator))
        rows = [p for p in prompt_ids for _ in range(max(1, params.n))]
        gens = [torch.Generator().manual_seed((base + 1_000_003 * (row_offset + i)) % 2**63)
                for i in range(len(rows))]
        comps: list[list[int]] = []
        logps: list[list[float]] = []
        fins: list[bool] = []
        was_training = self.model.training
        self.model.eval()
        lean = self.lean_decode and lean_decoder_issue(self.model) is None
        width = min(len(rows), self.batch_size)
        try:
            with packed_linears(self.model, rows=width, enabled=self.packed_weights and not lean):
                run = LeanDecoder(self.model, rows=width, packed=self.packed_weights) if lean else _HFStepper(self.model)
                for i in range(0, len(rows), self.batch_size):
                    c, lp, f = self._decode(run, rows[i:i + self.batch_size], params, gens[i:i + self.batch_size])
                    comps += c
                    logps += lp
                    fins += f
        finally:
            self.model.train(was_training)
        texts = [self._text(c, params.stop) for c in comps]
        return Rollout([list(p) for p in prompt_ids], comps, logps, fins, texts, max(1, params.n),
                       gen_seconds=time.perf_counter() - t0)

    def _text(self, ids: list[int], stop: list[str]) -> str:
        text = self.tok.decode(ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s and s in text), default=-1)
        return text[:cut] if cut >= 0 else text

    def _decode(self, run, rows: list[list[int]], params: SamplingParams, gens: list[torch.Generator]):
        device = next(self.model.parameters()).device
        B = len(rows)
        if any(len(r) == 0 for r in rows):
            raise ConfigError("a prompt rendered to zero tokens; check the data's prompt field")
        uniq: dict[tuple, int] = {}  # each distinct prompt is prefilled once (shared_prefill)
        copy_of = [uniq.setdefault(tuple(r), len(uniq)) for r in rows] if self.shared_prefill else list(range(B))
        pre = [list(u) for u in uniq] if self.shared_prefill else rows
        Lp = max(len(r) for r in pre)
        ids = torch.full((len(pre), Lp), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(pre), Lp), dtype=torch.long)
        for b, r in enumerate(pre):  # left padding
            ids[b, Lp - len(r):] = torch.tensor(r)
            attn[b, Lp - len(r):] = 1
        ids, attn = ids.to(device), attn.to(device)
        check_kv_cache(self.model, B, Lp + params.max_new_tokens)
        logits = run.prefill(ids, attn, capacity=Lp + params.max_new_tokens)
        if len(pre) < B:  # copy each prompt's cache and next-token logits to its rows
            copy_of = torch.tensor(copy_of, device=device)
            run.select(copy_of)
            logits = logits.index_select(0, copy_of)
        live = torch.arange(B, device=device)       # original row of each batch row still decoding
        comps = [[] for _ in range(B)]
        logps = [[] for _ in range(B)]
        finished = [False] * B
        eos = torch.tensor(self.eos_ids, device=device)
        stop = [s for s in params.stop if s]
        tail = max((len(s) for s in stop), default=0) + 8
        for step in range(params.max_new_tokens):
            live_l = live.tolist()
            tok, lp = sample_tokens(logits, params, row_generators=[gens[b] for b in live_l])
            tok_l, lp_l = tok.tolist(), lp.tolist()
            done = torch.isin(tok, eos)
            done_l = done.tolist()
            for j, b in enumerate(live_l):
                comps[b].append(tok_l[j])
                logps[b].append(lp_l[j])
                if not done_l[j] and stop:
                    text = self.tok.decode(comps[b][-tail:], skip_special_tokens=True)
                    done_l[j] = any(s in text for s in stop)
                if done_l[j]:
                    finished[b] = True
            if step + 1 == params.max_new_tokens:
                break
            keep = torch.tensor([not d for d in done_l], device=device)
            if not bool(keep.any()):
                break
            if not bool(keep.all()):  # drop finished rows from the batch and the cache
                sel = keep.nonzero().squeeze(1)
                run.select(sel)
                tok, live = tok[sel], live[sel]
            logits = run.step(tok)
        return comps, logps, finished


class _HFStepper:
    """The model's own forward over its KV cache, with the interface of :class:`LeanDecoder`."""

    def __init__(self, model):
        self.model = model

    def prefill(self, ids: Tensor, valid: Tensor, capacity: int = 0) -> Tensor:
        self.attn = valid
        pos = (valid.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=valid, position_ids=pos,
                         past_key_values=new_kv_cache(self.model), use_cache=True, logits_to_keep=1)
        self.cache, self.next_pos = out.past_key_values, pos[:, -1] + 1
        return out.logits[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=self.next_pos[:, None],
                         past_key_values=self.cache, use_cache=True)
        self.cache, self.next_pos = out.past_key_values, self.next_pos + 1
        return out.logits[:, -1]

    def select(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.attn, self.next_pos = self.attn[rows], self.next_pos[rows]


BACKENDS = {"hf": HFBackend}


def rollout_options(rc) -> dict:
    """Constructor options of the HF backend from a :class:`~rlhfkit.rl.config.RolloutConfig`."""
    return dict(batch_size=rc.batch_size, packed_weights=rc.packed_weights, lean_decode=rc.lean_decode,
                shared_prefill=rc.shared_prefill)


def make_backend(name: str, model, tokenizer, **options) -> RolloutBackend:
    """The rollout engine ``name`` (``options``: see :func:`rollout_options`)."""
    if name == "vllm":
        raise ConfigError("rollout.backend=vllm is not available in this build; use rollout.backend=hf "
                          "(the interface for another engine is rlhfkit.rl.rollout.RolloutBackend)")
    if name not in BACKENDS:
        raise ConfigError(f"unknown rollout.backend '{name}'; use one of {sorted(BACKENDS)}")
    return BACKENDS[name](model, tokenizer, **options)

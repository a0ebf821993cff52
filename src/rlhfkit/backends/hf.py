"""The ``hf`` engine: a KV-cache decode loop over the training module itself.

Left-padded prompts, one prefill, then one token per step through the model's own Hugging Face
forward and KV cache, written in place (:class:`GrowingLayer`); rows that finished are dropped
from the batch (their cache rows too), and the loop ends when every row hit EOS / a stop string.
It decodes with the training module's own parameters, so ``update_weights`` has nothing to do.

:class:`InProcessEngine` is the loop itself, shared with the ``cpu`` engine: an engine supplies
a *runner* (``prefill(ids, valid, capacity)``, ``step(tokens)``, ``select(rows)``) and the loop
does the batching, shared prefill, sampling and stopping.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..errors import ConfigError
from ..models.forward import unwrap
from .base import (Rollout, RolloutEngine, SamplingParams, base_seed, eos_ids_of, response_text,
                   row_generators, sample_tokens)


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


class HFStepper:
    """Runner over the model's own forward and KV cache (prefill / step / select)."""

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


class InProcessEngine(RolloutEngine):
    """The decode loop of the in-process engines; subclasses give :meth:`runner`."""

    def __init__(self, model, tokenizer, batch_size: int = 64, shared_prefill: bool = True):
        self.model, self.tok, self.batch_size = model, tokenizer, max(1, int(batch_size))
        self.shared_prefill = shared_prefill
        self.eos_ids = eos_ids_of(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @contextmanager
    def runner(self, width: int):
        """The object that runs prefill / step / select for batches of up to ``width`` rows."""
        yield HFStepper(self.model)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None, row_offset: int = 0) -> Rollout:
        return self.generate_seeded(prompt_ids, params, base_seed(generator), row_offset)

    @torch.no_grad()
    def generate_seeded(self, prompt_ids: list[list[int]], params: SamplingParams, base: int,
                        row_offset: int = 0) -> Rollout:
        """:meth:`generate` from a sampling seed already drawn (``base``, see
        :func:`~rlhfkit.backends.base.base_seed`): global row ``row_offset + i`` samples from
        the generator of :func:`~rlhfkit.backends.base.row_seed` ``(base, row_offset + i)``, so
        a process that drew ``base`` once can hand shards of its prompts to other engines (the
        ``ray`` engine's workers) and get the rows it would have sampled itself."""
        t0 = time.perf_counter()
        rows = [p for p in prompt_ids for _ in range(max(1, params.n))]
        gens = row_generators(base, len(rows), row_offset)
        comps: list[list[int]] = []
        logps: list[list[float]] = []
        fins: list[bool] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with self.runner(min(len(rows), self.batch_size)) as run:
                for i in range(0, len(rows), self.batch_size):
                    c, lp, f = self._decode(run, rows[i:i + self.batch_size], params, gens[i:i + self.batch_size])
                    comps += c
                    logps += lp
                    fins += f
        finally:
            self.model.train(was_training)
        texts = [response_text(self.tok, c, params.stop) for c in comps]
        return Rollout([list(p) for p in prompt_ids], comps, logps, fins, texts, max(1, params.n),
                       gen_seconds=time.perf_counter() - t0)

    def _prefill(self, run, rows: list[list[int]], params: SamplingParams, device) -> Tensor:
        """Prefill ``rows`` (each distinct prompt once with shared_prefill) and return the
        next-token logits of every row, the runner's cache holding one row per sample."""
        B = len(rows)
        if any(len(r) == 0 for r in rows):
            raise ConfigError("a prompt rendered to zero tokens; check the data's prompt field")
        uniq: dict[tuple, int] = {}
        copy_of = [uniq.setdefault(tuple(r), len(uniq)) for r in rows] if self.shared_prefill else list(range(B))
        pre = [list(u) for u in uniq] if self.shared_prefill else rows
        Lp = max(len(r) for r in pre)
        ids = torch.full((len(pre), Lp), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(pre), Lp), dtype=torch.long)
        for b, r in enumerate(pre):  # left padding
            ids[b, Lp - len(r):] = torch.tensor(r)
            attn[b, Lp - len(r):] = 1
        check_kv_cache(self.model, B, Lp + params.max_new_tokens)
        logits = run.prefill(ids.to(device), attn.to(device), capacity=Lp + params.max_new_tokens)
        if len(pre) < B:  # copy each prompt's cache and next-token logits to its rows
            index = torch.tensor(copy_of, device=device)
            run.select(index)
            logits = logits.index_select(0, index)
        return logits

    def _decode(self, run, rows: list[list[int]], params: SamplingParams, gens: list[torch.Generator]):
        device = next(self.model.parameters()).device
        B = len(rows)
        logits = self._prefill(run, rows, params, device)
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
            done_l = torch.isin(tok, eos).tolist()
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


class HFEngine(InProcessEngine):
    """``hf``: the model's own forward over a growing KV cache, on the training module itself."""

    name = "hf"
    shares_weights = True

    def update_weights(self, model) -> None:
        self.model = model  # the same module in every loop that trains in place

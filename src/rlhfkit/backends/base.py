"""The rollout-engine contract: what the training loop asks of whatever samples its completions.

A :class:`RolloutEngine` turns prompts (token ids) into a :class:`Rollout`: the sampled tokens,
the log-prob of each under the engine's *sampling* distribution (temperature / top-k / top-p
applied, computed by the engine's own weights and arithmetic), and whether each sample finished
(EOS or a stop string) or was cut at ``max_new_tokens``.

Weight synchronisation: an engine that decodes with the training module itself
(``shares_weights = True``) always sees the current policy. One that holds its own copy of
the weights (a reordered, fused or lower-precision copy on the CPU; a vLLM engine's copy on the
GPU) samples from the weights it was last given: the training loop calls
``update_weights(model)`` after every optimizer step that changed the policy, and the next
``generate`` samples from those weights. Without that call the engine keeps sampling from the
old ones.

Sampling in the in-process engines is batch-invariant: sample ``i`` of a call draws its noise
from its own generator, seeded from one draw of the caller's RNG and its global row number
(``row_offset + i``), and picks its token by Gumbel-max. A prompt therefore gets the same
samples whether it is generated alone, in a larger batch, or on another data-parallel process
(which passes its shard's ``row_offset``), up to float ties.

:class:`RuntimeOptions` holds the engine-level switches (the ``runtime:`` config section).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError

SAMPLER_DTYPES = ("fp32", "bf16", "int8")


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


@dataclass
class RuntimeOptions:
    """Engine-level switches; each keeps the sampled distribution except ``sampler_dtype``."""

    packed_weights: bool = True
    """cpu engine: weight matrices in oneDNN's reordered layout (same results up to float
    summation order); false = plain PyTorch matrix products."""
    lean_decode: bool = True
    """cpu engine: Llama/Mistral/Qwen2 models decode through a dedicated forward over the
    engine's own weights (fused q/k/v and gate/up projections, preallocated cache); false (or a
    model it does not cover) = the model's own Hugging Face forward."""
    shared_prefill: bool = True
    """A prompt sampled n times is prefilled once and its KV cache copied to its n rows (same
    results up to float summation order); false = every row prefills its own copy."""
    sampler_dtype: str = "fp32"
    """cpu engine with the lean forward: precision of its weight copy. fp32 = the policy's own
    numbers; bf16 = bfloat16 weights and matrix products; int8 = symmetric per-output-channel
    int8 weights (fp32 scales) times per-row int8 activations. With bf16/int8 the returned
    log-probs are the sampler's own, not the trainer's."""
    return_freed_memory: bool = False
    """Give freed tensor memory back to the OS at once (glibc: blocks from 1 MiB get their own
    mapping) instead of keeping it in the heap: lower peak RSS, more time in the allocator.
    Linux/glibc only."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm engine: the fraction of the GPU's memory vLLM may take (weights and KV cache); the
    rest stays for the colocated training process."""

    def validate(self, p: str = "runtime.") -> None:
        for key in ("packed_weights", "lean_decode", "shared_prefill", "return_freed_memory"):
            value = getattr(self, key)
            if not isinstance(value, bool):
                raise ConfigError(f"{p}{key} must be true or false (got {value!r})")
        if self.sampler_dtype not in SAMPLER_DTYPES:
            raise ConfigError(f"{p}sampler_dtype must be one of {', '.join(SAMPLER_DTYPES)} "
                              f"(got {self.sampler_dtype!r})")
        u = self.vllm_gpu_memory_utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0 < u <= 1:
            raise ConfigError(f"{p}vllm_gpu_memory_utilization must be in (0, 1] (got {u!r})")


class RolloutEngine:
    """Interface of a rollout engine (see the module docstring for the weight contract)."""

    name: str = "base"
    shares_weights: bool = True
    """True when the engine decodes with the training module itself (update_weights is a no-op)."""

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None, row_offset: int = 0) -> Rollout:  # pragma: no cover
        raise NotImplementedError

    def update_weights(self, model) -> None:
        """Make the next ``generate`` sample from ``model``'s current weights."""

    def release(self) -> None:
        """Free what the engine holds only for sampling (e.g. a copy of the weights) until the next
        ``generate``; the training loop calls it when a rollout is done, so the copy does not sit
        in memory through the update."""

    def sync_weights(self, model) -> None:
        """Former name of :meth:`update_weights`."""
        self.update_weights(model)


def eos_ids_of(model, tokenizer) -> list[int]:
    """The EOS ids of the tokenizer and the model's generation config (ConfigError if none)."""
    eos = tokenizer.eos_token_id
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set([eos] if isinstance(eos, int) else list(eos or []))
    ids |= set([cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or []))
    if not ids:
        raise ConfigError("the tokenizer has no EOS token; set tokenizer.eos_token before sampling")
    return sorted(ids)


def base_seed(generator: torch.Generator | None) -> int:
    """One draw from the caller's RNG (the global one by default, so a checkpointed RNG state
    replays it): the seed every sample's own generator is derived from."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def row_seed(base: int, row: int) -> int:
    """The seed of global sample row ``row``."""
    return (base + 1_000_003 * row) % 2**63


def row_generators(base: int, rows: int, row_offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(row_seed(base, row_offset + i)) for i in range(rows)]


def response_text(tokenizer, ids: list[int], stop: list[str]) -> str:
    """The decoded response, special tokens removed and cut before the first stop string."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


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

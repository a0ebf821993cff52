"""Rollout engines: what samples the completions of online RL, behind one interface.

``make_engine(name, model, tokenizer, batch_size=..., runtime=RuntimeOptions(...))`` with a
name from :data:`ENGINES`:

- ``hf``: the model's own Hugging Face forward over a growing KV cache, on the training module
  itself (``shares_weights``; ``update_weights`` is a no-op);
- ``cpu``: the same loop with the CPU speed work: shared prefill, and for Llama-family fp32
  models the lean forward over the engine's own fused / reordered / bf16 / int8 copy of the
  weights (then ``update_weights`` must be called after each optimizer step); other models
  fall back to their own forward with reordered products (and share the weights);
- ``vllm``: a vLLM engine on the GPU, with its own copy of the weights pushed by
  ``update_weights``;
- ``ray``: the ``cpu`` or ``hf`` engine run by Ray actors on shards of the prompts, the weights
  broadcast through Ray's object store by ``update_weights`` (optional extra ``rlhfkit[ray]``;
  settings in :class:`~rlhfkit.backends.ray.RayOptions`, passed as ``ray=``).

See :mod:`rlhfkit.backends.base` for the contract.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Rollout, RolloutEngine, RuntimeOptions, SamplingParams

__all__ = ["ENGINES", "Rollout", "RolloutEngine", "RuntimeOptions", "SamplingParams", "make_engine"]


def _hf(model, tokenizer, batch_size: int, runtime: RuntimeOptions) -> RolloutEngine:
    from .hf import HFEngine

    return HFEngine(model, tokenizer, batch_size, shared_prefill=runtime.shared_prefill)


def _cpu(model, tokenizer, batch_size: int, runtime: RuntimeOptions) -> RolloutEngine:
    from .cpu.engine import CpuEngine

    return CpuEngine(model, tokenizer, batch_size, runtime)


def _vllm(model, tokenizer, batch_size: int, runtime: RuntimeOptions) -> RolloutEngine:
    from .vllm import VllmEngine

    return VllmEngine(model, tokenizer, batch_size, runtime)


def _ray(model, tokenizer, batch_size: int, runtime: RuntimeOptions, options=None) -> RolloutEngine:
    from .ray import RayEngine

    return RayEngine(model, tokenizer, batch_size, runtime, options)


ENGINES = {"hf": _hf, "cpu": _cpu, "vllm": _vllm, "ray": _ray}
"""Engine name -> factory ``(model, tokenizer, batch_size, runtime) -> RolloutEngine`` (``ray``
also takes its :class:`~rlhfkit.backends.ray.RayOptions`)."""


def make_engine(name: str, model, tokenizer, *, batch_size: int = 64,
                runtime: RuntimeOptions | None = None, ray=None) -> RolloutEngine:
    """The rollout engine ``name`` for ``model`` (ConfigError for an unknown name); ``ray``: the
    :class:`~rlhfkit.backends.ray.RayOptions` of the ``ray`` engine (default ones if None)."""
    if name not in ENGINES:
        raise ConfigError(f"unknown rollout.backend {name!r}; use one of {', '.join(sorted(ENGINES))}")
    rt = runtime if runtime is not None else RuntimeOptions()
    rt.validate()
    if name == "ray":
        return ENGINES[name](model, tokenizer, max(1, int(batch_size)), rt, ray)
    return ENGINES[name](model, tokenizer, max(1, int(batch_size)), rt)

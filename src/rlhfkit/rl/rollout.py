"""Rollouts for online RL: the names this module has always exported, now living in
:mod:`rlhfkit.backends` (engines, the weight contract, sampling).

:class:`HFBackend` keeps its constructor (``packed_weights``, ``lean_decode``,
``shared_prefill``) and its behaviour: the ``cpu`` engine's decode paths, with the decoding
weights re-read from the model at the start of every ``generate`` (a Llama-family fp32 model
runs the lean decoder; others their own forward with reordered products), so it always
samples from the current weights and needs no ``update_weights``. New code uses
:func:`rlhfkit.backends.make_engine`.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..backends import ENGINES, make_engine
from ..backends.base import (Rollout, RolloutEngine, RuntimeOptions, SamplingParams,  # noqa: F401
                             sample_tokens)
from ..backends.cpu.engine import CpuEngine
from ..backends.cpu.lean_decode import LeanDecoder
from ..backends.cpu.packed import packed_calls
from ..backends.hf import (GrowingLayer, HFStepper, available_memory_bytes, check_kv_cache,  # noqa: F401
                           kv_cache_bytes, new_kv_cache)
from ..errors import ConfigError

__all__ = ["BACKENDS", "GrowingLayer", "HFBackend", "Rollout", "RolloutBackend", "RolloutEngine", "SamplingParams",
           "available_memory_bytes", "check_kv_cache", "kv_cache_bytes", "make_backend", "new_kv_cache",
           "rollout_options", "sample_tokens"]

RolloutBackend = RolloutEngine
_HFStepper = HFStepper


class HFBackend(CpuEngine):
    """The decode loop with the CPU speed work, re-reading the weights on every call."""

    name = "hf"
    shares_weights = True

    def __init__(self, model, tokenizer, batch_size: int = 64, packed_weights: bool = True,
                 lean_decode: bool = True, shared_prefill: bool = True):
        super().__init__(model, tokenizer, batch_size, RuntimeOptions(
            packed_weights=packed_weights, lean_decode=lean_decode, shared_prefill=shared_prefill))
        self.packed_weights, self.lean_decode = packed_weights, lean_decode
        self.shares_weights = True

    @contextmanager
    def runner(self, width: int):
        if self.lean:
            yield LeanDecoder(self.model, rows=width, packed=self.packed_weights)
        else:
            with packed_calls(self.model, rows=width, enabled=self.packed_weights):
                yield HFStepper(self.model)


BACKENDS = {"hf": HFBackend}


def rollout_options(rc, runtime: RuntimeOptions | None = None) -> dict:
    """Constructor options of :class:`HFBackend`: the batch size of ``rc`` (a rollout config) and
    the switches of ``runtime`` (those of ``rc`` where it still has them, else the defaults)."""
    rt = runtime if runtime is not None else RuntimeOptions()
    opts = {k: getattr(rc, k, getattr(rt, k)) if runtime is None else getattr(rt, k)
            for k in ("packed_weights", "lean_decode", "shared_prefill")}
    return dict(batch_size=rc.batch_size, **opts)


def make_backend(name: str, model, tokenizer, **options) -> RolloutEngine:
    """The rollout engine ``name`` (``options``: see :func:`rollout_options`): ``hf`` is
    :class:`HFBackend`; the other names of :data:`rlhfkit.backends.ENGINES` go through
    :func:`rlhfkit.backends.make_engine` with the options as its runtime switches."""
    if name in BACKENDS:
        return BACKENDS[name](model, tokenizer, **options)
    if name not in ENGINES:
        raise ConfigError(f"unknown rollout.backend {name!r}; use one of {', '.join(sorted(ENGINES))}")
    batch_size = options.pop("batch_size", 64)
    return make_engine(name, model, tokenizer, batch_size=batch_size, runtime=RuntimeOptions(**options))

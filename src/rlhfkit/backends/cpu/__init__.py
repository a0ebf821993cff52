"""CPU-specific speed work behind the rollout-engine interface: oneDNN-reordered weights
(:mod:`.packed`), the lean Llama-family forward (:mod:`.lean_decode`) over the engine's own
fp32 / bf16 / int8 weights (:mod:`.weights`), the ``cpu`` engine (:mod:`.engine`) and the glibc
allocator switch (:mod:`.memory`)."""

from __future__ import annotations

from .engine import CpuEngine
from .lean_decode import LeanDecoder, lean_decoder_issue
from .memory import return_freed_memory
from .weights import DecoderWeights

__all__ = ["CpuEngine", "DecoderWeights", "LeanDecoder", "lean_decoder_issue", "return_freed_memory"]

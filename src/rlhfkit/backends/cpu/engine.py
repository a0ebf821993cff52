"""The ``cpu`` engine: the decode loop of :mod:`rlhfkit.backends.hf` with the CPU speed work.

For a model :func:`~rlhfkit.backends.cpu.lean_decode.lean_decoder_issue` accepts (Llama,
Mistral, Qwen2 in fp32 on the CPU, plain ``nn.Linear`` layers) and ``runtime.lean_decode`` on,
the engine decodes with :class:`~rlhfkit.backends.cpu.lean_decode.LeanDecoder` over its **own**
:class:`~rlhfkit.backends.cpu.weights.DecoderWeights`: fused q/k/v and gate/up matrices, in
oneDNN's reordered layout with ``runtime.packed_weights``, in the precision of
``runtime.sampler_dtype``. Nothing of the training module is patched or shared, so the contract
of :class:`~rlhfkit.backends.base.RolloutEngine` applies (``shares_weights`` is False): the copy
is made at the first ``generate`` after construction or after ``update_weights(model)``, and
``update_weights`` only drops the old copy (so it does not sit in memory through the update)
and records the model; calling it after every optimizer step costs nothing, and one rebuild
happens per rollout.

For any other model (LoRA-wrapped layers, GPT-2, a model on the GPU, ``lean_decode`` off) the
engine runs the model's own Hugging Face forward over the training module, with products on
its fp32 CPU linear weights routed to reordered copies made at the start of each ``generate``
(:func:`~rlhfkit.backends.cpu.packed.packed_calls`, no module is modified); it then shares the
policy's weights and ``update_weights`` has nothing to do. ``sampler_dtype`` other than fp32
needs the lean forward and is refused (ConfigError naming the reason) for such models.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from ...errors import ConfigError
from ..base import RuntimeOptions
from ..hf import HFStepper, InProcessEngine
from .lean_decode import LeanDecoder, lean_decoder_issue
from .packed import packed_calls
from .weights import DecoderWeights


class CpuEngine(InProcessEngine):
    """``cpu``: shared prefill, the lean decoder over its own (packed / bf16 / int8) weights, or
    the model's forward with packed products where the lean decoder does not apply."""

    name = "cpu"

    def __init__(self, model, tokenizer, batch_size: int = 64, runtime: RuntimeOptions | None = None):
        rt = runtime if runtime is not None else RuntimeOptions()
        rt.validate()
        super().__init__(model, tokenizer, batch_size, rt.shared_prefill)
        self.runtime = rt
        self.lean_issue = lean_decoder_issue(model) if rt.lean_decode else "runtime.lean_decode is false"
        if rt.sampler_dtype != "fp32" and self.lean_issue is not None:
            raise ConfigError(f"runtime.sampler_dtype={rt.sampler_dtype} needs the lean CPU decoder, which "
                              f"cannot run this model ({self.lean_issue}); use runtime.sampler_dtype: fp32")
        self.shares_weights = self.lean_issue is not None
        self._weights: DecoderWeights | None = None
        self.build_seconds = 0.0
        """Seconds the last copy of the weights took to make."""

    @property
    def lean(self) -> bool:
        return self.lean_issue is None

    def update_weights(self, model) -> None:
        self.model = model
        self._weights = None  # remade from the model's weights at the next generate

    def release(self) -> None:
        self._weights = None  # remade (from the current weights) at the next generate

    def decoder_weights(self, rows: int | None = None) -> DecoderWeights:
        """The engine's copy of the weights, made now if there is none (``rows``: the batch
        width the reordered layout is chosen for; default the engine's batch size)."""
        if self._weights is None:
            t0 = time.perf_counter()
            self._weights = DecoderWeights(self.model, self.runtime.sampler_dtype, rows=rows or self.batch_size,
                                           packed=self.runtime.packed_weights)
            self.build_seconds = time.perf_counter() - t0
        return self._weights

    @contextmanager
    def runner(self, width: int):
        if self.lean:
            yield LeanDecoder(weights=self.decoder_weights(width))
        else:
            with packed_calls(self.model, rows=width, enabled=self.runtime.packed_weights):
                yield HFStepper(self.model)

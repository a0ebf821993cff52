"""The ``vllm`` engine: rollouts from a vLLM engine on the GPU, colocated with the trainer.

Written against vLLM's documented offline API as of vLLM 0.11 (``vllm.LLM``, the
``logprobs_mode`` engine argument, and ``LLM.collective_rpc`` taking a callable, the RLHF
extension point introduced by vLLM PR #12084); this repository's CI has no GPU, so the engine is
exercised only where CUDA and vLLM are present:

- construction: the policy (and tokenizer) is saved to a temporary directory and loaded by
  ``vllm.LLM(model=dir, tokenizer=dir, dtype=<the policy's dtype>, seed=0,
  gpu_memory_utilization=runtime.vllm_gpu_memory_utilization, max_num_seqs=batch_size,
  enable_prefix_caching=True, logprobs_mode="processed_logprobs")``;
  ``processed_logprobs`` makes the returned log-probs those of the distribution sampled from
  (after temperature, top-k, top-p), as :class:`~rlhfkit.backends.base.Rollout` defines them;
- ``generate``: one request per prompt, ``{"prompt_token_ids": ids}`` (a ``TokensPrompt``),
  with ``vllm.SamplingParams(n, temperature, top_p, top_k (-1 = off), max_tokens, logprobs=0
  (the sampled token's log-prob only), seed, stop, stop_token_ids=<EOS ids>)``; the seed of a
  prompt's request comes from one draw of the caller's RNG and the prompt's global first row,
  so a prompt gets the same samples in any batch or data-parallel shard (vLLM's per-request
  generator; not the same numbers as the in-process engines);
- ``update_weights(model)``: the policy's ``state_dict`` is sent in chunks to every vLLM
  worker with ``LLM.collective_rpc(fn, args=(chunk,))``, where ``fn(worker, chunk)`` calls
  ``worker.model_runner.model.load_weights(weights=chunk)`` (vLLM's own loader, which maps
  Hugging Face names onto its fused layers); then ``LLM.reset_prefix_cache()``, since cached
  prefixes were computed with the old weights. Callables over ``collective_rpc`` need
  ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` in vLLM's multiprocess mode; it is set here.

vLLM is imported only when this engine is made; without it ``make_engine("vllm")`` raises a
ConfigError saying how to install it. LoRA-wrapped policies are refused (merge the adapters
first, or use the cpu / hf engine).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from ..errors import ConfigError
from ..models.forward import unwrap
from .base import (Rollout, RolloutEngine, RuntimeOptions, SamplingParams, base_seed, eos_ids_of,
                   response_text, row_seed)

INSTALL_HINT = "pip install rlhfkit[vllm] on a CUDA machine"
CHUNK_BYTES = 1 << 29


def import_vllm():
    """The ``vllm`` module, or ConfigError with the install command."""
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(f"rollout.backend=vllm needs the vllm package, which is not installed: "
                          f"{INSTALL_HINT} (or use rollout.backend=cpu or hf)") from e
    return vllm


def _load_into_worker(worker, chunk):
    """Runs inside each vLLM worker: load ``chunk`` ((name, tensor) pairs) into its model."""
    worker.model_runner.model.load_weights(weights=chunk)
    return True


def _chunks(named: list, limit: int = CHUNK_BYTES):
    chunk, size = [], 0
    for name, t in named:
        chunk.append((name, t))
        size += t.numel() * t.element_size()
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _is_lora(model) -> bool:
    return any(hasattr(m, "lora_A") for m in model.modules())


class VllmEngine(RolloutEngine):
    """``vllm``: sampling by a vLLM engine holding its own copy of the weights on the GPU."""

    name = "vllm"
    shares_weights = False

    def __init__(self, model, tokenizer, batch_size: int = 64, runtime: RuntimeOptions | None = None):
        vllm = import_vllm()
        if not torch.cuda.is_available():
            raise ConfigError("rollout.backend=vllm needs a CUDA GPU; use rollout.backend=cpu or hf here")
        if _is_lora(model):
            raise ConfigError("rollout.backend=vllm does not take LoRA-wrapped policies; merge the "
                              "adapters into the model first, or use rollout.backend=cpu or hf")
        rt = runtime if runtime is not None else RuntimeOptions()
        rt.validate()
        self.tok, self.vllm = tokenizer, vllm
        self.eos_ids = eos_ids_of(model, tokenizer)
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        m = unwrap(model)
        dtype = str(next(m.parameters()).dtype).replace("torch.", "")
        self._dir = tempfile.TemporaryDirectory(prefix="rlhfkit-vllm-")
        m.save_pretrained(self._dir.name, safe_serialization=True)
        tokenizer.save_pretrained(self._dir.name)
        try:
            self.llm = vllm.LLM(model=self._dir.name, tokenizer=self._dir.name, dtype=dtype, seed=0,
                                gpu_memory_utilization=rt.vllm_gpu_memory_utilization,
                                max_num_seqs=max(1, int(batch_size)), enable_prefix_caching=True,
                                logprobs_mode="processed_logprobs")
        except TypeError as e:  # an engine argument this vLLM does not know
            raise ConfigError(f"this vLLM ({getattr(vllm, '__version__', '?')}) lacks an engine argument "
                              f"rlhfkit needs ({e}); install vLLM 0.11 or later") from e

    def update_weights(self, model) -> None:
        named = [(k, v.detach().to("cpu")) for k, v in unwrap(model).state_dict().items()]
        for chunk in _chunks(named):
            self.llm.collective_rpc(_load_into_worker, args=(chunk,))
        self.llm.reset_prefix_cache()

    def _params(self, params: SamplingParams, seed: int):
        return self.vllm.SamplingParams(
            n=max(1, params.n), temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            logprobs=0, seed=seed % (2**31 - 1), stop=[s for s in params.stop if s] or None,
            stop_token_ids=list(self.eos_ids))

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None, row_offset: int = 0) -> Rollout:
        t0 = time.perf_counter()
        base, n = base_seed(generator), max(1, params.n)
        if any(len(p) == 0 for p in prompt_ids):
            raise ConfigError("a prompt rendered to zero tokens; check the data's prompt field")
        requests = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        sps = [self._params(params, row_seed(base, row_offset + i * n)) for i in range(len(prompt_ids))]
        outs = self.llm.generate(requests, sps, use_tqdm=False)
        comps, logps, fins = [], [], []
        for out in outs:
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                comps.append(ids)
                logps.append([float(c.logprobs[j][t].logprob) for j, t in enumerate(ids)])
                fins.append(c.finish_reason == "stop")
        texts = [response_text(self.tok, c, params.stop) for c in comps]
        return Rollout([list(p) for p in prompt_ids], comps, logps, fins, texts, n,
                       gen_seconds=time.perf_counter() - t0)

"""The frozen reference policy π_ref, in the cheapest form that serves the loss.

Modes:

* ``precompute`` — reference log-probs computed once, before training, with the initial
  policy, stored on each example (``extra["ref_logps"]``) and cached on disk next to the
  run, so no second model is kept in memory and resumed runs do not recompute them;
* ``adapters`` — with LoRA, the policy with its adapters disabled *is* the reference: no
  second copy of the weights;
* ``model`` — a separate frozen copy (needed when the loss reads the reference's whole
  token distribution, as TDPO does, and LoRA is off);
* ``none`` — reference-free losses (SimPO, ORPO) load nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

import torch

from ..errors import ConfigError, TrainingError
from .forward import LogprobOutput, completion_logprobs

MODES = ("auto", "precompute", "adapters", "model", "none")


def choose_mode(mode: str, *, needs_reference: bool, lora: bool, needs_live: bool = False) -> str:
    if mode not in MODES:
        raise ConfigError(f"reference must be one of {MODES}, got '{mode}'")
    if not needs_reference:
        return "none"
    if mode == "auto":
        if lora:
            return "adapters"
        return "model" if needs_live else "precompute"
    if mode == "adapters" and not lora:
        raise ConfigError("reference=adapters needs LoRA (set model.lora.r > 0)")
    if mode == "none":
        raise ConfigError("this loss needs a reference model; use reference=auto|precompute|adapters|model")
    if mode == "precompute" and needs_live:
        raise ConfigError("this loss reads the reference's full token distribution; use "
                          "reference=model or LoRA with reference=adapters")
    return mode


class Reference:
    def __init__(self, mode: str, policy=None, model=None, chunk: int = 1024):
        self.mode, self.policy, self.model, self.chunk = mode, policy, model, chunk
        if model is not None:
            model.eval().requires_grad_(False)

    @contextlib.contextmanager
    def _as_reference(self):
        """Yield the module that computes reference log-probs."""
        if self.mode == "model":
            yield self.model
        elif self.mode == "adapters":
            with self.policy.disable_adapter():
                yield self.policy
        else:  # precompute: the policy itself, before any update
            yield self.policy

    def module(self):
        """The module whose weights define π_ref (its LM head is shared with the policy in
        the adapters/precompute modes)."""
        return self.model if self.mode == "model" else self.policy

    @torch.no_grad()
    def logprobs(self, batch, entropy: bool = False, return_hidden: bool = False,
                 temperature: float = 1.0) -> LogprobOutput:
        """Log-probs under π_ref; ``temperature`` scales the logits as the sampler did (online RL
        scores samples drawn from softmax(z/T) under the same T)."""
        with self._as_reference() as m:
            return completion_logprobs(m, batch, chunk=self.chunk, entropy=entropy,
                                       return_hidden=return_hidden, temperature=temperature)

    def sequence_logps(self, batch) -> torch.Tensor:
        """(S,) reference sequence log-probs, from the cache or a live forward."""
        if self.mode == "precompute":
            try:
                vals = [batch.examples[e].extra["ref_logps"][k]
                        for e, k in zip(batch.seq_example.tolist(), batch.seq_completion.tolist())]
            except KeyError:
                raise TrainingError("an example has no precomputed reference log-probs (they cover "
                                    "the examples the configured steps visit); call "
                                    "Reference.precompute on it, or use reference=model") from None
            return torch.tensor(vals, dtype=torch.float32, device=batch.tgt_ids.device)
        return self.logprobs(batch).seq_logps

    @torch.no_grad()
    def precompute(self, examples, collate_fn, batch_size: int, cache: str | None = None, log=None,
                   model_key: str = "") -> None:
        """Fill ``ex.extra["ref_logps"]`` for every example.

        They are loaded from ``cache`` only when it was written for the same reference weights
        (a sha256 over every tensor of the reference module's state_dict: names, dtypes, shapes
        and bytes) and the same data (the token ids and loss masks of every example, in order),
        so a model replaced under the same name or path, or a changed data file, is
        recomputed. ``model_key`` adds free-form context (e.g. how π_ref was built)."""
        key = None
        if cache:  # the fingerprint reads every weight: only worth it for a cache
            with self._as_reference() as m:
                key = _fingerprint(examples, model_key, weights_fingerprint(m))
        if cache and os.path.isfile(cache):
            saved = torch.load(cache, weights_only=True)
            if saved.get("key") == key:
                for ex, v in zip(examples, saved["values"]):
                    ex.extra["ref_logps"] = v
                return
        was_training = self.policy.training
        self.policy.eval()
        device = next(self.policy.parameters()).device
        values = []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            b = collate_fn(chunk).to(device)
            seq = self.logprobs(b).seq_logps.cpu()
            per_ex = [[0.0] * len(ex.completions) for ex in chunk]
            for s, (e, k) in enumerate(zip(b.seq_example.tolist(), b.seq_completion.tolist())):
                per_ex[e][k] = float(seq[s])
            values += per_ex
        self.policy.train(was_training)
        for ex, v in zip(examples, values):
            ex.extra["ref_logps"] = v
        if cache:
            os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"  # never another process's half-written file
            torch.save({"key": key, "values": values}, tmp)
            os.replace(tmp, cache)
        if log:
            log(f"reference log-probs precomputed for {len(examples)} examples")


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over every tensor of ``module.state_dict()`` (name, dtype, shape, raw bytes).

    Reads the weights once (about 1 s per GB); tied tensors are hashed once per name, which
    keeps the fingerprint a pure function of the state_dict.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach()
        if hasattr(t, "full_tensor"):  # sharded (train.fsdp): the whole tensor (collective)
            t = t.full_tensor()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            flat = t.cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().data)
    return h.hexdigest()


def _fingerprint(examples, model_key: str, weights: str = "") -> str:
    """Cache key: the reference weights' fingerprint, ``model_key`` and every example's token
    ids (prompt, completions, loss masks) in order."""
    h = hashlib.sha256(f"{weights}|{model_key}".encode())
    for ex in examples:
        h.update(repr((ex.prompt, ex.completions, ex.masks)).encode())
    return h.hexdigest()

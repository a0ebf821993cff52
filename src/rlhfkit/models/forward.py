"""Forward passes over packed batches: completion log-probs and scalar scores.

Both go through the model's own ``forward`` (so wrappers such as DDP or peft see the call)
and read the final hidden states; the LM head runs only on completion positions, in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.collate import Batch
from .logprobs import chunked_logprob_stats
from .segments import uses_segments


def unwrap(model):
    """The underlying HF model (through DDP/accelerate and peft wrappers)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def hidden_states(model, batch: Batch, *, causal_lm: bool = True) -> Tensor:
    """Final (post-norm) hidden states, flattened to (R * L, H)."""
    kw = {"logits_to_keep": 1} if causal_lm else {}
    if batch.blocks is not None and uses_segments(model):
        kw["blocks"] = batch.blocks
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, output_hidden_states=True, use_cache=False, **kw)
    h = out.hidden_states[-1]                      # (R, L, H)
    return h.reshape(-1, h.shape[-1])              # (R*L, H)


@dataclass
class LogprobOutput:
    token_logps: Tensor      # (T,) log p of each completion token
    seq_logps: Tensor        # (S,) masked sum per sequence
    seq_tokens: Tensor       # (S,) masked token count per sequence
    entropy: Tensor | None   # (T,) per-token entropy when asked (differentiable)
    hidden: Tensor | None = None  # (T, H) hidden states predicting each target, when asked
    log_sum_sq: Tensor | None = None  # (T,) detached log Σ_v π(v|ctx)², when asked (WPO)


def completion_logprobs(model, batch: Batch, *, chunk: int = 1024, temperature: float = 1.0,
                        entropy: bool = False, return_hidden: bool = False,
                        log_sum_sq: bool = False) -> LogprobOutput:
    """Per-token and per-sequence log-probs of the completion tokens of ``batch``; with
    ``log_sum_sq`` also each token's detached log Σ_v π(v|ctx)² from the same chunked LM-head pass."""
    h = hidden_states(model, batch).index_select(0, batch.tgt_pos)   # (T, H)
    head = lm_head(model)

    def stats(hidden):
        return chunked_logprob_stats(hidden, head.weight, batch.tgt_ids, bias=getattr(head, "bias", None),
                                     chunk=chunk, temperature=temperature, entropy=entropy, log_sum_sq=log_sum_sq)

    logp, ent, lsq = through_module(head, stats, h) if zero3_partitioned(head) else stats(h)
    return LogprobOutput(logp, *segment_sum(logp, batch), ent, h if return_hidden else None, lsq)


def zero3_partitioned(module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions ``module``'s own parameters (each then holds only
    its shard outside the module's forward)."""
    return any(hasattr(p, "ds_id") for p in module.parameters(recurse=False))


def through_module(module, fn, *args):
    """``fn(*args)`` run as ``module``'s forward: the module's hooks run around it, so under
    DeepSpeed ZeRO-3 its parameters are gathered for ``fn`` and again for its backward (the
    chunked LM-head pass reads ``lm_head.weight`` directly, outside any module call)."""
    module.forward = fn  # an instance attribute: nn.Module.__call__ calls it between the hooks
    try:
        return module(*args)
    finally:
        del module.forward


def lm_head(model):
    return unwrap(model).get_output_embeddings()


def segment_sum(token_values: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Masked per-sequence sums of a per-target tensor, and the masked token counts."""
    S = batch.num_sequences
    mask = batch.tgt_mask.to(token_values.dtype)
    sums = token_values.new_zeros(S).index_add(0, batch.tgt_seq, token_values * mask)
    counts = mask.new_zeros(S).index_add(0, batch.tgt_seq, mask)
    return sums, counts


def sequence_scores(model, batch: Batch) -> Tensor:
    """Scalar-head score at the last token of every sequence: (S,)."""
    h = hidden_states(model, batch, causal_lm=False)
    head = unwrap(model).score
    return head(h.index_select(0, batch.last_pos)).squeeze(-1).float()


def disable_dropout(model) -> None:
    """No dropout anywhere in ``model`` (online RL: on-policy samples must have importance
    ratio exactly 1)."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    cfg = getattr(unwrap(model), "config", None)
    if cfg is not None and hasattr(cfg, "attention_dropout"):
        cfg.attention_dropout = 0.0

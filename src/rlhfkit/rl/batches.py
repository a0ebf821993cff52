"""Online-RL batches: packed rollout sequences with their per-target tensors, the PPO
policy + critic pair, and the map from packed targets to a padded (sequence, token) grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.collate import Batch
from ..models.forward import hidden_states, unwrap

@dataclass
class RLBatch:
    """A micro-batch of an update: the packed sequences plus per-target tensors."""

    batch: Batch
    old_logp: Tensor | None  # None: the update's own forward, detached (RLConfig.reuse_logps)
    advantages: Tensor
    mask: Tensor
    ref_logp: Tensor | None = None
    old_values: Tensor | None = None
    returns: Tensor | None = None
    count: float = 0.0             # items in the loss-aggregation unit
    update_tokens: float = 1.0     # masked tokens of the whole update (value-loss mean)
    ptx: Batch | None = None
    sampler_logp: Tensor | None = None  # the sampler's log-probs (for a metric, when old_logp is None)

    @property
    def num_real_tokens(self) -> int:
        return self.batch.num_real_tokens


class PolicyWithCritic(nn.Module):
    """The trained pair of PPO: the policy and a separate critic with a scalar head.

    Under data parallel each part gets its own wrapper (``wrap_parts``), since each is called
    on its own; the wrappers share the parts' parameters and are not registered as
    submodules, so checkpoints keep the plain parameter names."""

    def __init__(self, policy, critic):
        super().__init__()
        self.policy, self.critic = policy, critic
        self._wrapped: tuple | None = None

    def wrap_parts(self, wrap) -> None:
        object.__setattr__(self, "_wrapped", (wrap(self.policy), wrap(self.critic)))


def policy_of(model):
    m = model.module if hasattr(model, "module") else model
    if isinstance(m, PolicyWithCritic):
        return m._wrapped[0] if m._wrapped else m.policy
    return model


def critic_of(model):
    m = model.module if hasattr(model, "module") else model
    if isinstance(m, PolicyWithCritic):
        return m._wrapped[1] if m._wrapped else m.critic
    return None


def token_values(critic, batch: Batch) -> Tensor:
    """V(s_t) for every completion target: the scalar head at the position that predicts it."""
    h = hidden_states(critic, batch, causal_lm=False).index_select(0, batch.tgt_pos)
    return unwrap(critic).score(h).squeeze(-1).float()


def target_index(batch: Batch, prompt_of_example: list[int], group: int, width: int) -> Tensor:
    """Flat index into a (N, width) padded layout for every target of ``batch``."""
    seq = batch.tgt_seq.cpu()
    counts = torch.bincount(seq, minlength=batch.num_sequences)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(seq.numel()) - starts[seq]
    p = torch.tensor(prompt_of_example)[batch.seq_example.cpu()]
    row = p * group + batch.seq_completion.cpu()                # (S,)
    return row[seq] * width + pos

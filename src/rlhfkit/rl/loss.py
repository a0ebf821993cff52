"""The loss of one online-RL micro-batch: the policy objective (clipped surrogate, per token or
per sequence), the KL penalty when it lives in the loss, the entropy bonus, the critic's
clipped value loss and PPO-ptx's SFT term, as one :class:`~rlhfkit.train.common.LossOutput`.

When the old log-probs come from this very forward (``reuse``: one update per rollout) the
rollout statistics that need them (KL to the reference, the sampler's log-prob difference)
are returned as raw ``sums`` for the recipe to turn into the rollout's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from ..losses.kl import kl_estimate
from ..losses.objectives import PolicyLossInputs, PolicyLossParams, entropy_topq_mask, get_policy_loss
from ..losses.policy import aggregate, clipped_value_loss
from ..losses.sft import sft_loss
from ..models.forward import completion_logprobs
from ..train.common import LossOutput
from .batches import RLBatch, token_values
from .correction import mismatch_weights


@dataclass
class LossConfig:
    """The keys of :class:`~rlhfkit.rl.config.RLConfig` the loss reads."""

    policy_loss: str = "ppo"       # a registered policy loss (rlhfkit.losses.objectives)
    params: PolicyLossParams = field(default_factory=PolicyLossParams)
    entropy_top_q: float = 1.0
    correction: str = "none"       # none | tis | mis (sampler != trainer)
    correction_level: str = "token"
    correction_cap: float = 2.0
    kl_in_loss: bool = False
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    loss_agg: str = "grpo"
    max_new_tokens: int = 1
    vf_coef: float = 0.1
    value_clip: float = 0.2
    ptx_coef: float = 0.0
    chunk: int = 1024
    temperature: float = 1.0


def onpolicy_sums(logp, rb: RLBatch) -> dict:
    """Totals for the rollout metrics when the old log-probs are this forward's (``reuse``)."""
    m = rb.mask
    out = {"onpolicy/seqs": float(rb.batch.num_sequences)}
    if rb.ref_logp is not None:
        out["onpolicy/k1"] = float(((logp - rb.ref_logp) * m).sum())
        out["onpolicy/k3"] = float((kl_estimate(logp, rb.ref_logp, "k3") * m).sum())
    if rb.sampler_logp is not None:
        out["onpolicy/sampler_diff"] = float(((rb.sampler_logp - logp).abs() * m).sum())
        out["onpolicy/tokens"] = float(m.sum())
    return out


def rl_loss(policy, critic, rb: RLBatch, lc: LossConfig, beta: float) -> LossOutput:
    """Loss sum (in the aggregation's unit), metrics, the already-normalised extra terms (value
    loss, ptx) and, with reused old log-probs, the on-policy sums."""
    b = rb.batch
    out = completion_logprobs(policy, b, chunk=lc.chunk, entropy=True, temperature=lc.temperature)
    logp = out.token_logps
    old = rb.old_logp if rb.old_logp is not None else logp.detach()  # reuse_logps: ρ = 1
    mask = rb.mask
    if lc.entropy_top_q < 1.0:  # only the highest-entropy tokens (docs/algorithms.md#entropy-top-q)
        mask = entropy_topq_mask(out.entropy.detach(), mask, lc.entropy_top_q)
    spec = get_policy_loss(lc.policy_loss)
    res = spec.fn(PolicyLossInputs(logp, old, rb.advantages, mask, b.tgt_seq, b.num_sequences,
                                   entropy=out.entropy.detach(), params=lc.params))
    pg, seq_pg = res.token_loss, res.seq_loss
    metrics = dict(res.metrics)
    if lc.correction != "none" and rb.sampler_logp is not None:  # docs/algorithms.md#rollout-correction
        w, wm = mismatch_weights(old, rb.sampler_logp, mask, b.tgt_seq, b.num_sequences, mode=lc.correction,
                                 level=lc.correction_level, cap=lc.correction_cap)
        metrics.update(wm)
        if seq_pg is not None:  # one weight per sequence (correction.level sequence)
            n = mask.new_zeros(b.num_sequences).index_add(0, b.tgt_seq, mask)
            seq_pg = seq_pg * (mask.new_zeros(b.num_sequences).index_add(0, b.tgt_seq, w * mask) / n.clamp(min=1))
        pg = pg * w
    tok_loss = pg
    nt = mask.sum().clamp(min=1)
    if rb.ref_logp is not None:
        kl = kl_estimate(logp, rb.ref_logp, lc.kl_estimator)
        if lc.kl_in_loss and beta > 0:
            tok_loss = tok_loss + beta * kl
        metrics["kl_token"] = float((kl.detach() * mask).sum() / nt)
    sums = onpolicy_sums(old, rb) if rb.old_logp is None else {}
    if lc.entropy_coef:
        tok_loss = tok_loss - lc.entropy_coef * out.entropy
    loss_sum, _ = aggregate(tok_loss, mask, b.tgt_seq, b.num_sequences, lc.loss_agg, lc.max_new_tokens)
    if seq_pg is not None:  # the loop divides by the step's sequence count
        live = mask.new_zeros(b.num_sequences).index_add(0, b.tgt_seq, mask) > 0
        loss_sum = loss_sum + seq_pg.sum()
        metrics["policy_loss_seq"] = float(seq_pg.detach()[live].mean()) if live.any() else 0.0
    ratio, clipped = res.ratio, res.clipped
    log_ratio = logp.detach() - old
    metrics.update({"policy_loss": float((pg.detach() * mask).sum() / nt),
                    "clip_frac": float((clipped.float() * mask).sum() / nt),
                    "approx_kl": float((((ratio - 1) - log_ratio) * mask).sum() / nt),
                    "ratio_mean": float((ratio * mask).sum() / nt),
                    "entropy": float((out.entropy.detach() * mask).sum() / nt)})
    extra = None
    if critic is not None:
        v = token_values(critic, b)
        vl, vclipped = clipped_value_loss(v, rb.old_values, rb.returns, lc.value_clip)
        extra = lc.vf_coef * (vl * rb.mask).sum() / rb.update_tokens
        nv = rb.mask.sum().clamp(min=1)
        metrics["value_loss"] = float((vl.detach() * rb.mask).sum() / nv)
        metrics["value_clip_frac"] = float((vclipped.float() * rb.mask).sum() / nv)
    if rb.ptx is not None:
        po = completion_logprobs(policy, rb.ptx, chunk=lc.chunk)
        nll, pm = sft_loss(po.token_logps, rb.ptx.tgt_mask)
        ptx = lc.ptx_coef * nll.sum() / rb.ptx.tgt_mask.sum().clamp(min=1)
        extra = ptx if extra is None else extra + ptx
        metrics["ptx_nll"] = pm["nll"]
    return LossOutput(loss_sum, metrics, extra, sums)


def onpolicy_metrics(sums: dict, m: dict, ref: bool, sampler: bool) -> None:
    """The rollout metrics the skipped old-log-prob pass would have given, from the updates' sums."""
    seqs = sums.get("onpolicy/seqs", 0.0)
    if ref:
        m["rollout/kl"] = sums.get("onpolicy/k1", 0.0) / seqs if seqs else 0.0
        m["rollout/kl_k3"] = sums.get("onpolicy/k3", 0.0) / seqs if seqs else 0.0
    if sampler:
        m["rollout/sampler_logp_diff"] = sums.get("onpolicy/sampler_diff", 0.0) / max(sums.get("onpolicy/tokens", 0.0), 1.0)

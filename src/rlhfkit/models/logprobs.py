"""Per-token log-probs from hidden states, in chunks, without [tokens x vocab] logits.

The LM head is applied to ``chunk`` rows of hidden states at a time. The backward pass
recomputes each chunk's logits and uses d log p(y)/d logits = onehot(y) - softmax, so neither
pass keeps more than one [chunk x vocab] block alive (the naive path keeps logits,
log-softmax and their gradients for every token: 3 x tokens x vocab floats).
"""

from __future__ import annotations

import torch
from torch import Tensor


class _ChunkedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                chunk: int, temperature: float, want_entropy: bool, want_sum_sq: bool = False):
        ctx.set_materialize_grads(False)  # an entropy kept only as a metric costs no backward work
        n = hidden.shape[0]
        logp = hidden.new_empty(n, dtype=torch.float32)
        lse_all = hidden.new_empty(n, dtype=torch.float32)
        ent = hidden.new_empty(n, dtype=torch.float32) if want_entropy else None
        lsq = hidden.new_empty(n, dtype=torch.float32) if want_sum_sq else None
        for s in range(0, n, chunk):
            logits = _logits(hidden[s:s + chunk], weight, bias, temperature)  # (c, V) fp32
            picked = logits.gather(1, targets[s:s + chunk, None]).squeeze(1)
            mx = logits.amax(-1, keepdim=True)
            z = logits.sub_(mx)  # shifted in place
            if want_entropy or want_sum_sq:  # e = exp(z), S = sum(e)
                e = z.exp() if want_entropy else z.exp_()  # the entropy still reads z
                tot = e.sum(-1)
                log_tot = tot.log()
                if want_entropy:  # H = log S - sum(e z) / S
                    ez = (e.unsqueeze(1) @ z.unsqueeze(2)).view(-1)  # row-wise dot, no product buffer
                    ent[s:s + chunk] = log_tot - ez / tot
                if want_sum_sq:  # log sum_v p_v^2 = log sum(e^2) - 2 log S; sum(e^2) >= 1 (max e = 1)
                    lsq[s:s + chunk] = (e.unsqueeze(1) @ e.unsqueeze(2)).view(-1).log() - 2 * log_tot
                lse = log_tot.add_(mx.squeeze(1))
            else:  # logsumexp in place: no second [chunk x vocab] buffer
                lse = z.exp_().sum(-1).log_().add_(mx.squeeze(1))
            lse_all[s:s + chunk] = lse
            logp[s:s + chunk] = picked - lse
        ctx.save_for_backward(hidden, weight, bias, targets, lse_all, ent)
        ctx.chunk, ctx.temperature = chunk, temperature
        empty = hidden.new_zeros(0)
        if want_sum_sq:
            ctx.mark_non_differentiable(lsq)
        return logp, (ent if want_entropy else empty), (lsq if want_sum_sq else empty.clone())

    @staticmethod
    def backward(ctx, grad_logp: Tensor, grad_ent: Tensor, grad_lsq: Tensor | None = None):
        hidden, weight, bias, targets, lse_all, ent = ctx.saved_tensors
        if grad_logp is None:
            grad_logp = lse_all.new_zeros(lse_all.shape)
        use_ent = ent is not None and grad_ent is not None and grad_ent.numel() > 0
        chunk, t = ctx.chunk, ctx.temperature
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if (need_b and bias is not None) else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            logits = _logits(h, weight, bias, t)
            # d logp / d logits = onehot(y) - softmax(logits); scaled by the incoming grad.
            # Without entropy every step works in the logits' own buffer.
            logq = logits.sub_(lse_all[s:s + chunk, None])
            p = logq.exp() if use_ent else logq.exp_()
            g = p.neg() if use_ent else p.neg_()
            g.scatter_add_(1, targets[s:s + chunk, None], torch.ones_like(g[:, :1]))
            g.mul_(grad_logp[s:s + chunk, None])
            if use_ent:  # dH/dz = -p (log p + H)
                g.sub_(p * (logq + ent[s:s + chunk, None]) * grad_ent[s:s + chunk, None])
            if t != 1.0:
                g.div_(t)  # logits = (h W^T + b) / t
            if need_h:
                grad_h[s:s + chunk] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(g.t(), h.float())
            if grad_b is not None:
                grad_b.add_(g.sum(0))
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    logits = (h @ weight.t()).float()
    if bias is not None:
        logits = logits + bias.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def chunked_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, *, bias: Tensor | None = None,
                     chunk: int = 1024, temperature: float = 1.0,
                     entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log softmax(hidden @ weight.T / temperature)[targets], computed ``chunk`` rows at a time.

    hidden: (N, H); weight: (V, H) (the LM head); targets: (N,) token ids.
    Returns ``(logp (N,) fp32, entropy (N,) fp32 or None)``; both are differentiable (an
    entropy bonus backpropagates through the same chunked recomputation).
    """
    logp, ent, _ = chunked_logprob_stats(hidden, weight, targets, bias=bias, chunk=chunk,
                                         temperature=temperature, entropy=entropy)
    return logp, ent


def chunked_logprob_stats(hidden: Tensor, weight: Tensor, targets: Tensor, *, bias: Tensor | None = None,
                          chunk: int = 1024, temperature: float = 1.0, entropy: bool = False,
                          log_sum_sq: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`chunked_logprobs` plus, with ``log_sum_sq``, log Σ_v p_v² of each row's distribution
    (N,) fp32, detached: the log-probability that two independent samples from p agree (WPO's
    per-token normaliser, docs/algorithms.md#wpo). It comes from the same [chunk x vocab] block
    as the log-prob, so it costs one row-wise dot product and no extra LM-head pass.
    Returns ``(logp, entropy or None, log_sum_sq or None)``.
    """
    if hidden.shape[0] == 0:
        z = hidden.new_zeros(0, dtype=torch.float32) + 0 * weight.sum()
        return z, (z.detach() if entropy else None), (z.detach() if log_sum_sq else None)
    logp, ent, lsq = _ChunkedLogprob.apply(hidden, weight, bias, targets, max(1, int(chunk)),
                                           float(temperature), entropy, log_sum_sq)
    return logp, (ent if entropy else None), (lsq if log_sum_sq else None)


def naive_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, *, bias: Tensor | None = None,
                   temperature: float = 1.0) -> Tensor:
    """Reference implementation materialising all logits (tests and the `packing: false` path)."""
    logits = _logits(hidden, weight, bias, temperature)
    return torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)


def chunked_token_kl(h_policy: Tensor, w_policy: Tensor, h_ref: Tensor, w_ref: Tensor, *,
                     chunk: int = 1024) -> Tensor:
    """Per-token KL(π_ref(·|ctx) || π_θ(·|ctx)) over the whole vocabulary: (N,).

    h_policy (N, H) and w_policy (V, H) carry gradients; the reference side is constant.
    Each chunk is recomputed in backward (activation checkpointing), so only one
    [chunk x vocab] block is alive at a time.
    """
    from torch.utils.checkpoint import checkpoint

    def block(hp, hr):
        logp = torch.log_softmax((hp @ w_policy.t()).float(), -1)
        with torch.no_grad():
            logq = torch.log_softmax((hr @ w_ref.t()).float(), -1)
        return (logq.exp() * (logq - logp)).sum(-1)

    parts = [checkpoint(block, h_policy[s:s + chunk], h_ref[s:s + chunk], use_reentrant=False)
             for s in range(0, h_policy.shape[0], max(1, chunk))]
    return torch.cat(parts) if parts else h_policy.new_zeros(0)

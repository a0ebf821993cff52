"""Direct alignment recipe: DPO and its family on preference pairs or ranked lists.

    rlhfkit dpo --config dpo_hh --loss_type ipo

``loss_type`` names a pure loss in ``rlhfkit.losses.preference`` (pairs) or
``plackett_luce`` (ranked lists, ``rlhfkit.losses.listwise``). Chosen and rejected (or all K
list members) go through the model in one forward with the prompt computed once. The
reference is chosen by ``reference`` (see ``rlhfkit.models.reference``); reference-free
losses (SimPO, ORPO) load none. With ``sft_first`` the policy is first fine-tuned on the
chosen responses and that model becomes π_ref (for preference data not sampled from it).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import torch

from ..config import DataConfig, ModelConfig, TrainConfig, check_range, did_you_mean, validate_all
from ..data.collate import sequence_index
from ..data.pipeline import load_examples
from ..data.tokenize import Example
from ..errors import ConfigError, DataError
from ..losses.listwise import plackett_luce_loss
from ..losses.preference import (F_DIVERGENCES, PREFERENCE_LOSSES, PairLogps, get_preference_loss, get_preference_spec,
                                loss_parameters, rpo_nll)
from ..models.forward import completion_logprobs, lm_head, segment_sum
from ..models.loading import load_model
from ..models.logprobs import chunked_token_kl
from ..models.reference import Reference, choose_mode
from .common import LossOutput, precompute_reference, eval_batches, make_collate, model_device, save_model
from .loop import Recipe, Trainer, start_run
from .reward import label_matrix
from .sft import sft_step


@dataclasses.dataclass
class DPOConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=512))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/dpo", lr=1e-6, warmup_ratio=0.1))
    loss_type: str = "sigmoid"
    """sigmoid | cdpo | robust | hinge | ipo | rdpo | simpo | orpo | tdpo | f_divergence |
    apo_zero | apo_down | nca_pair | sppo_hard | exo_pair | discopop | aot_pair | aot | npo |
    sigmoid_norm | bco_pair | sft | cpo | alphapo | plackett_luce (docs/algorithms.md); a list
    (``[sigmoid, bco_pair, sft]`` or ``sigmoid,bco_pair,sft``) trains their weighted sum (MPO)."""
    loss_weights: list[float] = dataclasses.field(default_factory=list)
    """Weights of a loss_type list, one per loss (empty = 1 each); each >= 0."""
    beta: float = 0.1
    """KL strength β (SimPO: reward scale; ORPO: unused)."""
    label_smoothing: float = 0.0
    """sigmoid/cdpo/robust: assumed fraction ε of flipped labels, in [0, 0.5)."""
    alpha: float = 0.0
    """R-DPO: length coefficient α (logit βΔ + α(|y_w| - |y_l|))."""
    gamma: float = 0.5
    """SimPO: target reward margin γ."""
    orpo_lambda: float = 0.1
    """ORPO: weight λ of the odds-ratio term next to the NLL."""
    ipo_length_normalize: bool = True
    """IPO: use length-averaged log-ratios."""
    f_divergence: str = "reverse_kl"
    """f_divergence loss: reverse_kl | forward_kl | js | alpha."""
    f_alpha: float = 0.5
    """α of the α-divergence, in (0, 1)."""
    tdpo_variant: int = 1
    """TDPO: 1 (TDPO1) or 2 (TDPO2, chosen KL detached and scaled by tdpo_alpha)."""
    tdpo_alpha: float = 0.5
    """TDPO2: weight α of the sequential-KL difference."""
    lipo_lambda: bool = False
    """plackett_luce: LiPO-λ (pairwise logistic loss with LambdaRank ΔNDCG weights)."""
    discopop_tau: float = 0.05
    """DiscoPOP: temperature τ of the blend between the logistic and the exponential loss (> 0)."""
    cpo_alpha: float = 1.0
    """CPO: weight of the chosen responses' NLL (the behaviour-cloning term), >= 0."""
    alphapo_alpha: float = 0.25
    """AlphaPO: reward shape α (0 = SimPO's length-normalised log-prob)."""
    ld_alpha: float = 1.0
    """LD-DPO: weight in [0, 1] of the log-probs of the longer response's tokens past the shorter
    one's length, for policy and reference (1 = off; docs/algorithms.md#ld-dpo)."""
    rpo_alpha: float = 0.0
    """RPO: weight α of the chosen responses' length-normalised NLL added to the pair loss
    (0 = off; TRL's rpo_alpha; any pair loss except orpo, which has its own NLL term)."""
    reference: str = "auto"
    """auto | precompute | adapters | model | none (auto: none for reference-free losses,
    adapters with LoRA, model for tdpo, else precompute)."""
    ref_model: str = ""
    """Reference model for reference=model (empty = a frozen copy of the starting policy)."""
    sft_first: bool = False
    """Fine-tune on the chosen responses first and use that model as π_ref."""
    sft_epochs: float = 1.0
    sft_lr: float = 2e-5


PAIR_KINDS = ("preference", "listwise")


LOSS_PARAM_KEYS = ("label_smoothing", "alpha", "gamma", "orpo_lambda", "ipo_length_normalize",
                   "f_divergence", "f_alpha", "tdpo_variant", "tdpo_alpha", "lipo_lambda", "discopop_tau",
                   "cpo_alpha", "alphapo_alpha")


def loss_names(cfg: DPOConfig) -> list[str]:
    """The losses ``cfg.loss_type`` names (one, or the terms of a weighted sum)."""
    return [n.strip() for n in cfg.loss_type.split(",") if n.strip()]


def _params_of(loss_type: str) -> set[str]:
    if loss_type == "plackett_luce":
        return {"lipo_lambda"}
    return set().union(*(loss_parameters(n) for n in loss_type.split(",")))


def loss_params(cfg: DPOConfig) -> dict:
    """The config values of exactly the parameters ``cfg.loss_type`` takes.

    A loss parameter set to a non-default value that the chosen loss does not take is a
    ConfigError, so a setting is never silently ignored.
    """
    takes = _params_of(cfg.loss_type)
    default = DPOConfig()
    unused = [k for k in LOSS_PARAM_KEYS if k not in takes and getattr(cfg, k) != getattr(default, k)]
    if unused:
        raise ConfigError(f"loss_type={cfg.loss_type} does not use {', '.join(unused)} (it takes: "
                          f"{', '.join(sorted(takes)) or 'beta only'}); remove the setting or "
                          f"pick the loss that uses it")
    return {k: getattr(cfg, k) for k in LOSS_PARAM_KEYS if k in takes}


def _spec_any(cfg: DPOConfig, attr: str) -> bool:
    """Whether any loss of ``cfg.loss_type`` has spec flag ``attr`` (plackett_luce: reference only)."""
    if cfg.loss_type == "plackett_luce":
        return attr == "needs_reference"
    return any(getattr(get_preference_spec(n), attr) for n in loss_names(cfg))


def validate(cfg: DPOConfig) -> None:
    """Range checks of the DPO recipe's own keys (ConfigError naming the key and range)."""
    names = sorted(PREFERENCE_LOSSES) + ["plackett_luce"]
    parts = loss_names(cfg)
    if not parts:
        raise ConfigError(f"loss_type is empty; valid: {', '.join(names)}")
    for n in parts:
        if n not in names:
            raise ConfigError(f"unknown loss_type '{n}'{did_you_mean(n, names)}; valid: {', '.join(names)}")
    if len(parts) != len(set(parts)):
        raise ConfigError(f"loss_type lists a loss twice ({cfg.loss_type}); give each loss once with its weight")
    if len(parts) > 1 and "plackett_luce" in parts:
        raise ConfigError("plackett_luce ranks lists and cannot be summed with pair losses; use it alone")
    cfg.loss_type = ",".join(parts)
    if cfg.loss_weights and len(cfg.loss_weights) != len(parts):
        raise ConfigError(f"loss_weights has {len(cfg.loss_weights)} value(s) but loss_type names {len(parts)} "
                          f"loss(es) ({cfg.loss_type}); give one weight per loss, or none (1 each)")
    for i, w in enumerate(cfg.loss_weights):
        check_range(f"loss_weights[{i}]", w, lo=0)
    check_range("cpo_alpha", cfg.cpo_alpha, lo=0)
    check_range("alphapo_alpha", cfg.alphapo_alpha)
    check_range("ld_alpha", cfg.ld_alpha, lo=0, hi=1)
    if cfg.ld_alpha < 1 and cfg.loss_type == "plackett_luce":
        raise ConfigError("ld_alpha weights the tokens of a response pair; plackett_luce ranks lists (set ld_alpha 1)")
    check_range("beta", cfg.beta, lo=0, lo_open=True)
    check_range("label_smoothing", cfg.label_smoothing, lo=0, hi=0.5, hi_open=True)
    check_range("alpha", cfg.alpha, lo=0)
    check_range("gamma", cfg.gamma, lo=0)
    check_range("orpo_lambda", cfg.orpo_lambda, lo=0)
    check_range("f_alpha", cfg.f_alpha, lo=0, hi=1, lo_open=True, hi_open=True)
    check_range("tdpo_alpha", cfg.tdpo_alpha, lo=0)
    check_range("discopop_tau", cfg.discopop_tau, lo=0, lo_open=True)
    check_range("rpo_alpha", cfg.rpo_alpha, lo=0)
    if cfg.rpo_alpha > 0 and ("orpo" in parts or "plackett_luce" in parts):
        raise ConfigError(f"rpo_alpha adds an NLL term to pair losses; loss_type={cfg.loss_type} "
                          + ("already has one (orpo_lambda sets its balance)" if "orpo" in parts
                             else "ranks lists (use a pair loss, or rpo_alpha 0)"))
    if cfg.f_divergence not in F_DIVERGENCES:
        raise ConfigError(f"f_divergence must be one of {', '.join(F_DIVERGENCES)}, got '{cfg.f_divergence}'")
    if cfg.tdpo_variant not in (1, 2):
        raise ConfigError(f"tdpo_variant must be 1 or 2, got {cfg.tdpo_variant}")
    if cfg.reference not in ("auto", "precompute", "adapters", "model", "none"):
        raise ConfigError(f"reference must be auto|precompute|adapters|model|none, got '{cfg.reference}'")
    check_range("sft_epochs", cfg.sft_epochs, lo=0, lo_open=True)
    check_range("sft_lr", cfg.sft_lr, lo=0, lo_open=True)
    loss_params(cfg)


DPOConfig.validate = validate


def ld_weights(batch, seq_tokens, c, r, ld_alpha: float):
    """(T,) LD-DPO token weights: 1 on each completion's first l_p tokens, l_p the shorter length
    of its pair, ``ld_alpha`` on the rest (docs/algorithms.md#ld-dpo)."""
    mask = batch.tgt_mask
    rank = torch.cumsum(mask, 0) - mask  # masked tokens before each target; sequences are contiguous
    first = rank.new_full((batch.num_sequences,), float("inf")).scatter_reduce(0, batch.tgt_seq, rank, "amin")
    rank = rank - first[batch.tgt_seq]
    public = seq_tokens.new_zeros(batch.num_sequences)
    shortest = torch.minimum(seq_tokens[c], seq_tokens[r])
    public[c], public[r] = shortest, shortest
    w = torch.where(rank < public.to(rank.device)[batch.tgt_seq], 1.0, ld_alpha)
    return w.to(mask.dtype)


def _bco_shift(state: dict, rewards: torch.Tensor) -> torch.Tensor:
    """The running mean δ of the implicit rewards, updated with this micro-batch (summed over
    processes) and kept in ``state`` (checkpointed with the recipe)."""
    import torch.distributed as dist

    total = torch.stack([rewards.detach().double().sum(), torch.tensor(float(rewards.numel()), dtype=torch.float64)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    mean, n = state.get("bco_delta", (0.0, 0.0))
    n_new = n + float(total[1])
    mean = (mean * n + float(total[0])) / n_new if n_new else 0.0
    state["bco_delta"] = [mean, n_new]
    return torch.tensor(mean, dtype=rewards.dtype, device=rewards.device)


def dpo_step(model, batch, ref: Reference, cfg: DPOConfig, chunk: int, state: dict | None = None):
    """One micro-batch: (sum of per-pair / per-list losses, metrics)."""
    tdpo = _spec_any(cfg, "needs_token_kl")
    ld = cfg.ld_alpha < 1
    out = completion_logprobs(model, batch, chunk=chunk, return_hidden=tdpo)
    ref_seq, seq_kl, ref_tok = None, None, None
    if tdpo or (ld and ref.mode != "none"):
        rout = ref.logprobs(batch, return_hidden=tdpo)
        ref_seq, ref_tok = rout.seq_logps, rout.token_logps
        if tdpo:
            kl = chunked_token_kl(out.hidden, lm_head(model).weight, rout.hidden,
                                  lm_head(ref.module()).weight.detach(), chunk=chunk)
            seq_kl = segment_sum(kl, batch)[0]
    elif ref.mode != "none":
        ref_seq = ref.sequence_logps(batch)
    K = max(len(ex.completions) for ex in batch.examples)
    idx = sequence_index(batch, K).clamp(min=0).to(out.seq_logps.device)  # (E, K)
    if cfg.loss_type == "plackett_luce":
        scores, valid = label_matrix(batch)
        loss, m = plackett_luce_loss(out.seq_logps[idx], ref_seq[idx], scores.to(idx.device),
                                     valid.to(idx.device), beta=cfg.beta, **loss_params(cfg))
        return loss.sum(), m
    if K == 1:  # rejected-only examples (a loss whose spec has reads_chosen=False; checked in build)
        c, r = None, idx[:, 0]
    else:
        c, r = idx[:, 0], idx[:, 1]
    pol_seq = out.seq_logps
    if ld:  # the longer response's tokens past the shorter one's length count ld_alpha
        w = ld_weights(batch, out.seq_tokens, c, r, cfg.ld_alpha)
        pol_seq = segment_sum(out.token_logps * w, batch)[0]
        if ref_seq is not None:
            ref_seq = segment_sum(ref_tok * w, batch)[0]

    def pick(t):  # (S,) -> (chosen (E,), rejected (E,)); absent tensors (and chosen, rejected-only) stay None
        return (None, None) if t is None else (None if c is None else t[c], t[r])

    pairs = PairLogps(*pick(pol_seq), *pick(ref_seq), *pick(out.seq_tokens), *pick(seq_kl))
    names, params = loss_names(cfg), loss_params(cfg)
    if "bco_pair" in names and state is not None:
        h = torch.cat([pairs.policy_chosen - pairs.ref_chosen, pairs.policy_rejected - pairs.ref_rejected])
        pairs.reward_shift = _bco_shift(state, cfg.beta * h)
    weights = cfg.loss_weights or [1.0] * len(names)
    loss, m = 0.0, {}
    for name, wt in zip(names, weights):
        fn = get_preference_loss(name)
        li, mi = fn(pairs, beta=cfg.beta, **{k: v for k, v in params.items() if k in loss_parameters(name)})
        loss = loss + wt * li
        m = {**mi, **m}  # the first loss's reward metrics; the others' extra ones
        if len(names) > 1:
            m[f"loss/{name}"] = float(li.detach().double().mean()) if li.numel() else 0.0
    if cfg.rpo_alpha > 0:
        nll, extra = rpo_nll(pairs, cfg.rpo_alpha)
        loss, m = loss + nll, {**m, **extra}
    return loss.sum(), m


def evaluate_pairs(model, ref: Reference, examples, collate_fn, batch_size: int, cfg: DPOConfig) -> dict:
    """Held-out implicit-reward accuracy (ties count 1/2), mean reward margin β(h_w - h_l),
    and the policy's own preference accuracy log π(y_w) > log π(y_l)."""
    n, acc, margin, own = 0, 0.0, 0.0, 0.0
    for b in eval_batches(examples, batch_size, collate_fn, model_device(model)):
        out = completion_logprobs(model, b, chunk=cfg.train.logprob_chunk)
        idx = sequence_index(b, 2).to(out.seq_logps.device)
        pol = out.seq_logps[idx]                                       # (E, 2)
        if ref.mode == "none":  # reference-free: the length-normalised log-prob is the reward
            rew = cfg.beta * pol / out.seq_tokens[idx]
        else:
            rew = cfg.beta * (pol - ref.sequence_logps(b)[idx])
        d = rew[:, 0] - rew[:, 1]
        acc += float((d > 0).float().sum() + 0.5 * (d == 0).float().sum())
        margin += float(d.sum())
        own += float((pol[:, 0] > pol[:, 1]).float().sum())
        n += b.num_examples
    return {"reward_accuracy": acc / n, "reward_margin": margin / n, "logp_accuracy": own / n}


def evaluate_rejected(model, ref: Reference, examples, collate_fn, batch_size: int, cfg: DPOConfig) -> dict:
    """Held-out rejected-only examples: the mean log-ratio h_l = log π_θ(y_l|x) − log π_ref(y_l|x)
    of the rejected responses and their mean implicit reward β·h_l (both fall as the policy
    moves away from them)."""
    n, h = 0, 0.0
    for b in eval_batches(examples, batch_size, collate_fn, model_device(model)):
        out = completion_logprobs(model, b, chunk=cfg.train.logprob_chunk)
        h += float((out.seq_logps - ref.sequence_logps(b)).double().sum())  # one sequence per example
        n += b.num_examples
    return {"rejected_log_ratio": h / n, "rejected_reward": cfg.beta * h / n}


def rejected_only(cfg: DPOConfig, train: list[Example], evals: list[Example]) -> bool:
    """Whether the examples hold the rejected response alone (one completion each), which only a
    loss that does not read the chosen response can train on (spec ``reads_chosen=False``, e.g. npo);
    ConfigError for a loss or setting that would need the chosen response."""
    if cfg.loss_type == "plackett_luce" or not train or any(len(ex.completions) != 1 for ex in train + evals):
        return False
    if _spec_any(cfg, "reads_chosen"):
        readers = [n for n in loss_names(cfg) if get_preference_spec(n).reads_chosen]
        raise ConfigError(f"the examples hold only a rejected response each, but loss_type {', '.join(readers)} "
                          "reads the chosen one too; use a loss that reads only the rejected response (npo) "
                          "or give pairs")
    for key, bad in (("rpo_alpha", cfg.rpo_alpha > 0), ("ld_alpha", cfg.ld_alpha < 1), ("sft_first", cfg.sft_first)):
        if bad:
            raise ConfigError(f"{key} needs the chosen responses, which rejected-only examples do not have; "
                              f"unset {key}")
    return True


def _sft_reference(model, train: list[Example], collate_fn, cfg: DPOConfig, log) -> None:
    """Stage 'case 2': SFT on the chosen (best-ranked) responses, in place."""
    best = [Example(ex.row, ex.prompt, [ex.completions[0 if ex.scores is None else
                                                       max(range(len(ex.scores)), key=ex.scores.__getitem__)]])
            for ex in train]
    tcfg = dataclasses.replace(cfg.train, output_dir=os.path.join(cfg.train.output_dir, "sft_ref"),
                               epochs=cfg.sft_epochs, max_steps=0, lr=cfg.sft_lr, eval_steps=0,
                               save_steps=0, resume=False)
    chunk = cfg.train.logprob_chunk
    Trainer(tcfg, Recipe(model=model, examples=best, collate=collate_fn, name="sft-ref",
                         step=lambda m, b: LossOutput(*sft_step(m, b, chunk)),
                         count=lambda b: float(b.tgt_mask.sum())), log).train()


def build(cfg: DPOConfig, log=print, model=None, tokenizer=None, examples=None, ref_model=None) -> Trainer:
    """The DPO trainer. ``examples=(train, evals)`` gives tokenized pairs instead of reading
    ``cfg.data`` (online DPO, negatives), or rejected-only examples (one completion each) for a
    loss that reads only the rejected response (npo); ``ref_model`` a frozen reference for
    reference=model."""
    validate_all(cfg)  # an unknown name or a bad value fails before any model is loaded
    if model is None:
        model, tokenizer = load_model(cfg.model)
    train, evals = examples if examples is not None else load_examples(cfg.data, tokenizer, PAIR_KINDS, log)
    negatives_only = rejected_only(cfg, train, evals)
    if cfg.loss_type != "plackett_luce" and not negatives_only and any(len(ex.completions) != 2 for ex in train):
        raise DataError(f"loss_type '{cfg.loss_type}' needs pairs but the data holds ranked lists; "
                        "use loss_type=plackett_luce", source=cfg.data.path)
    collate_fn = make_collate(tokenizer, cfg.data, cfg.train)
    if cfg.sft_first:
        _sft_reference(model, train, collate_fn, cfg, log)
    ref_needed = _spec_any(cfg, "needs_reference")
    if cfg.ld_alpha < 1 and ref_needed and cfg.reference == "precompute":
        raise ConfigError("ld_alpha weights the reference's per-token log-probs, which reference=precompute "
                          "does not keep; use reference=auto (a live reference), model or adapters")
    mode = choose_mode(cfg.reference, needs_reference=ref_needed, lora=cfg.model.lora.r > 0,
                       needs_live=_spec_any(cfg, "needs_token_kl") or cfg.ld_alpha < 1)
    if mode == "model" and ref_model is None:
        ref_model = load_model(cfg.ref_model)[0] if cfg.ref_model else copy.deepcopy(
            model.get_base_model() if hasattr(model, "get_base_model") else model)
    ref = Reference(mode, policy=model, model=ref_model, chunk=cfg.train.logprob_chunk)
    log(f"[dpo] loss_type={cfg.loss_type} beta={cfg.beta} reference={mode}")
    chunk = cfg.train.logprob_chunk
    recipe = Recipe(
        model=model, examples=train, collate=collate_fn, name="dpo", config=cfg,
        step=lambda m, b: LossOutput(*dpo_step(m, b, ref, cfg, chunk, recipe.state)),
        count=lambda b: float(b.num_examples),
        evaluate=(lambda m: (evaluate_rejected if negatives_only else evaluate_pairs)(
            m, ref, evals, collate_fn, cfg.train.eval_batch_size, cfg))
        if evals and cfg.loss_type != "plackett_luce" else None,
        save=lambda m, path: save_model(m, tokenizer, path, cfg.model.lora, cfg))
    trainer = Trainer(cfg.train, recipe, log)
    if mode == "precompute":
        precompute_reference(ref, trainer, train, evals, collate_fn, cfg.train, f"{cfg.model.name}|sft_first={cfg.sft_first}", log)
    return trainer


def run(cfg: DPOConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

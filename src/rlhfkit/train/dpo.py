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

from ..config import DataConfig, ModelConfig, TrainConfig, check_range, did_you_mean, validate_all
from ..data.collate import sequence_index
from ..data.pipeline import load_examples
from ..data.tokenize import Example
from ..errors import ConfigError, DataError
from ..losses.listwise import plackett_luce_loss
from ..losses.preference import (F_DIVERGENCES, PREFERENCE_LOSSES, PairLogps, get_preference_loss, get_preference_spec,
                                loss_parameters, needs_reference, rpo_nll)
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
    plackett_luce (docs/algorithms.md)."""
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
                   "f_divergence", "f_alpha", "tdpo_variant", "tdpo_alpha", "lipo_lambda", "discopop_tau")


def _params_of(loss_type: str) -> set[str]:
    if loss_type == "plackett_luce":
        return {"lipo_lambda"}
    return set(loss_parameters(loss_type))


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


def validate(cfg: DPOConfig) -> None:
    """Range checks of the DPO recipe's own keys (ConfigError naming the key and range)."""
    names = sorted(PREFERENCE_LOSSES) + ["plackett_luce"]
    if cfg.loss_type not in names:
        raise ConfigError(f"unknown loss_type '{cfg.loss_type}'{did_you_mean(cfg.loss_type, names)}; valid: "
                          f"{', '.join(names)}")
    check_range("beta", cfg.beta, lo=0, lo_open=True)
    check_range("label_smoothing", cfg.label_smoothing, lo=0, hi=0.5, hi_open=True)
    check_range("alpha", cfg.alpha, lo=0)
    check_range("gamma", cfg.gamma, lo=0)
    check_range("orpo_lambda", cfg.orpo_lambda, lo=0)
    check_range("f_alpha", cfg.f_alpha, lo=0, hi=1, lo_open=True, hi_open=True)
    check_range("tdpo_alpha", cfg.tdpo_alpha, lo=0)
    check_range("discopop_tau", cfg.discopop_tau, lo=0, lo_open=True)
    check_range("rpo_alpha", cfg.rpo_alpha, lo=0)
    if cfg.rpo_alpha > 0 and cfg.loss_type in ("orpo", "plackett_luce"):
        raise ConfigError(f"rpo_alpha adds an NLL term to pair losses; loss_type={cfg.loss_type} "
                          + ("already has one (orpo_lambda sets its balance)" if cfg.loss_type == "orpo"
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


def dpo_step(model, batch, ref: Reference, cfg: DPOConfig, chunk: int):
    """One micro-batch: (sum of per-pair / per-list losses, metrics)."""
    tdpo = cfg.loss_type != "plackett_luce" and get_preference_spec(cfg.loss_type).needs_token_kl
    out = completion_logprobs(model, batch, chunk=chunk, return_hidden=tdpo)
    ref_seq, seq_kl = None, None
    if tdpo:
        rout = ref.logprobs(batch, return_hidden=True)
        ref_seq = rout.seq_logps
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
    c, r = idx[:, 0], idx[:, 1]

    def pick(t):  # (S,) -> (chosen (E,), rejected (E,)); absent tensors stay None
        return (None, None) if t is None else (t[c], t[r])

    pairs = PairLogps(*pick(out.seq_logps), *pick(ref_seq), *pick(out.seq_tokens), *pick(seq_kl))
    loss, m = get_preference_loss(cfg.loss_type)(pairs, beta=cfg.beta, **loss_params(cfg))
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
    ``cfg.data`` (online DPO); ``ref_model`` a frozen reference for reference=model."""
    validate_all(cfg)  # an unknown name or a bad value fails before any model is loaded
    if model is None:
        model, tokenizer = load_model(cfg.model)
    train, evals = examples if examples is not None else load_examples(cfg.data, tokenizer, PAIR_KINDS, log)
    if cfg.loss_type != "plackett_luce" and any(len(ex.completions) != 2 for ex in train):
        raise DataError(f"loss_type '{cfg.loss_type}' needs pairs but the data holds ranked lists; "
                        "use loss_type=plackett_luce", source=cfg.data.path)
    collate_fn = make_collate(tokenizer, cfg.data, cfg.train)
    if cfg.sft_first:
        _sft_reference(model, train, collate_fn, cfg, log)
    ref_needed = cfg.loss_type == "plackett_luce" or needs_reference(cfg.loss_type)
    mode = choose_mode(cfg.reference, needs_reference=ref_needed, lora=cfg.model.lora.r > 0,
                       needs_live=cfg.loss_type != "plackett_luce" and get_preference_spec(cfg.loss_type).needs_token_kl)
    if mode == "model" and ref_model is None:
        ref_model = load_model(cfg.ref_model)[0] if cfg.ref_model else copy.deepcopy(
            model.get_base_model() if hasattr(model, "get_base_model") else model)
    ref = Reference(mode, policy=model, model=ref_model, chunk=cfg.train.logprob_chunk)
    log(f"[dpo] loss_type={cfg.loss_type} beta={cfg.beta} reference={mode}")
    chunk = cfg.train.logprob_chunk
    recipe = Recipe(
        model=model, examples=train, collate=collate_fn, name="dpo", config=cfg,
        step=lambda m, b: LossOutput(*dpo_step(m, b, ref, cfg, chunk)),
        count=lambda b: float(b.num_examples),
        evaluate=(lambda m: evaluate_pairs(m, ref, evals, collate_fn, cfg.train.eval_batch_size, cfg))
        if evals and cfg.loss_type != "plackett_luce" else None,
        save=lambda m, path: save_model(m, tokenizer, path, cfg.model.lora, cfg))
    trainer = Trainer(cfg.train, recipe, log)
    if mode == "precompute":
        precompute_reference(ref, trainer, train, evals, collate_fn, cfg.train, f"{cfg.model.name}|sft_first={cfg.sft_first}", log)
    return trainer


def run(cfg: DPOConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

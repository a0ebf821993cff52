"""Preference-model recipe: P(A ≻ B | x) from one sequence showing both responses.

    rlhfkit pm --config pm_hh

Reads the pairs a reward model reads (``prompt``/``chosen``/``rejected``, explicit or implicit
prompt). Each pair becomes one example whose two completions are the presentations
``chosen | sep | rejected`` and ``rejected | sep | chosen`` behind one shared copy of the prompt
(:mod:`rlhfkit.rewards.preference_model`); the scalar head scores both, and the loss is the
binary cross-entropy of P(chosen ≻ rejected) = σ((s(x, c, r) − s(x, r, c)) / 2), which is
antisymmetric by construction (docs/algorithms.md#preference-model). Held-out pairs give the
loss, accuracy, a reliability table with the expected calibration error (the reward model's
:func:`rlhfkit.evaluate.reliability`, fed the preference logits) and the intransitivity rate on
triples (chosen, rejected, and the chosen response of the next held-out row). The final eval,
table included, is written to ``output_dir/pm_eval.json``. Load the result with
:func:`rlhfkit.rewards.preference_model.load_preference_model`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import torch
import torch.nn.functional as F

from ..config import DataConfig, ModelConfig, TrainConfig, check_range, validate_all
from ..data.collate import sequence_index
from ..data.pipeline import load_records
from ..data.tokenize import Example, Renderer, tokenize_records
from ..errors import ConfigError, DataError
from ..evaluate import reliability
from ..losses.nash import intransitivity_rate, preference_bce_loss, preference_logit
from ..models.forward import sequence_scores
from ..models.loading import load_scalar_model
from ..rewards.preference_model import MODEL_TYPE, logit_tables, presentations, separator_ids
from .common import LossOutput, eval_batches, make_collate, model_device, save_model
from .loop import Recipe, Trainer, start_run


@dataclasses.dataclass
class PMConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=768))
    """max_length bounds the whole presentation: prompt + both responses + separator."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(output_dir="runs/pm", lr=1e-5))
    label_smoothing: float = 0.0
    """ε in [0, 0.5): the target P(chosen ≻ rejected) is 1 − ε instead of 1."""
    eval_triples: int = 64
    """Held-out rows turned into triples for the intransitivity rate (0 = off; needs 2 held-out rows)."""
    calibration_bins: int = 10
    """Bins of the reliability table."""
    eval_at_start: bool = True
    """Evaluate the held-out pairs before training too (false: only every train.eval_steps and at the end)."""

    def validate(self) -> None:
        check_range("label_smoothing", self.label_smoothing, lo=0, hi=0.5, hi_open=True)
        check_range("eval_triples", self.eval_triples, lo=0)
        check_range("calibration_bins", self.calibration_bins, lo=1)
        if not self.eval_at_start and self.train.best_metric:
            raise ConfigError("eval_at_start false leaves step 0 without the evaluation train.best_metric compares; "
                              "set eval_at_start true or leave train.best_metric empty")


# ---------------------------------------------------------------------------- data
def load_pairs(cfg: DataConfig, tokenizer, log=print) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, eval) pair presentations and the eval rows as plain (prompt, [chosen, rejected])
    examples with their separators (for triples)."""
    if not cfg.path:
        raise DataError("no training data: set data.path (preference pairs: prompt/chosen/rejected)")
    r = Renderer(tokenizer, cfg.chat_template)
    seps = {t: separator_ids(r, t) for t in (False, True)}

    def side(path: str, rows: str, what: str):
        recs = load_records(path, rows, cfg, ("preference",), log)
        templ = {rec["row"]: r.use_template(rec["prompt"]) for rec in recs}
        plain = tokenize_records(recs, tokenizer, cfg, source=what, log=log)
        out, cuts = [], 0
        for ex in plain:
            ex.extra["sep"] = seps[templ[ex.row]]
            pres, _, c = presentations(ex.prompt, ex.completions, ex.extra["sep"], cfg.max_length, ex.row)
            out.append(pres)
            cuts += c
        if cuts:
            log(f"{what}: {cuts} presentations of {2 * len(out)} cut to fit max_length {cfg.max_length} "
                "(the longer response first; each keeps its end-of-turn token)")
        return out, plain

    train, _ = side(cfg.path, cfg.rows, cfg.path)
    evals, plain = [], []
    if cfg.eval_path or cfg.eval_rows:
        path = cfg.eval_path or cfg.path
        evals, plain = side(path, cfg.eval_rows, f"{path} (eval)")
    return train, evals, plain


def triple_examples(plain: list[Example], n: int, max_length: int) -> tuple[list[Example], list]:
    """Triples (chosen_i, rejected_i, chosen_{i+1}) of the first ``n`` held-out rows (the third
    response answers another prompt), as presentations of all 6 ordered pairs."""
    if len(plain) < 2 or n <= 0:
        return [], []
    exs, pairs = [], []
    for i in range(min(n, len(plain))):
        ex, nxt = plain[i], plain[(i + 1) % len(plain)]
        e, pr, _ = presentations(ex.prompt, [ex.completions[0], ex.completions[1], nxt.completions[0]],
                                 ex.extra["sep"], max_length, ex.row)
        exs.append(e)
        pairs.append(pr)
    return exs, pairs


# ---------------------------------------------------------------------------- the step
def pair_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(s(x, chosen, rejected), s(x, rejected, chosen)) of each example: (E,), (E,)."""
    s = sequence_scores(model, batch)            # (S,)
    idx = sequence_index(batch, 2)               # (E, 2)
    return s[idx[:, 0]], s[idx[:, 1]]


def pm_step(model, batch, label_smoothing: float = 0.0):
    """One micro-batch: (sum of pair losses, metrics)."""
    s_ab, s_ba = pair_logits(model, batch)
    loss, metrics = preference_bce_loss(s_ab, s_ba, 1.0 - label_smoothing)
    return loss.sum(), metrics


def evaluate_pm(model, evals: list[Example], collate_fn, batch_size: int, bins: int = 10,
                triples: tuple[list, list] = ([], []), pad_id: int = 0) -> dict:
    """Held-out loss, accuracy (ties ½), mean logit, ECE (and the reliability table under
    ``"table"``) and the intransitivity rate on ``triples``."""
    margins: list[float] = []
    loss = 0.0
    for b in eval_batches(evals, batch_size, collate_fn, model_device(model)):
        s_ab, s_ba = pair_logits(model, b)
        d = preference_logit(s_ab, s_ba)
        loss += float(-F.logsigmoid(d).sum())
        margins += d.tolist()
    n = len(margins)
    rel = reliability(margins, bins)
    res = {"loss": loss / n, "accuracy": sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / n,
           "margin": sum(margins) / n, "ece": rel["ece"], "table": rel["table"]}
    exs, pairs = triples
    if exs:
        tables = []
        for i in range(0, len(exs), batch_size):
            tables += logit_tables(model, exs[i:i + batch_size], pairs[i:i + batch_size],
                                   [3] * len(exs[i:i + batch_size]), pad_id)
        res["intransitivity"] = intransitivity_rate(torch.sigmoid(torch.stack(tables)))
        res["triples"] = float(len(exs))
    return res


def build(cfg: PMConfig, log=print, model=None, tokenizer=None) -> Trainer:
    validate_all(cfg)
    if model is None:
        model, tokenizer = load_scalar_model(cfg.model)
    train, evals, plain = load_pairs(cfg.data, tokenizer, log)
    collate_fn = make_collate(tokenizer, cfg.data, cfg.train)
    triples = triple_examples(plain, cfg.eval_triples, cfg.data.max_length)
    last: dict = {}
    calls = [0]

    def evaluate(m):
        calls[0] += 1
        if calls[0] == 1 and not cfg.eval_at_start and trainer.total_steps > 0 and not cfg.train.resume:
            return {}  # the loop's step-0 evaluation, skipped
        res = evaluate_pm(m, evals, collate_fn, cfg.train.eval_batch_size, cfg.calibration_bins, triples,
                          tokenizer.pad_token_id)
        last.clear()
        last.update(res)
        return {k: v for k, v in res.items() if k != "table"}

    def save(m, path):
        m.eval()
        save_model(m, tokenizer, path, cfg.model.lora, cfg, extra_config={
            "rlhfkit_model_type": MODEL_TYPE, "rlhfkit_chat_template": cfg.data.chat_template,
            "rlhfkit_pm_max_length": cfg.data.max_length})
        if last:
            with open(os.path.join(cfg.train.output_dir, "pm_eval.json"), "w") as f:
                json.dump(last, f, indent=1)

    recipe = Recipe(
        model=model, examples=train, collate=collate_fn, name="pm", config=cfg,
        step=lambda m, b: LossOutput(*pm_step(m, b, cfg.label_smoothing)),
        count=lambda b: float(b.num_examples),
        evaluate=evaluate if evals else None, save=save)
    trainer = Trainer(cfg.train, recipe, log)
    trainer.pm_eval = last  # the newest held-out evaluation, reliability table included
    return trainer


def calibration_lines(res: dict) -> list[str]:
    lines = [f"pairs accuracy {res['accuracy']:.3f}  loss {res['loss']:.4f}  ECE {res['ece']:.3f}"
             + (f"  intransitivity {res['intransitivity']:.3f} ({int(res['triples'])} triples)"
                if "intransitivity" in res else ""),
             "predicted bin   n   mean predicted   observed"]
    lines += [f"[{r['bin'][0]:.1f}, {r['bin'][1]:.1f})  {r['n']:4d}   {r['predicted']:.3f}            "
              f"{r['observed']:.3f}" for r in res.get("table", [])]
    return lines


def run(cfg: PMConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    trainer = build(cfg, log, **kw)
    out = trainer.train()
    if trainer.pm_eval:
        for line in calibration_lines(trainer.pm_eval):
            log(f"[pm] {line}")
    return out

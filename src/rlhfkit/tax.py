"""The alignment tax: what a trained policy lost against its starting model, with a 95 % interval.

``rlhfkit eval --tax --model.name RUN/final --reference START`` measures the policy and its
starting model (``reference``) on the same held-out capability data and reports, per
capability, both values, the drop and a 95 % confidence interval of the drop from paired
per-item differences (docs/algorithms.md#alignment-tax). The sign is the same for every
capability: a positive tax means the policy got worse.

* ``nll``: mean token NLL on held-out prompt/completion text (``nll_path``, else the built-in
  general chat text of :func:`rlhfkit.tasks.general_text.general_rows`); tax = policy − start,
  with both perplexities exp(nll).
* ``task``: exact-match accuracy on a verifiable task (``tax_task``): ``task_size`` arithmetic
  problems generated from ``task_seed``, or the first ``task_size`` GSM8K test rows. Both
  models decode greedily (temperature 0, whatever ``rollout.temperature`` says) for at most
  ``rollout.max_new_tokens`` tokens; tax = start accuracy − policy accuracy.

The interval is a paired bootstrap (:func:`paired_bootstrap`): rows or problems are resampled
with replacement, each resample keeping both models' values of an item together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import numpy as np
import torch

from .errors import ConfigError, DataError

TAX_TASKS = ("arithmetic", "gsm8k", "none")
"""Values of ``tax_task``."""
BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the paired bootstrap."""
CI_LEVEL = 0.95
CI_METHOD = f"paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples, percentile interval"


# ------------------------------------------------------------------------ the interval
def paired_bootstrap(diffs, weights=None, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                     level: float = CI_LEVEL) -> dict:
    """Point estimate Σd / Σw of paired per-item differences ``d`` (item weights ``w``, default 1)
    and its paired-bootstrap percentile interval (docs/algorithms.md#alignment-tax).

    Resample b draws n item indices with replacement, ``rng.integers(0, n, n)`` in turn from
    ``numpy.random.default_rng(seed)``, and recomputes Σd / Σw over them; the interval is the
    (1 − level)/2 and (1 + level)/2 quantiles of the resampled values (numpy's default linear
    interpolation). For the NLL tax d_i is the policy's minus the start's summed token NLL of row
    i and w_i its token count (a token-weighted mean difference); for a task d_i is the start's
    minus the policy's score (0/1) on problem i and w_i = 1. Equal models give d = 0 and the
    interval [0, 0]."""
    d = np.asarray(diffs, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or w.shape != d.shape:
        raise ValueError("paired_bootstrap needs equally long, non-empty 1-d differences and weights")
    if not np.all(w > 0):
        raise ValueError("paired_bootstrap needs positive weights")
    n = d.size
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        stats[b] = d[idx].sum() / w[idx].sum()
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"tax": float(d.sum() / w.sum()), "ci_low": float(lo), "ci_high": float(hi), "n": int(n)}


# ------------------------------------------------------------------------ held-out text
def nll_examples(cfg, tok) -> tuple[list, str]:
    """The held-out text as examples: ``cfg.nll_path`` (every row, in order), else the built-in
    general chat text. Returns (examples, source name)."""
    from .data.pipeline import load_examples
    from .data.tokenize import tokenize_records
    from .tasks.general_text import general_rows

    data = dataclasses.replace(cfg.data, path=cfg.nll_path, rows="", eval_path="", eval_rows="")
    if cfg.nll_path:
        return load_examples(data, tok, ("prompt_completion", "language_modeling"), lambda *a: None)[0], cfg.nll_path
    recs = [{"kind": "prompt_completion", "row": i, **r} for i, r in enumerate(general_rows())]
    return tokenize_records(recs, tok, data, source="general_text"), "general_text"


@torch.no_grad()
def row_nll(model, tok, exs: list, cfg) -> tuple[list[float], list[float]]:
    """Per row of ``exs``: the summed token NLL of its completion (only trainable tokens of a
    multi-turn row) under ``model``, and the token count."""
    from .config import TrainConfig
    from .models.forward import completion_logprobs
    from .train.common import eval_batches, make_collate, model_device

    collate_fn = make_collate(tok, cfg.data, TrainConfig())
    sums: list[float] = []
    counts: list[float] = []
    for b in eval_batches(exs, cfg.batch_size, collate_fn, model_device(model)):
        out = completion_logprobs(model, b)
        order = torch.argsort(b.seq_example)
        sums += (-out.seq_logps.double()[order]).tolist()
        counts += out.seq_tokens[order].tolist()
    return sums, counts


def nll_tax(policy, start, tok, cfg) -> dict:
    """Token-weighted mean NLL of both models on the held-out text, the difference policy −
    start and its paired-bootstrap interval over rows."""
    exs, source = nll_examples(cfg, tok)
    p_sum, counts = row_nll(policy, tok, exs, cfg)
    s_sum, _ = row_nll(start, tok, exs, cfg)
    keep = [i for i, c in enumerate(counts) if c > 0]
    if not keep:
        raise DataError("no completion tokens to score in the held-out text", source=source)
    w = [counts[i] for i in keep]
    res = paired_bootstrap([p_sum[i] - s_sum[i] for i in keep], w, seed=cfg.seed)
    tokens = sum(w)
    pol, st = sum(p_sum[i] for i in keep) / tokens, sum(s_sum[i] for i in keep) / tokens
    return {"policy": pol, "start": st, **res, "tokens": int(tokens), "source": source,
            "ppl_policy": math.exp(min(pol, 50.0)), "ppl_start": math.exp(min(st, 50.0))}


# ------------------------------------------------------------------------ verifiable task
def default_gsm8k_dirs() -> list[str]:
    """Where a GSM8K directory is looked for when ``tax_gsm8k_path`` is empty: the project's
    shared data beside the repository (``../shared/data/gsm8k`` from the working directory and
    from the source tree)."""
    here = pathlib.Path(__file__).resolve().parents[2].parent
    out = []
    for c in (os.path.join(os.getcwd(), "..", "shared", "data", "gsm8k"), str(here / "shared" / "data" / "gsm8k")):
        c = os.path.normpath(os.path.abspath(c))
        if c not in out:
            out.append(c)
    return out


def gsm8k_path(cfg) -> str:
    """The GSM8K test rows of ``tax_task=gsm8k``: ``cfg.tax_gsm8k_path`` (which must exist), else
    the first default directory holding ``test.jsonl``; ConfigError saying what to set if none."""
    if cfg.tax_gsm8k_path:
        if not os.path.exists(cfg.tax_gsm8k_path):
            raise ConfigError(f"tax_gsm8k_path {cfg.tax_gsm8k_path} does not exist; give the GSM8K directory "
                              "(holding test.jsonl) or a .jsonl file of {'question', 'answer'} rows")
        return cfg.tax_gsm8k_path
    for d in default_gsm8k_dirs():
        if os.path.isfile(os.path.join(d, "test.jsonl")):
            return d
    raise ConfigError("tax_task=gsm8k needs the GSM8K test rows and none were found at "
                      f"{', '.join(default_gsm8k_dirs())}; set tax_gsm8k_path (a directory holding "
                      "test.jsonl, or a .jsonl file of {'question', 'answer'} rows), or tax_task=arithmetic")


def task_problems(cfg) -> tuple[list[dict], object, str]:
    """(rows ``{"prompt", "answer"}``, score(response, answer) -> 0/1, source) of ``cfg.tax_task``."""
    from .rewards.verifiers import arithmetic_score, gsm8k_score

    if cfg.tax_task == "arithmetic":
        from .tasks.arithmetic import make_problems

        rows = [{"prompt": p["prompt"], "answer": p["answer"]} for p in make_problems(cfg.task_size, seed=cfg.task_seed)]
        return rows, arithmetic_score, f"arithmetic (seed {cfg.task_seed})"
    from .tasks.word_problems import load_gsm8k

    path = gsm8k_path(cfg)
    return load_gsm8k(path, "test", limit=cfg.task_size), gsm8k_score, path


def greedy_texts(model, tok, exs: list, cfg) -> list[str]:
    """One greedy response per example (the evaluation's sampler, temperature 0)."""
    from .rl.config import engine_options
    from .rl.rollout import HFBackend, SamplingParams

    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=0.0, n=1,
                            stop=list(cfg.rollout.stop))
    engine = HFBackend(model, tok, **{**engine_options(cfg.rollout, cfg.runtime), "batch_size": cfg.batch_size})
    return engine.generate([ex.prompt for ex in exs], params, generator=torch.Generator().manual_seed(cfg.seed)).texts


def task_tax(policy, start, tok, cfg) -> dict:
    """Greedy exact match of both models on the task, the drop start − policy and its
    paired-bootstrap interval over problems; every response goes to ``tax_samples.jsonl``."""
    from .data.tokenize import tokenize_records
    from .rewards.verifiers import RowError

    rows, score, source = task_problems(cfg)
    recs = [{"kind": "prompt_only", "row": i, **r} for i, r in enumerate(rows)]
    exs = tokenize_records(recs, tok, cfg.data, source=f"tax:{cfg.tax_task}")
    answers = [ex.extra.get("answer") for ex in exs]
    texts = {"policy": greedy_texts(policy, tok, exs, cfg), "start": greedy_texts(start, tok, exs, cfg)}
    correct = {}
    for who, t in texts.items():
        try:
            correct[who] = [float(score(r, a)) for r, a in zip(t, answers)]
        except RowError as e:
            raise DataError(str(e), source=source) from None
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(os.path.join(cfg.output_dir, "tax_samples.jsonl"), "w") as f:
        for i, ex in enumerate(exs):
            f.write(json.dumps({"row": ex.row, "prompt": ex.extra.get("prompt"), "answer": answers[i],
                                "response": texts["policy"][i], "correct": correct["policy"][i],
                                "start_response": texts["start"][i], "start_correct": correct["start"][i]}) + "\n")
    n = len(exs)
    res = paired_bootstrap([s - p for p, s in zip(correct["policy"], correct["start"])], seed=cfg.seed)
    return {"name": cfg.tax_task, "policy": sum(correct["policy"]) / n, "start": sum(correct["start"]) / n,
            **res, "source": source, "decoding": "greedy"}


# ------------------------------------------------------------------------ entry points
def evaluate_tax(policy, start, tok, cfg) -> dict:
    """``{"nll": {...}, "task": {...}, "ci": method}`` (no ``task`` with ``tax_task=none``)."""
    out = {"nll": nll_tax(policy, start, tok, cfg)}
    if cfg.tax_task != "none":
        out["task"] = task_tax(policy, start, tok, cfg)
    out["ci"] = CI_METHOD
    return out


def tax_lines(tax: dict) -> list[str]:
    """The printed table's lines of an ``evaluate_tax`` result."""
    n = tax["nll"]
    lines = [f"alignment tax (policy vs starting model; > 0 = the policy got worse; 95% CI: {tax['ci']})",
             f"  held-out NLL           {n['policy']:.4f} vs {n['start']:.4f} nats/token (perplexity "
             f"{n['ppl_policy']:.2f} vs {n['ppl_start']:.2f}): tax {n['tax']:+.4f} "
             f"(95% CI {n['ci_low']:+.4f} to {n['ci_high']:+.4f}, {n['n']} rows, {n['tokens']} tokens)"]
    if "task" in tax:
        t = tax["task"]
        lines.append(f"  {t['name'] + ' exact match':22s} {t['policy']:.3f} vs {t['start']:.3f} (greedy): tax "
                     f"{t['tax']:+.3f} (95% CI {t['ci_low']:+.3f} to {t['ci_high']:+.3f}, {t['n']} problems)")
    return lines


def format_tax(res: dict, digits: int = 3) -> str:
    """``+0.041 (0.020–0.063)``: a tax and its interval, for tables."""
    return f"{res['tax']:+.{digits}f} ({res['ci_low']:.{digits}f}–{res['ci_high']:.{digits}f})"

"""Blind human evaluation: A/B judgements of two models' responses to the same prompts.

``rlhfkit studio humaneval NAME --model_a X --model_b Y --prompts FILE`` samples one response
per prompt from each model (the rollout engine, :func:`.importers.sample_responses`) and creates
a **pairwise** project whose item ``meta.models`` records which model wrote each stored response
(``[X, Y]``). Annotators never see the names; the server shows the two responses in an order
drawn per annotator and item (:func:`.db.shown_order`) and records it, so position bias is
measured as in any pairwise project. ``rlhfkit studio project create --kind pairwise
--sample_models X,Y --num_responses 2`` makes the same kind of project.

``rlhfkit eval --human studio://DIR::PROJECT`` reads the labels (:func:`human_win_rate`): the win
rate of A over B with ties ("tie" and "both bad") counted as half, its 95 % Wilson score interval
over prompts (docs/algorithms.md#human-win-rate), the label counts, agreement and position bias
of the project; with reward sources (``rewards`` / ``reward_model``) also the reward model's win
rate of A over B on the same responses (the over-optimisation check).
"""

from __future__ import annotations

import collections

from ..errors import DataError
from .agreement import wilson_interval


def label_score(value: dict, index_a: int) -> float:
    """One pairwise label as a score of the response at stored index ``index_a``: 1 (it won),
    0 (the other won), ½ (tie or both bad)."""
    if value["outcome"] == "win":
        return 1.0 if value["winner"] == index_a else 0.0
    return 0.5


def win_rate_wilson(item_scores: list[float]) -> dict:
    """Win rate = mean per-prompt score (each in [0, 1], ties ½) and its 95 % Wilson score interval
    with n = the number of prompts and p̂ = the win rate (docs/algorithms.md#human-win-rate)."""
    n = len(item_scores)
    if not n:
        return {"win_rate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    s = sum(item_scores)
    lo, hi = wilson_interval(s, n)
    return {"win_rate": s / n, "ci_low": lo, "ci_high": hi, "n": n}


def _models(items: list[dict], project: str) -> tuple[str, str]:
    names = None
    for it in items:
        m = (it.get("meta") or {}).get("models")
        if not isinstance(m, list) or len(m) != 2 or len(it["responses"]) != 2 or m[0] == m[1]:
            raise DataError(f"project '{project}' is not a human evaluation of two models: item {it['position']} "
                            "has no meta.models naming two different models (create one with rlhfkit studio "
                            "humaneval)")
        if names is None:
            names = (m[0], m[1])
        elif set(m) != set(names):
            raise DataError(f"project '{project}' compares more than two models ({names} and {tuple(m)})")
    if names is None:
        raise DataError(f"project '{project}' has no items")
    return names


def human_win_rate(engine, project: str) -> dict:
    """The human verdict of a human-evaluation project: A = the first model of ``meta.models``."""
    from .db import StudioError, project_labels
    from .progress import agreement_report

    try:
        p, items, labels = project_labels(engine, project)
    except StudioError as e:
        raise DataError(str(e)) from e
    if p["kind"] != "pairwise":
        raise DataError(f"project '{project}' is a {p['kind']} project; a human evaluation is pairwise")
    model_a, model_b = _models(items, project)
    by_item = collections.defaultdict(list)
    for lab in labels:
        if not lab["skipped"]:
            by_item[lab["item_id"]].append(lab["value"])
    per_item, used, counts = [], [], collections.Counter()
    for it in items:
        votes = by_item.get(it["id"])
        if not votes:
            continue
        ia = it["meta"]["models"].index(model_a)
        scores = [label_score(v, ia) for v in votes]
        counts.update("wins_a" if s == 1.0 else "wins_b" if s == 0.0 else "ties" for s in scores)
        per_item.append(sum(scores) / len(scores))
        used.append(it)
    if not per_item:
        raise DataError(f"project '{project}' has no labels yet")
    ag = agreement_report(p["kind"], items, labels)
    out = {"project": project, "model_a": model_a, "model_b": model_b, "interval": "wilson",
           **win_rate_wilson(per_item), "n_items": len(items), "n_labels": sum(counts.values()),
           "wins_a": counts["wins_a"], "wins_b": counts["wins_b"], "ties": counts["ties"],
           "position_bias": ag.get("position_bias"),
           "agreement": {k: v for k, v in ag.items() if k != "position_bias"}}
    out["_items"], out["_item_scores"] = used, per_item
    return out


def create_humaneval(engine, name: str, model_a: str, model_b: str, prompts: str, *, rows: str | None = None,
                     overlap: int = 1, assign: list[str] = (), seed: int = 0, guidelines: str = "",
                     max_new_tokens: int = 64, temperature: float = 1.0, log=print) -> int:
    """Sample one response per prompt from each model and create the blind pairwise project."""
    from . import db
    from .importers import read_items, sample_responses

    if not model_a or not model_b:
        raise db.StudioError("give both --model_a and --model_b")
    if model_a == model_b:
        raise db.StudioError(f"--model_a and --model_b are the same model ({model_a!r})")
    records = read_items(prompts, "auto", rows)
    records = sample_responses(records, [model_a, model_b], 2, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed, log=log)
    for r in records:
        r["meta"]["humaneval"] = True
    return db.create_project(engine, name, "pairwise", records, guidelines=guidelines, overlap=overlap,
                             assign=list(assign), seed=seed, source=f"humaneval: {model_a} vs {model_b}")

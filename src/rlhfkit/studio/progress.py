"""Per-project progress for the admin page: items done, labels per annotator, time per item, and
agreement from :mod:`rlhfkit.studio.agreement` when that module is present (else reported as
unavailable with the reason)."""

from __future__ import annotations

import collections
import importlib
import json
import statistics

from .db import project_labels


def label_category(kind: str, value: dict):
    """One category per label, for agreement: pairwise: the stored index of the winner (0/1),
    ``"tie"`` or ``"both_bad"``; a single rated / thumbed response: the rating / the bool; other
    labels: the whole answer as JSON (exact match)."""
    if kind == "pairwise":
        return value["winner"] if value["outcome"] == "win" else value["outcome"]
    if kind == "rating" and len(value["ratings"]) == 1:
        return value["ratings"][0]
    if kind == "thumbs" and len(value["thumbs"]) == 1:
        return value["thumbs"][0]
    return json.dumps(value, sort_keys=True)


def agreement_report(kind: str, items: list[dict], labels: list[dict]) -> dict:
    """Agreement of a project's labels through :mod:`rlhfkit.studio.agreement`
    (``agreement_report``: Cohen's, Fleiss' kappa, Krippendorff's alpha, per-annotator agreement
    with the majority and gold, flagged annotators) and, for pairwise tasks, ``position_bias``
    (how often the response shown first wins). ``{"available": False, "reason"}`` when the
    module is missing or the statistics fail on these labels."""
    try:
        ag = importlib.import_module("rlhfkit.studio.agreement")
    except ImportError as e:
        return {"available": False, "reason": f"agreement statistics are not installed ({e})"}
    kept = [lab for lab in labels if not lab["skipped"]]
    triples = [(lab["item_id"], lab["user"], label_category(kind, lab["value"])) for lab in kept]
    gold = {it["id"]: label_category(kind, it["gold"]) for it in items if it.get("gold") is not None}
    ordinal = kind == "rating" and all(len(it["responses"]) == 1 for it in items)
    try:
        out = {"available": True, **ag.agreement_report(triples, gold=gold or None,
                                                         level="ordinal" if ordinal else "nominal")}
        if kind == "pairwise":
            out["position_bias"] = ag.position_bias(
                [{"chosen_position": None if lab["value"]["position"] is None else "AB".index(lab["value"]["position"])}
                 for lab in kept])
    except Exception as e:  # noqa: BLE001 - the page shows why instead of failing
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    return out


def project_progress(engine, project: str) -> dict:
    p, items, labels = project_labels(engine, project)
    per = collections.defaultdict(lambda: {"labels": 0, "skips": 0, "seconds": []})
    per_item = collections.Counter()
    for lab in labels:
        a = per[lab["user"]]
        if lab["skipped"]:
            a["skips"] += 1
        else:
            a["labels"] += 1
            per_item[lab["item_id"]] += 1
            if lab["seconds"] is not None:
                a["seconds"].append(lab["seconds"])
    annotators = {u: {"labels": a["labels"], "skips": a["skips"],
                      "median_seconds": statistics.median(a["seconds"]) if a["seconds"] else None}
                  for u, a in sorted(per.items())}
    done = sum(1 for it in items if per_item[it["id"]] >= p["overlap"])
    return {"project": p["name"], "kind": p["kind"], "overlap": p["overlap"], "items": len(items),
            "items_done": done, "items_started": sum(1 for it in items if per_item[it["id"]] > 0),
            "labels": sum(per_item.values()), "annotators": annotators,
            "agreement": agreement_report(p["kind"], items, labels)}

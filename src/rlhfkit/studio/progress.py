"""Per-project progress for the admin page: items done, labels per annotator, time per item, and
agreement from :mod:`rlhfkit.studio.agreement` when that module is present (else reported as
unavailable with the reason)."""

from __future__ import annotations

import collections
import json
import statistics

from .db import project_labels


def label_category(kind: str, value: dict) -> str:
    """One nominal category per label, for agreement: pairwise ``A wins`` is the stored index of
    the winner (``"0"``/``"1"``), ``tie``, ``both_bad``; other kinds the whole answer as JSON."""
    if kind == "pairwise":
        return str(value["winner"]) if value["outcome"] == "win" else value["outcome"]
    return json.dumps(value, sort_keys=True)


def agreement_report(kind: str, items: list[dict], labels: list[dict]) -> dict:
    """Cohen's kappa (exactly two annotators), Fleiss' kappa and Krippendorff's alpha (nominal)
    and the position-bias rate (pairwise), from the agreement module."""
    try:
        from . import agreement as ag
    except ImportError as e:
        return {"available": False, "reason": f"agreement statistics are not installed ({e})"}
    annotators = sorted({lab["user"] for lab in labels if not lab["skipped"]})
    cat = collections.defaultdict(dict)  # item -> annotator -> category
    for lab in labels:
        if not lab["skipped"]:
            cat[lab["item_id"]][lab["user"]] = label_category(kind, lab["value"])
    out: dict = {"available": True, "annotators": annotators}

    def attempt(name, fn):
        try:
            v = fn()
            out[name] = None if v is None else (float(v) if isinstance(v, (int, float)) else v)
        except Exception as e:  # a statistic undefined on these labels (too few, one category)
            out[name] = None
            out.setdefault("notes", {})[name] = f"{type(e).__name__}: {e}"

    if len(annotators) == 2:
        a, b = annotators
        both = [i for i, d in cat.items() if a in d and b in d]
        attempt("cohen_kappa", lambda: ag.cohen_kappa([cat[i][a] for i in both], [cat[i][b] for i in both]))
    # reliability data: one row per annotator, one column per item, None where not labelled
    matrix = [[cat[i].get(u) for i in sorted(cat)] for u in annotators]
    multi = [list(d.values()) for d in cat.values() if len(d) >= 2]
    if hasattr(ag, "fleiss_kappa"):
        attempt("fleiss_kappa", lambda: ag.fleiss_kappa(multi))
    if hasattr(ag, "krippendorff_alpha"):
        attempt("krippendorff_alpha", lambda: ag.krippendorff_alpha(matrix))
    if kind == "pairwise" and hasattr(ag, "position_bias"):
        shown_first = [lab["value"]["position"] for lab in labels
                       if not lab["skipped"] and lab["value"]["outcome"] == "win"]
        attempt("position_bias", lambda: ag.position_bias(shown_first))
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

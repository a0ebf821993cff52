"""Studio labels -> the rows the trainers read.

Aggregation per item over its annotators' labels (skips do not count):

- ``majority`` (default): pairwise and thumbs take the most frequent answer (a tie between
  answers makes the item a tie); ranking and rating take the mean rank / mean rating per response.
- ``unanimous``: as ``majority``, keeping only items whose annotators all gave the same label.

Each item's ``agreement`` is the share of its labels equal to the most frequent label (1.0 with
one label); ``min_agreement`` drops items below it, ``min_labels`` items with fewer labels.

Formats (one row per JSON line, prompts and responses exactly as imported, so conversational
prompts stay conversational):

- ``pairs``: ``prompt``, ``chosen``, ``rejected`` for every two responses with different
  aggregated scores (pairwise: the winner over the loser; ties and "both bad" make no pair), plus
  ``margin`` (the mean strength 1-3 of the winning votes, where annotators gave one; the reward
  model's per-pair margin column, as TRL names it), ``agreement``, ``num_labels``.
- ``listwise``: ``prompt``, ``completions``, ``ranks`` (1 = best, equal scores share a rank:
  ties kept unless ``drop_ties``); items whose responses are all tied are left out.
- ``unpaired``: ``prompt``, ``completion``, ``label`` per response with a clear verdict: thumbs
  by majority, rating above 4 (True) or below 4 (False), pairwise winner True / loser False
  (both bad: both False), ranking best True / worst False.

``studio://`` data paths (``--data.path`` of ``rlhfkit rm / dpo / kto``, or any command that
reads data) name a project: ``studio://DIR::PROJECT`` (DIR holds ``studio.db``) or
``studio://PROJECT`` with the studio located by ``RLHFKIT_STUDIO_DB`` (a database URL) or
``RLHFKIT_STUDIO_DIR``; options follow a ``?``: ``studio://runs/studio::hh?format=pairs&aggregate=
majority&min_agreement=0.6&drop_ties=true``. Without ``format`` the first format the recipe
accepts is used (rm/dpo: pairs, kto: unpaired).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from ..errors import DataError

FORMATS = ("pairs", "listwise", "unpaired")
AGGREGATES = ("majority", "unanimous")
PREFIX = "studio://"


def _vote_key(kind: str, value: dict) -> str:
    if kind == "pairwise":
        return json.dumps([value["outcome"], value["winner"]])
    return json.dumps(value)


def aggregate_item(kind: str, item: dict, votes: list[dict], how: str) -> dict | None:
    """``{"scores", "verdicts", "margin", "agreement", "num_labels"}`` for one item (None when it
    has no labels or ``unanimous`` fails); see docs/algorithms.md#label-aggregation. ``scores``:
    higher is better, one per response (all equal for a tie); ``verdicts``: True/False/None per
    response."""
    if not votes:
        return None
    n = len(item["responses"])
    keys = collections.Counter(_vote_key(kind, v) for v in votes)
    top = keys.most_common()
    agreement = top[0][1] / len(votes)
    if how == "unanimous" and len(top) > 1:
        return None
    out = {"agreement": agreement, "num_labels": len(votes), "margin": None}
    if kind == "pairwise":
        counts = collections.Counter((v["outcome"], v["winner"]) for v in votes)
        (best, c1), *rest = counts.most_common()
        if rest and rest[0][1] == c1:
            best = ("tie", None)  # no single most frequent answer
        outcome, winner = best
        if outcome == "win":
            scores = [0.0] * n
            scores[winner] = 1.0
            verdicts = [False] * n
            verdicts[winner] = True
            strengths = [v["strength"] for v in votes if v["winner"] == winner and v.get("strength")]
            out["margin"] = sum(strengths) / len(strengths) if strengths else None
        elif outcome == "both_bad":
            scores, verdicts = [0.0] * n, [False] * n
        else:
            scores, verdicts = [0.0] * n, [None] * n
        out.update(scores=scores, verdicts=verdicts)
    elif kind == "ranking":
        mean_rank = [sum(v["ranks"][j] for v in votes) / len(votes) for j in range(n)]
        scores = [-r for r in mean_rank]
        hi, lo = max(scores), min(scores)
        out.update(scores=scores, verdicts=[True if s == hi and hi != lo else False if s == lo and hi != lo else None
                                            for s in scores])
    elif kind == "thumbs":
        verdicts = []
        for j in range(n):
            up = sum(bool(v["thumbs"][j]) for v in votes)
            down = len(votes) - up
            verdicts.append(True if up > down else False if down > up else None)
        out.update(scores=[sum(bool(v["thumbs"][j]) for v in votes) / len(votes) for j in range(n)], verdicts=verdicts)
    elif kind == "rating":
        scores = [sum(v["ratings"][j] for v in votes) / len(votes) for j in range(n)]
        out.update(scores=scores, verdicts=[True if s > 4 else False if s < 4 else None for s in scores])
    return out


def _dense_ranks(scores: list[float]) -> list[int]:
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) + 1 for s in scores]


def export_rows(engine, project: str, fmt: str = "pairs", *, aggregate: str = "majority",
                drop_ties: bool = False, min_agreement: float = 0.0, min_labels: int = 1,
                stats: dict | None = None) -> list[dict]:
    """Trainer rows from a project's labels (see the module docstring)."""
    from .db import project_labels

    if fmt not in FORMATS:
        raise DataError(f"export format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if aggregate not in AGGREGATES:
        raise DataError(f"aggregate must be one of {', '.join(AGGREGATES)} (got {aggregate!r})")
    if not 0.0 <= min_agreement <= 1.0:
        raise DataError(f"min_agreement must be in [0, 1] (got {min_agreement})")
    p, items, labels = project_labels(engine, project)
    by_item = collections.defaultdict(list)
    for lab in labels:
        if not lab["skipped"]:
            by_item[lab["item_id"]].append(lab["value"])
    rows: list[dict] = []
    st = collections.Counter()
    for it in items:
        agg = aggregate_item(p["kind"], it, by_item.get(it["id"], []), aggregate)
        if agg is None:
            st["unlabelled_or_not_unanimous"] += 1
            continue
        if agg["num_labels"] < min_labels or agg["agreement"] < min_agreement:
            st["below_min_agreement_or_labels"] += 1
            continue
        extra = {"agreement": round(agg["agreement"], 6), "num_labels": agg["num_labels"]}
        prompt, resp, scores = it["prompt"], it["responses"], agg["scores"]
        n = len(resp)
        if fmt == "pairs":
            made = 0
            for a in range(n):
                for b in range(n):
                    if scores[a] > scores[b]:
                        row = {"prompt": prompt, "chosen": resp[a], "rejected": resp[b], **extra}
                        if agg["margin"] is not None:
                            row["margin"] = agg["margin"]
                        rows.append(row)
                        made += 1
            st["items_without_a_pair (ties)" if not made else "items_used"] += 1
        elif fmt == "listwise":
            if n < 2 or len(set(scores)) == 1 or (drop_ties and len(set(scores)) < n):
                st["items_tied"] += 1
                continue
            rows.append({"prompt": prompt, "completions": resp, "ranks": _dense_ranks(scores), **extra})
            st["items_used"] += 1
        else:
            made = 0
            for j in range(n):
                if agg["verdicts"][j] is not None:
                    rows.append({"prompt": prompt, "completion": resp[j], "label": agg["verdicts"][j], **extra})
                    made += 1
            st["items_without_a_verdict" if not made else "items_used"] += 1
    if stats is not None:
        stats.update(st)
        stats["rows"] = len(rows)
    return rows


def write_jsonl(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- studio:// paths

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_FOR_KIND = {"preference": "pairs", "listwise": "listwise", "unpaired": "unpaired"}


def parse_studio_path(path: str) -> tuple[str | None, str | None, str, dict]:
    """``studio://[DIR::]PROJECT[?k=v&...]`` -> (dir, db url, project, options)."""
    spec = path[len(PREFIX):]
    spec, _, query = spec.partition("?")
    directory, sep, project = spec.rpartition("::")
    if not sep:
        directory = None
    url = None
    if directory is None:
        url = os.environ.get("RLHFKIT_STUDIO_DB") or None
        directory = os.environ.get("RLHFKIT_STUDIO_DIR") or None
        if url is None and directory is None:
            raise DataError("a studio:// path without a directory needs RLHFKIT_STUDIO_DIR (the studio dir) or "
                            "RLHFKIT_STUDIO_DB (a database URL); or write studio://DIR::PROJECT", source=path)
    elif not os.path.isfile(os.path.join(directory, "studio.db")):
        raise DataError(f"no studio database in {directory} (expected {os.path.join(directory, 'studio.db')})",
                        source=path)
    if not project:
        raise DataError("no project name: write studio://DIR::PROJECT", source=path)
    opts: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        k, eq, v = part.partition("=")
        if not eq:
            raise DataError(f"studio option '{part}' must look like key=value", source=path)
        if k == "format":
            if v not in FORMATS:
                raise DataError(f"format must be one of {', '.join(FORMATS)} (got {v!r})", source=path)
            opts[k] = v
        elif k == "aggregate":
            opts[k] = v
        elif k in ("min_agreement",):
            try:
                opts[k] = float(v)
            except ValueError as e:
                raise DataError(f"min_agreement must be a number (got {v!r})", source=path) from e
        elif k == "min_labels":
            if not v.isdigit():
                raise DataError(f"min_labels must be a whole number (got {v!r})", source=path)
            opts[k] = int(v)
        elif k == "drop_ties":
            if v.lower() not in _BOOL:
                raise DataError(f"drop_ties must be true or false (got {v!r})", source=path)
            opts[k] = _BOOL[v.lower()]
        else:
            raise DataError(f"unknown studio option '{k}' (format, aggregate, min_agreement, min_labels, "
                            "drop_ties)", source=path)
    return directory, url, project, opts


def studio_rows(path: str, prefer: tuple[str, ...] = (), *, stats: dict | None = None) -> list[dict]:
    """The exported rows of a ``studio://`` path; ``prefer``: the data kinds the caller reads
    (choose the format when the path names none); ``stats`` as in :func:`export_rows` (plus the
    ``format`` used)."""
    from .db import StudioError, open_db

    directory, url, project, opts = parse_studio_path(path)
    fmt = opts.pop("format", None) or next((_FOR_KIND[k] for k in prefer if k in _FOR_KIND), "pairs")
    try:
        engine = open_db(directory, url)
        try:
            rows = export_rows(engine, project, fmt, stats=stats, **opts)
        finally:
            engine.dispose()
    except StudioError as e:
        raise DataError(str(e), source=path) from e
    if stats is not None:
        stats["format"] = fmt
    if not rows:
        raise DataError(f"project '{project}' has no labelled items to export as {fmt} (yet)", source=path)
    return rows

"""``rlhfkit inspect DATA``: the data-quality report of a preference file (pairs, listwise or
unpaired thumbs rows) — ties, preference strength, length bias, exact and near-duplicate rows,
prompt diversity, lengths, and annotator agreement when labels by person are given. A studio
project (``studio://[DIR::]PROJECT``) is inspected as its exported rows plus the statistics of
its raw labels (agreement, ties, strength, position bias, per-annotator quality, time per label).

Definitions: ``docs/algorithms.md#data-inspection`` (and ``#annotator-agreement``). Files are
read and validated by the training loaders (:func:`rlhfkit.data.loading.load_rows`,
:func:`rlhfkit.data.formats.normalize_row`), so a bad file fails here with the same message
(file, row, field) as in training. :func:`inspect_rows` takes a list of row dicts (a studio
project's export, an in-memory dataset); :func:`inspect_path` wraps it for files and studio
projects (:func:`studio_annotations`).
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from .data.formats import _squash, detect_kind, normalize_row
from .data.loading import RawRows, load_rows, parse_row_range
from .errors import ConfigError, DataError
from .studio.agreement import agreement_report, wilson_interval

KINDS = ("preference", "listwise", "unpaired")
STRENGTH_COLUMNS = ("margin", "strength")
PERCENTILES = (5, 25, 50, 75, 95)
_NON_WORD = re.compile(r"[^0-9a-z]+")

# MinHash LSH for near-duplicate candidates (docs/algorithms.md#data-inspection)
NUM_PERM, BANDS = 128, 32
_PRIME = (1 << 31) - 1


# --------------------------------------------------------------------------- text helpers

def as_text(x) -> str:
    """A prompt or completion as plain text (a message list: the contents joined by newlines)."""
    if isinstance(x, str):
        return x
    return "\n".join(str(m.get("content", "")) for m in x)


def normalize_text(text: str) -> str:
    """Lower case, runs of non-alphanumerics collapsed to one space."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-gram shingles of the normalised text (the whole text when it has fewer than n words)."""
    words = normalize_text(text).split()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# --------------------------------------------------------------------------- statistics (pure)

def length_bias(preferred: Sequence[float], other: Sequence[float]) -> dict:
    """Rate at which the preferred response is the longer one, over pairs of unequal length,
    with its Wilson 95 % interval; see ``docs/algorithms.md#data-inspection``."""
    p, o = np.asarray(preferred, dtype=np.float64), np.asarray(other, dtype=np.float64)
    longer, shorter = int((p > o).sum()), int((p < o).sum())
    n = longer + shorter
    lo, hi = wilson_interval(longer, n)
    return {"pairs": int(p.size), "longer": longer, "shorter": shorter, "equal": int(p.size) - n,
            "rate": longer / n if n else None, "ci95": [lo, hi] if n else [None, None]}


def summarize(values: Sequence[float]) -> dict:
    """Count, mean, max and the 5/25/50/75/95th percentiles (linear interpolation)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    out = {"n": int(v.size), "mean": float(v.mean()), "max": float(v.max())}
    out.update({f"p{q}": float(x) for q, x in zip(PERCENTILES, np.percentile(v, PERCENTILES))})
    return out


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct word n-grams over all texts / all word n-grams (Li et al. 2016)."""
    seen, total = set(), 0
    for t in texts:
        w = normalize_text(t).split()
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


def _minhash(sets: list[set[str]], seed: int = 0) -> np.ndarray:
    """(rows, NUM_PERM) MinHash signatures with h(x) = (a·crc32(x) + b) mod (2³¹ − 1)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, NUM_PERM, dtype=np.uint64)
    b = rng.integers(0, _PRIME, NUM_PERM, dtype=np.uint64)
    sig = np.empty((len(sets), NUM_PERM), dtype=np.uint64)
    for i, s in enumerate(sets):
        x = np.fromiter((zlib.crc32(t.encode()) % _PRIME for t in s), dtype=np.uint64, count=len(s))
        sig[i] = ((a[:, None] * x[None, :] + b[:, None]) % _PRIME).min(axis=1)
    return sig


def near_duplicates(texts: Sequence[str], threshold: float = 0.9, *, skip: set[int] | None = None
                    ) -> list[tuple[int, int, float]]:
    """Pairs (i, j, J) with i < j whose word-3-gram shingle sets have Jaccard J ≥ ``threshold``:
    MinHash-LSH candidates confirmed by the exact Jaccard; rows in ``skip`` (exact duplicates)
    are left out. See ``docs/algorithms.md#data-inspection``."""
    keep = [i for i in range(len(texts)) if not skip or i not in skip]
    sets = [shingles(texts[i]) for i in keep]
    if len(keep) < 2:
        return []
    sig = _minhash(sets)
    rows = NUM_PERM // BANDS
    candidates: set[tuple[int, int]] = set()
    for band in range(BANDS):
        buckets: dict[bytes, list[int]] = collections.defaultdict(list)
        block = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows])
        for k in range(len(keep)):
            buckets[block[k].tobytes()].append(k)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    candidates.add((members[x], members[y]))
    out = []
    for x, y in sorted(candidates):
        j = jaccard(sets[x], sets[y])
        if j >= threshold:
            out.append((keep[x], keep[y], j))
    return out


# --------------------------------------------------------------------------- rows -> records

def _tie(kind: str, data: dict) -> bool:
    if kind != "preference" or not isinstance(data, dict):
        return False
    c, r = data.get("chosen"), data.get("rejected")
    if not isinstance(c, (str, list)) or not isinstance(r, (str, list)) or type(c) is not type(r):
        return False
    try:
        return _squash(c) == _squash(r)
    except (AttributeError, TypeError):
        return False


def _strength(data: dict) -> float | None:
    for key in STRENGTH_COLUMNS:
        v = data.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    c, r = data.get("score_chosen"), data.get("score_rejected")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (c, r)):
        return float(c) - float(r)
    return None


def _records(raw: RawRows, kind: str | None, strict: bool) -> tuple[str, list[dict], dict]:
    """Validate rows like training. Pair rows with chosen == rejected are kept as ties; other
    invalid rows are counted with training's message for each (``strict``: raised, as training does)."""
    if not raw.rows:
        raise DataError("dataset is empty (no rows selected)", source=raw.source)
    kind = kind or detect_kind(raw.rows[0], raw.source, raw.index[0])
    if kind not in KINDS:
        raise DataError(f"inspect reads preference pairs, listwise or unpaired (thumbs) rows; these rows look "
                        f"like '{kind}' (fields {sorted(raw.rows[0])})", source=raw.source)
    records, reasons, messages = [], collections.Counter(), []
    for i, data in zip(raw.index, raw.rows):
        if _tie(kind, data):
            records.append({"kind": kind, "row": i, "tie": True, "raw": data})
            continue
        try:
            rec = normalize_row(kind, raw.source, i, data)
        except DataError as e:
            if strict:
                raise
            reasons[f"field '{e.field}': " + str(e).split(": ", 1)[-1] if e.field else str(e).split(": ", 1)[-1]] += 1
            messages.append(str(e))
            continue
        rec["raw"] = data
        records.append(rec)
    if not any(not r.get("tie") for r in records):
        raise DataError(f"no valid rows to inspect ({len(messages)} invalid"
                        + (f"; the first: {messages[0]}" if messages else "") + ")", source=raw.source)
    invalid = {"rows": len(messages), "reasons": dict(reasons.most_common(10)), "examples": messages[:10]}
    return kind, records, invalid


def _row_text(rec: dict) -> str:
    if rec.get("tie"):
        d = rec["raw"]
        parts = [d.get("prompt") or "", d["chosen"], d["rejected"]]
    elif rec["kind"] == "preference":
        parts = [rec["prompt"], rec["chosen"], rec["rejected"]]
    elif rec["kind"] == "listwise":
        parts = [rec["prompt"], *rec["completions"]]
    else:
        parts = [rec["prompt"], rec["completion"]]
    return "\n".join(as_text(p) for p in parts)


# --------------------------------------------------------------------------- the report

def _measures(tokenizer) -> dict[str, Callable[[list[str]], list[int]]]:
    out = {"chars": lambda ts: [len(t) for t in ts], "words": lambda ts: [len(t.split()) for t in ts]}
    if tokenizer is not None:
        out["tokens"] = lambda ts: [len(ids) for ids in tokenizer(list(ts), add_special_tokens=False)["input_ids"]]
    return out


def inspect_rows(rows: Sequence[dict] | RawRows, *, source: str = "(rows)", kind: str | None = None,
                 strict: bool = False, tokenizer=None, near_dup_threshold: float = 0.9,
                 annotations=None, gold=None) -> dict:
    """The data-quality report (a JSON-ready dict) of preference rows as the trainers read them.

    ``rows``: row dicts (or :class:`RawRows`); ``annotations``: optional (item, annotator,
    label) triples for the agreement section (a studio project's labels, ``gold`` its answers).
    Rows that training would refuse are counted under ``invalid`` with training's message for
    each (file, row, field) and left out; ``strict`` raises at the first one instead.
    See ``docs/algorithms.md#data-inspection``.
    """
    if not (isinstance(near_dup_threshold, (int, float)) and 0.0 < near_dup_threshold <= 1.0):
        raise ConfigError(f"near_dup_threshold must be in (0, 1], got {near_dup_threshold!r}")
    raw = rows if isinstance(rows, RawRows) else RawRows(source, list(rows), list(range(len(rows))))
    for i, r in zip(raw.index, raw.rows):
        if not isinstance(r, dict):
            raise DataError(f"row is a {type(r).__name__}, expected an object with named fields",
                            source=raw.source, row=i)
    kind, recs, invalid = _records(raw, kind, strict)
    rep: dict = {"source": raw.source, "kind": kind, "rows": len(raw), "invalid": invalid,
                 "length_units": ["chars", "words"] + (["tokens"] if tokenizer is not None else [])}
    live = [r for r in recs if not r.get("tie")]
    if kind == "preference":
        rep["ties"] = len(recs) - len(live)
        rep["ties_rows"] = [r["row"] for r in recs if r.get("tie")][:20]
        rep["conversational"] = sum(isinstance(r["prompt"], list) for r in live)
    elif kind == "listwise":
        rep["ties"] = sum(len(set(r["scores"])) < len(r["scores"]) for r in live)
        rep["list_sizes"] = dict(sorted(collections.Counter(len(r["completions"]) for r in live).items()))
    else:
        labels = [r["label"] for r in live]
        rep["labels"] = {"desirable": sum(v is True for v in labels), "undesirable": sum(v is False for v in labels),
                         "unlabelled": sum(v is None for v in labels)}

    # preference strength
    strengths = [s for s in (_strength(r["raw"]) for r in live) if s is not None]
    rep["strength"] = summarize(strengths) if strengths else None

    # lengths and length bias, per unit
    measures = _measures(tokenizer)
    prompts = [as_text(r["prompt"]) for r in live]
    pairs: list[tuple[str, str]] = []  # (preferred, other)
    if kind == "preference":
        pairs = [(as_text(r["chosen"]), as_text(r["rejected"])) for r in live]
        groups = {"prompt": prompts, "chosen": [p for p, _ in pairs], "rejected": [o for _, o in pairs]}
    elif kind == "listwise":
        for r in live:
            comps, sc = [as_text(c) for c in r["completions"]], r["scores"]
            pairs += [(comps[i], comps[j]) for i in range(len(comps)) for j in range(len(comps)) if sc[i] > sc[j]]
        groups = {"prompt": prompts, "completions": [as_text(c) for r in live for c in r["completions"]]}
    else:
        by_prompt: dict[str, dict[bool, list[str]]] = collections.defaultdict(lambda: {True: [], False: []})
        for r in live:
            if r["label"] is not None:
                by_prompt[json.dumps(r["prompt"], sort_keys=True)][r["label"]].append(as_text(r["completion"]))
        pairs = [(d, u) for g in by_prompt.values() for d in g[True] for u in g[False]]
        groups = {"prompt": prompts,
                  "desirable": [as_text(r["completion"]) for r in live if r["label"] is True],
                  "undesirable": [as_text(r["completion"]) for r in live if r["label"] is False]}
    rep["lengths"], rep["length_bias"], series = {}, {}, {}
    for unit, fn in measures.items():
        rep["lengths"][unit] = {name: summarize(fn(texts)) for name, texts in groups.items()}
        series[unit] = {name: fn(texts) for name, texts in groups.items()}
        if pairs:
            pref, other = fn([p for p, _ in pairs]), fn([o for _, o in pairs])
            rep["length_bias"][unit] = length_bias(pref, other)
            series[unit]["_pairs"] = (pref, other)
    if kind == "unpaired":
        rep["length_bias_pairs"] = "desirable vs undesirable completions of the same prompt"

    # exact and near duplicates
    first_seen: dict[str, int] = {}
    dups = []
    for k, r in enumerate(recs):
        key = json.dumps(r["raw"], sort_keys=True, ensure_ascii=False, default=str)
        if key in first_seen:
            dups.append((k, first_seen[key]))
        else:
            first_seen[key] = k
    near = near_duplicates([_row_text(r) for r in recs], near_dup_threshold, skip={k for k, _ in dups})
    rep["duplicates"] = {"rows": len(dups), "examples": [{"row": recs[k]["row"], "same_as": recs[j]["row"]}
                                                         for k, j in dups[:10]]}
    rep["near_duplicates"] = {
        "threshold": near_dup_threshold, "pairs": len(near), "rows": len({j for _, j, _ in near}),
        "examples": [{"row": recs[j]["row"], "similar_to": recs[i]["row"], "jaccard": round(s, 4)}
                     for i, j, s in sorted(near, key=lambda t: -t[2])[:10]]}

    # prompt diversity
    exact = len({json.dumps(r["prompt"], sort_keys=True) for r in live})
    rep["prompts"] = {"rows": len(live), "distinct": exact, "distinct_normalized": len({normalize_text(p) for p in prompts}),
                      "distinct_1": distinct_n(prompts, 1), "distinct_2": distinct_n(prompts, 2),
                      "distinct_3": distinct_n(prompts, 3)}
    rep["agreement"] = agreement_report(annotations, gold=gold) if annotations is not None else None
    rep["_series"] = series  # for the plots; dropped from the JSON
    if strengths:
        series["_strength"] = strengths
    return rep


def annotation_stats(progress: dict, labels: list[dict]) -> dict:
    """Statistics of a studio project's raw labels (pure): ``progress`` is
    :func:`rlhfkit.studio.progress.project_progress` of the project (items done, per-annotator
    counts and median seconds, agreement and position bias), ``labels`` its labels as
    :func:`rlhfkit.studio.db.project_labels` returns them. Adds the label outcomes (pairwise:
    win / tie / both bad), ``tied_labels`` (pairwise: "tie"; ranking and rating: labels giving two
    responses the same rank or rating; thumbs: None), the distribution of the pairwise strength
    1-3 over winning labels, seconds per label and per-annotator agreement with the majority and
    gold next to the annotator's counts. See ``docs/algorithms.md#data-inspection``."""
    kind = progress["kind"]
    kept = [lab for lab in labels if not lab["skipped"]]
    out = {k: progress[k] for k in ("project", "kind", "overlap", "items", "items_done", "items_started", "labels")}
    out["skips"] = len(labels) - len(kept)
    out["outcomes"], out["strength"], out["tied_labels"] = None, None, None
    if kind == "pairwise":
        oc = collections.Counter(lab["value"]["outcome"] for lab in kept)
        out["outcomes"] = {k: oc.get(k, 0) for k in ("win", "tie", "both_bad")}
        out["tied_labels"] = oc.get("tie", 0)
        given = [lab["value"].get("strength") for lab in kept if lab["value"]["outcome"] == "win"]
        known = [v for v in given if v is not None]
        out["strength"] = {"counts": {str(v): known.count(v) for v in (1, 2, 3)}, "none": len(given) - len(known),
                           "mean": sum(known) / len(known) if known else None}
    elif kind in ("ranking", "rating"):
        field = "ranks" if kind == "ranking" else "ratings"
        out["tied_labels"] = sum(len(set(lab["value"][field])) < len(lab["value"][field]) for lab in kept)
    secs = [lab["seconds"] for lab in kept if lab["seconds"] is not None]
    out["seconds"] = {**summarize(secs), "unknown": len(kept) - len(secs)}
    ag = progress["agreement"]
    per = ag.get("per_annotator", {}) if ag.get("available") else {}
    out["annotators"] = {name: {**a, **{k: per.get(name, {}).get(k) for k in
                                        ("majority_items", "majority_agreement", "gold_items", "gold_agreement")}}
                         for name, a in progress["annotators"].items()}
    return out


def studio_annotations(path: str) -> tuple[dict, dict]:
    """(agreement, annotation statistics) of the project a ``studio://`` path names: the agreement
    section of :func:`rlhfkit.studio.progress.project_progress` (``{"available": False,
    "reason"}`` when it cannot be computed) and :func:`annotation_stats`. A missing database or
    project is a one-line :class:`DataError`."""
    from .studio.db import StudioError, open_db, project_labels
    from .studio.export import parse_studio_path
    from .studio.progress import project_progress

    directory, url, project, _ = parse_studio_path(path)
    try:
        engine = open_db(directory, url)
        try:
            progress = project_progress(engine, project)
            labels = project_labels(engine, project)[2]
        finally:
            engine.dispose()
    except StudioError as e:
        raise DataError(str(e), source=path) from e
    return progress["agreement"], annotation_stats(progress, labels)


def inspect_path(path: str, *, split: str = "train", rows: str = "", columns: str = "", **kw) -> dict:
    """:func:`inspect_rows` on a file or hub dataset read by the training loader, or on a studio
    project (``studio://[DIR::]PROJECT[?options]``): its exported rows (``rows`` selects among
    them) and, under ``agreement`` and ``studio``, the statistics of all its labels."""
    from .data.pipeline import rename_columns
    from .studio.export import PREFIX

    if not str(path).startswith(PREFIX):
        raw = rename_columns(load_rows(path, split=split, rows=rows or None), columns)
        return inspect_rows(raw, **kw)
    from .studio.export import studio_rows

    agreement, studio = studio_annotations(str(path))
    export: dict = {}
    exported = studio_rows(str(path), KINDS, stats=export)
    sel = parse_row_range(rows or None, len(exported))
    raw = rename_columns(RawRows(str(path), [exported[i] for i in sel], list(sel)), columns)
    rep = inspect_rows(raw, **kw)
    rep["agreement"] = agreement
    rep["studio"] = {**studio, "export": export}
    return rep


# --------------------------------------------------------------------------- output

def _f(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"
    return str(x)


def format_report(rep: dict) -> str:
    """The printed table."""
    lines = []

    def row(name, value):
        lines.append(f"  {name:<34} {value}")

    lines.append(f"{rep['source']}  ({rep['kind']})")
    row("rows", rep["rows"])
    inv = rep["invalid"]
    row("invalid rows", f"{inv['rows']}" + (" (training stops at the first; data.skip_invalid skips them; "
                                              "left out below)" if inv["rows"] else ""))
    for k, (why, n) in enumerate(inv["reasons"].items()):
        row("  why" if k == 0 else "", f"{n}x {why}")
    if inv["examples"]:
        row("  first", inv["examples"][0])
    if "ties" in rep:
        extra = " (chosen == rejected; training rejects these rows)" if rep["kind"] == "preference" else \
            " (rows with tied ranks/scores)"
        row("ties", f"{rep['ties']}{extra}")
    if "labels" in rep:
        lab = rep["labels"]
        row("labels", f"{lab['desirable']} desirable, {lab['undesirable']} undesirable"
            + (f", {lab['unlabelled']} reward-only" if lab["unlabelled"] else ""))
    if "list_sizes" in rep:
        row("completions per list", ", ".join(f"{k}: {v} rows" for k, v in rep["list_sizes"].items()))
    s = rep["strength"]
    row("preference strength", "no margin/strength/score column" if s is None else
        f"{s['n']} rows: mean {_f(s['mean'])}, median {_f(s['p50'])}, p5-p95 {_f(s['p5'])}..{_f(s['p95'])}")
    d, nd = rep["duplicates"], rep["near_duplicates"]
    row("exact duplicate rows", d["rows"])
    row(f"near-duplicate rows (J >= {nd['threshold']:g})", f"{nd['rows']} ({nd['pairs']} pairs)")
    p = rep["prompts"]
    row("distinct prompts", f"{p['distinct']} of {p['rows']} ({p['distinct_normalized']} after normalising)")
    row("prompt distinct-1/2/3", " / ".join(_f(p[f"distinct_{n}"]) for n in (1, 2, 3)))
    if rep["length_bias"]:
        what = "chosen longer than rejected" if rep["kind"] == "preference" else "preferred longer than other"
        lines.append(f"  length bias: {what} (unequal-length pairs; 0.5 = none)")
        for unit, b in rep["length_bias"].items():
            rate = "n/a" if b["rate"] is None else \
                f"{b['rate']:.3f} [95% CI {b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]"
            row(f"  {unit}", f"{rate}  ({b['longer']} longer, {b['shorter']} shorter, {b['equal']} equal)")
    for unit, groups in rep["lengths"].items():
        lines.append(f"  lengths in {unit}: p5 / p25 / median / p75 / p95 / max (mean)")
        for name, st in groups.items():
            if st["n"]:
                row(f"  {name}", " / ".join(f"{st[k]:.0f}" for k in ("p5", "p25", "p50", "p75", "p95", "max"))
                    + f"  ({st['mean']:.1f})")
    a = rep["agreement"]
    if a is None:
        row("annotator agreement", "n/a (no per-annotator labels in this data)")
    elif a.get("available", True) is False:
        row("annotator agreement", f"unavailable: {a['reason']}")
    else:
        row("annotator agreement", f"{a['annotators']} annotators, {a['items_multi']} items with >= 2 labels")
        for key in ("cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
            row(f"  {key.replace('_', ' ')}", _f(a.get(key)))
        row("  flagged annotators", ", ".join(a["flagged"]) or "none")
        pb = a.get("position_bias")
        if pb is not None:
            row("  position bias", "n/a (no decided pairwise label)" if pb["first_rate"] is None else
                f"first shown chosen {pb['first_rate']:.3f} [95% CI {pb['ci95'][0]:.3f}, {pb['ci95'][1]:.3f}] "
                f"({pb['first']} of {pb['decided']} decided; p = {pb['p_value']:.3g}; 0.5 = none)")
    if rep.get("studio"):
        _format_studio(rep["studio"], row, lines)
    return "\n".join(lines)


def _format_studio(st: dict, row, lines: list[str]) -> None:
    """The studio project's label statistics (see :func:`annotation_stats`)."""
    row("studio project", f"{st['project']} ({st['kind']}, overlap {st['overlap']}): {st['items']} items, "
        f"{st['items_done']} done, {st['items_started']} started; {st['labels']} labels, {st['skips']} skips")
    ex = {k: v for k, v in st.get("export", {}).items() if k not in ("format", "rows")}
    if ex:
        row(f"  export as {st['export'].get('format')}", ", ".join(f"{k.replace('_', ' ')}: {v}"
                                                                  for k, v in sorted(ex.items())))
    if st["outcomes"] is not None:
        oc = st["outcomes"]
        row("  label outcomes", f"{oc['win']} win, {oc['tie']} tie, {oc['both_bad']} both bad")
    elif st["tied_labels"] is not None:
        row("  tied labels", f"{st['tied_labels']} (two responses given the same rank / rating)")
    s = st["strength"]
    if s is not None:
        row("  label strength 1 / 2 / 3", " / ".join(str(s["counts"][k]) for k in ("1", "2", "3"))
            + f" (mean {_f(s['mean'])}; {s['none']} wins without a strength)")
    sec = st["seconds"]
    row("  seconds per label", "n/a (no timed label)" if not sec["n"] else
        f"{sec['n']} labels: median {_f(sec['p50'], 1)}, mean {_f(sec['mean'], 1)}, "
        f"p5-p95 {_f(sec['p5'], 1)}..{_f(sec['p95'], 1)}" + (f" ({sec['unknown']} untimed)" if sec["unknown"] else ""))
    lines.append("  per annotator: labels / skips / median seconds / agreement with majority / with gold")
    for name, a in st["annotators"].items():
        row(f"    {name}", f"{a['labels']} / {a['skips']} / {_f(a['median_seconds'], 1)} / "
            f"{_f(a['majority_agreement'])} ({a['majority_items'] or 0} items) / "
            f"{_f(a['gold_agreement'])} ({a['gold_items'] or 0} items)")


def write_outputs(rep: dict, out_dir: str) -> list[str]:
    """``report.json`` and PNG plots (matplotlib, Agg) in ``out_dir``; returns the paths written."""
    import matplotlib  # a core dependency (pyproject.toml)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    series = rep["_series"]
    unit = "tokens" if "tokens" in series else "chars"
    paths = []
    title = os.path.basename(str(rep["source"]))

    fig, ax = plt.subplots(figsize=(7, 4))
    groups = {k: v for k, v in series[unit].items() if not k.startswith("_") and v}
    hi = max(np.percentile(v, 99) for v in groups.values()) if groups else 1
    bins = np.linspace(0, max(hi, 1), 50)
    for name, vals in groups.items():
        ax.hist(np.clip(vals, 0, bins[-1]), bins=bins, histtype="step", linewidth=1.5, label=f"{name} (n={len(vals)})")
    ax.set(xlabel=f"length ({unit}; last bin holds everything above p99)", ylabel="rows",
           title=f"{title}: length distributions")
    ax.legend()
    paths.append(os.path.join(out_dir, "lengths.png"))

    pair_series = series[unit].get("_pairs")
    figs = [fig]
    if pair_series:
        pref, other = (np.asarray(x, dtype=np.float64) for x in pair_series)
        fig2, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        a1.scatter(np.maximum(other, 1), np.maximum(pref, 1), s=6, alpha=0.4)
        lim = [1, max(pref.max(initial=1), other.max(initial=1)) * 1.1]
        a1.plot(lim, lim, color="gray", linewidth=1, label="equal length")
        a1.set(xscale="log", yscale="log", xlabel=f"other / rejected ({unit})", ylabel=f"preferred / chosen ({unit})",
               title="pair lengths (above the line: preferred longer)")
        a1.legend()
        diff = pref - other
        lo_, hi_ = np.percentile(diff, [1, 99]) if diff.size else (0, 1)
        a2.hist(np.clip(diff, lo_, hi_), bins=60)
        a2.axvline(0, color="gray", linewidth=1)
        b = rep["length_bias"][unit]
        a2.set(xlabel=f"preferred - other ({unit}, clipped to p1..p99)", ylabel="pairs",
               title=f"length bias: rate {_f(b['rate'])} of unequal pairs")
        fig2.suptitle(title)
        fig2.tight_layout()
        figs.append(fig2)
        paths.append(os.path.join(out_dir, "length_bias.png"))
    if series.get("_strength"):
        fig3, ax3 = plt.subplots(figsize=(7, 4))
        ax3.hist(series["_strength"], bins=40)
        ax3.set(xlabel="preference strength (margin / strength / score difference)", ylabel="rows",
                title=f"{title}: preference strength")
        figs.append(fig3)
        paths.append(os.path.join(out_dir, "strength.png"))
    try:
        for fig_, path in zip(figs, paths):
            fig_.tight_layout()
            fig_.savefig(path, dpi=110)
    finally:
        for fig_ in figs:
            plt.close(fig_)
    out = {k: v for k, v in rep.items() if not k.startswith("_")}
    path = os.path.join(out_dir, "report.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1, allow_nan=False, ensure_ascii=False)
    os.replace(tmp, path)
    return [path] + paths


def run_inspect(path: str, *, out: str = "", tokenizer: str = "", **kw) -> dict:
    """The CLI: print the table; with ``out``, write report.json and the plots there."""
    import time

    t0 = time.perf_counter()
    tok = None
    if tokenizer:
        from .models.loading import load_tokenizer
        tok = load_tokenizer(tokenizer)
    rep = inspect_path(path, tokenizer=tok, **kw)
    rep["tokenizer"] = tokenizer or None
    rep["seconds"] = round(time.perf_counter() - t0, 2)  # reading, validating and measuring
    print(format_report(rep))
    if out:
        for p in write_outputs(rep, out):
            print(f"wrote {p}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return rep

"""Inter-annotator agreement and annotation-quality statistics (pure numpy, no I/O).

Every function takes plain Python sequences of labels and returns floats or dicts; the
equations and their sources are in ``docs/algorithms.md#annotator-agreement``.

Conventions shared by all of them:

- a *label* is any hashable value (``"A"``, ``2``, ``True``); ``None`` and float NaN mean
  *missing* wherever missing values are allowed;
- a statistic whose chance term leaves nothing to correct (every label identical, so
  expected disagreement is 0 and the ratio is 0/0) is **NaN** — undefined, not 1 — and
  :func:`agreement_report` reports it as ``None`` with the reason;
- inputs that cannot give a statistic at all (one annotator, no item rated twice, mismatched
  lengths) raise :class:`ValueError` with a message that says what is missing.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

LEVELS = ("nominal", "ordinal", "interval", "ratio")
WEIGHTS = (None, "linear", "quadratic")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _categories(values: Iterable[Hashable], given: Sequence | None) -> list:
    if given is not None:
        cats = list(given)
        if len(set(cats)) != len(cats):
            raise ValueError("categories must be distinct")
        known = set(cats)
        unknown = {v for v in values if v not in known}
        if unknown:
            raise ValueError(f"labels {sorted(map(str, unknown))[:5]} are not among the categories {cats}")
        return cats
    try:
        return sorted(set(values))
    except TypeError:  # mixed types that do not order: keep first-seen order (nominal use only)
        return list(dict.fromkeys(values))


# --------------------------------------------------------------------------- Cohen's kappa

def cohen_kappa(labels_a: Sequence, labels_b: Sequence, *, weights: str | None = None,
                categories: Sequence | None = None) -> float:
    """Cohen's kappa of two annotators who labelled the same items (one label each, in the same
    item order); see ``docs/algorithms.md#annotator-agreement``.

    κ = (p_o − p_e) / (1 − p_e), p_o the observed agreement rate and p_e = Σ_c p_a(c)·p_b(c)
    the agreement of two independent annotators with the same marginals. ``weights`` =
    ``"linear"`` or ``"quadratic"`` gives the weighted kappa for ordinal ratings,
    κ_w = 1 − Σ w_ij O_ij / Σ w_ij E_ij with w_ij = |i − j| or (i − j)² over the category
    order (``categories``, default: the sorted labels). NaN when p_e = 1 (both annotators used
    one and the same label for every item); ValueError on mismatched lengths or no items.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    a, b = list(labels_a), list(labels_b)
    if len(a) != len(b):
        raise ValueError(f"the two annotators labelled different numbers of items ({len(a)} vs {len(b)}); "
                         "give their labels for the same items in the same order")
    if not a:
        raise ValueError("Cohen's kappa needs at least one item labelled by both annotators")
    if any(_missing(v) for v in a + b):
        raise ValueError("Cohen's kappa needs a label from both annotators on every item; drop items "
                         "with a missing label (or use krippendorff_alpha, which allows them)")
    cats = _categories(a + b, categories)
    pos = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    obs = np.zeros((k, k))
    np.add.at(obs, ([pos[v] for v in a], [pos[v] for v in b]), 1.0)
    obs /= len(a)
    exp = np.outer(obs.sum(1), obs.sum(0))
    idx = np.arange(k, dtype=np.float64)
    if weights is None:
        w = 1.0 - np.eye(k)
    elif weights == "linear":
        w = np.abs(idx[:, None] - idx[None, :])
    else:
        w = (idx[:, None] - idx[None, :]) ** 2
    expected = float((w * exp).sum())
    if expected == 0.0:
        return float("nan")
    return 1.0 - float((w * obs).sum()) / expected


# --------------------------------------------------------------------------- Fleiss' kappa

def fleiss_table(items: Sequence[Sequence], categories: Sequence | None = None) -> tuple[np.ndarray, list]:
    """Per-item label lists (every item rated by the same number of raters) -> the items ×
    categories count table of :func:`fleiss_kappa` and its column categories; see
    ``docs/algorithms.md#annotator-agreement``."""
    items = [list(it) for it in items]
    if not items:
        raise ValueError("Fleiss' kappa needs at least one item")
    counts = {len(it) for it in items}
    if len(counts) != 1:
        raise ValueError(f"Fleiss' kappa needs the same number of raters on every item, got {sorted(counts)}; "
                         "use krippendorff_alpha for varying numbers of raters")
    if any(_missing(v) for it in items for v in it):
        raise ValueError("Fleiss' kappa takes no missing labels; use krippendorff_alpha")
    cats = _categories([v for it in items for v in it], categories)
    pos = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(items), len(cats)))
    for i, it in enumerate(items):
        for v in it:
            table[i, pos[v]] += 1
    return table, cats


def fleiss_kappa(table: Any) -> float:
    """Fleiss' kappa from an items × categories table of counts n_ij (how many of the n raters
    put item i in category j; every row sums to the same n ≥ 2); see
    ``docs/algorithms.md#annotator-agreement``.

    P_i = (Σ_j n_ij² − n) / (n(n − 1)), P̄ = mean_i P_i, p_j = Σ_i n_ij / (N n),
    P̄_e = Σ_j p_j², κ = (P̄ − P̄_e) / (1 − P̄_e). NaN when P̄_e = 1 (every rating in one
    category). Per-item label lists: :func:`fleiss_kappa_from_labels`.
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"expected a non-empty items x categories table of counts, got shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t != np.round(t)):
        raise ValueError("the table must hold non-negative whole counts")
    n_per = t.sum(1)
    if np.any(n_per != n_per[0]):
        raise ValueError(f"every item needs the same number of raters; row sums are {sorted(set(n_per.tolist()))}")
    n = n_per[0]
    if n < 2:
        raise ValueError(f"agreement needs at least 2 raters per item, got {int(n)}")
    p_item = ((t ** 2).sum(1) - n) / (n * (n - 1))
    p_bar = p_item.mean()
    p_cat = t.sum(0) / t.sum()
    p_e = float((p_cat ** 2).sum())
    if p_e >= 1.0:
        return float("nan")
    return float((p_bar - p_e) / (1.0 - p_e))


def fleiss_kappa_from_labels(items: Sequence[Sequence], categories: Sequence | None = None) -> float:
    """Fleiss' kappa from per-item label lists, each with the same number of raters (≥ 2);
    see ``docs/algorithms.md#annotator-agreement``."""
    return fleiss_kappa(fleiss_table(items, categories)[0])


# --------------------------------------------------------------------------- Krippendorff's alpha

def _delta2(level: str, values: np.ndarray, n_c: np.ndarray) -> np.ndarray:
    """Squared difference δ²(c, k) between the sorted distinct values (matrix over them)."""
    c, k = values[:, None], values[None, :]
    if level == "nominal":
        return (c != k).astype(np.float64)
    if level == "interval":
        return (c - k) ** 2
    if level == "ratio":
        s = c + k
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(s == 0, 0.0, ((c - k) / np.where(s == 0, 1.0, s)) ** 2)
        return d
    # ordinal: (Σ_{g between c and k} n_g − (n_c + n_k)/2)² over ranks, with the cumulative sum
    cum = np.concatenate([[0.0], np.cumsum(n_c)])
    i, j = np.arange(len(values))[:, None], np.arange(len(values))[None, :]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return (cum[hi + 1] - cum[lo] - (n_c[i] + n_c[j]) / 2.0) ** 2


def krippendorff_alpha(units: Sequence[Sequence], level: str = "nominal", *,
                       categories: Sequence | None = None) -> float:
    """Krippendorff's alpha over units (items) each holding the values its annotators gave, any
    number per unit; ``None``/NaN entries are missing; see ``docs/algorithms.md#annotator-agreement``.

    With the coincidence matrix o_ck = Σ_u (number of ordered pairs (c, k) of values within
    unit u) / (m_u − 1) over units with m_u ≥ 2 values, n_c = Σ_k o_ck and n = Σ_c n_c:
    α = 1 − (n − 1) Σ o_ck δ²_ck / Σ_{c,k} n_c n_k δ²_ck. ``level`` picks δ: ``nominal``
    (0/1), ``ordinal`` (rank distance through the value frequencies), ``interval`` ((c − k)²),
    ``ratio`` (((c − k)/(c + k))²). Ordinal labels need not be numbers when ``categories``
    gives their order; interval and ratio need numbers. NaN when all pairable values are equal
    (expected disagreement 0); ValueError when no unit has two values.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    kept = [[v for v in u if not _missing(v)] for u in units]
    kept = [u for u in kept if len(u) >= 2]
    if not kept:
        raise ValueError("Krippendorff's alpha needs at least one item with values from 2 or more annotators")
    flat = [v for u in kept for v in u]
    if level in ("interval", "ratio"):
        try:
            numeric = [float(v) for v in flat]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{level} alpha needs numeric values ({e})") from e
        if level == "ratio" and min(numeric) < 0:
            raise ValueError("ratio alpha needs non-negative values")
        cats = sorted(set(numeric))
        as_key = float
    else:
        cats = _categories(flat, categories)
        as_key = lambda v: v  # noqa: E731
    pos = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    o = np.zeros((k, k))
    for u in kept:
        cnt = np.zeros(k)
        for v in u:
            cnt[pos[as_key(v)]] += 1
        # ordered pairs of distinct positions within the unit: counts c*k, minus self-pairs on the diagonal
        o += (np.outer(cnt, cnt) - np.diag(cnt)) / (len(u) - 1)
    n_c = o.sum(1)
    n = n_c.sum()
    values = np.arange(k, dtype=np.float64) if level in ("nominal", "ordinal") else np.asarray(cats, np.float64)
    d2 = _delta2(level, values, n_c)
    expected = float((np.outer(n_c, n_c) * d2).sum())
    if expected == 0.0:
        return float("nan")
    return 1.0 - (n - 1) * float((o * d2).sum()) / expected


# --------------------------------------------------------------------------- per-annotator quality

def _long(labels: Iterable) -> list[tuple[Hashable, Hashable, Any]]:
    """(item, annotator, label) triples from triples or from dicts with those keys."""
    out = []
    for r in labels:
        if isinstance(r, Mapping):
            out.append((r["item"], r["annotator"], r["label"]))
        else:
            item, annotator, label = r
            out.append((item, annotator, label))
    return out


def _majority(labels: list) -> Any | None:
    """The strict most common label, or None when the top count is shared (or no labels)."""
    if not labels:
        return None
    top = collections.Counter(labels).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def annotator_agreement(labels: Iterable, gold: Mapping | None = None) -> dict[Hashable, dict]:
    """Per annotator: agreement with the leave-one-out majority and with gold answers; see
    ``docs/algorithms.md#annotator-agreement``.

    ``labels`` holds (item, annotator, label) triples (or dicts with those keys), one per label
    (an annotator's later label on the same item replaces the earlier one). For annotator a on
    item i, the reference is the strict majority of the *other* annotators' labels on i; items
    where the others are absent or split evenly are not counted. ``gold`` maps item -> the known
    answer. Returns ``{annotator: {"items", "majority_items", "majority_agreement",
    "gold_items", "gold_agreement"}}``; a rate is None when it has no items to count.
    """
    final: dict[tuple, Any] = {}
    for item, ann, label in _long(labels):
        if not _missing(label):
            final[(item, ann)] = label
    by_item: dict[Hashable, dict] = collections.defaultdict(dict)
    for (item, ann), label in final.items():
        by_item[item][ann] = label
    gold = gold or {}
    stats: dict[Hashable, dict] = {}
    for item, votes in by_item.items():
        for ann, label in votes.items():
            s = stats.setdefault(ann, {"items": 0, "majority_items": 0, "majority_hits": 0,
                                       "gold_items": 0, "gold_hits": 0})
            s["items"] += 1
            ref = _majority([v for other, v in votes.items() if other != ann])
            if ref is not None:
                s["majority_items"] += 1
                s["majority_hits"] += int(label == ref)
            if item in gold and not _missing(gold[item]):
                s["gold_items"] += 1
                s["gold_hits"] += int(label == gold[item])
    out = {}
    for ann, s in stats.items():
        out[ann] = {
            "items": s["items"],
            "majority_items": s["majority_items"],
            "majority_agreement": s["majority_hits"] / s["majority_items"] if s["majority_items"] else None,
            "gold_items": s["gold_items"],
            "gold_agreement": s["gold_hits"] / s["gold_items"] if s["gold_items"] else None,
        }
    return out


def flag_annotators(stats: Mapping[Hashable, Mapping], threshold: float, *, metric: str = "majority_agreement",
                    min_items: int = 1) -> list[Hashable]:
    """Annotators whose ``metric`` (``majority_agreement`` or ``gold_agreement`` from
    :func:`annotator_agreement`) is below ``threshold``, counting only annotators with at least
    ``min_items`` items behind that metric (fewer says too little to flag anyone); see
    ``docs/algorithms.md#annotator-agreement``."""
    if metric not in ("majority_agreement", "gold_agreement"):
        raise ValueError(f"metric must be 'majority_agreement' or 'gold_agreement', got {metric!r}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a rate in [0, 1], got {threshold!r}")
    count_key = metric.replace("_agreement", "_items")
    return [a for a, s in stats.items()
            if s.get(metric) is not None and s.get(count_key, 0) >= min_items and s[metric] < threshold]


# --------------------------------------------------------------------------- rates with intervals

def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95 % by default); see
    ``docs/algorithms.md#annotator-agreement``. (nan, nan) when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes <= 0 else max(0.0, mid - half)  # the bounds are exact at 0 and n
    hi = 1.0 if successes >= n else min(1.0, mid + half)
    return lo, hi


def binomial_two_sided_p(successes: int, n: int) -> float:
    """Exact two-sided binomial test of rate ½: the probability, under Bin(n, ½), of an outcome
    at least as far from n/2 as ``successes``; see ``docs/algorithms.md#annotator-agreement``."""
    if n <= 0:
        return float("nan")
    k = min(successes, n - successes)
    # P(X <= k) for X ~ Bin(n, 1/2), summed in log space (n can be thousands)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    m = max(logs)
    tail = math.exp(m) * sum(math.exp(v - m) for v in logs)
    return min(1.0, 2.0 * tail)


def position_bias(records: Iterable) -> dict:
    """How often the response shown first is chosen, ties excluded; see
    ``docs/algorithms.md#annotator-agreement``.

    Each record is the position of the chosen response on the annotator's screen: ``0``
    (shown first), ``1`` (shown second), or ``None`` for a tie / "both bad" (a dict with the
    key ``chosen_position`` works too). Returns ``{"first_rate", "first", "decided", "ties",
    "ci95": [lo, hi], "p_value"}``: the Wilson 95 % interval of the rate and the exact binomial
    test of "no position preference" (rate ½). ``first_rate`` is None when nothing was decided.
    """
    first = second = ties = 0
    for r in records:
        pos = r.get("chosen_position") if isinstance(r, Mapping) else r
        if _missing(pos):
            ties += 1
        elif pos == 0 and not isinstance(pos, bool):
            first += 1
        elif pos == 1 and not isinstance(pos, bool):
            second += 1
        else:
            raise ValueError(f"chosen position must be 0 (shown first), 1 (shown second) or None (tie), got {pos!r}")
    n = first + second
    lo, hi = wilson_interval(first, n)
    return {"first_rate": first / n if n else None, "first": first, "decided": n, "ties": ties,
            "ci95": [lo, hi] if n else [None, None], "p_value": binomial_two_sided_p(first, n) if n else None}


# --------------------------------------------------------------------------- one report

def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def agreement_report(labels: Iterable, *, gold: Mapping | None = None, level: str = "nominal",
                     threshold: float = 0.6, min_items: int = 5, categories: Sequence | None = None) -> dict:
    """Every agreement statistic of a labelled set at once (JSON-ready: undefined values are
    None); see ``docs/algorithms.md#annotator-agreement``.

    ``labels`` as in :func:`annotator_agreement`. Cohen's κ is given when exactly two annotators
    share items (on those items; weighted by ``linear`` for ordinal levels, ``quadratic`` for
    interval/ratio), Fleiss' κ over the items that have the most common number of raters (when
    at least 2), Krippendorff's α over all items at ``level``. Annotators below ``threshold``
    on majority or gold agreement (with at least ``min_items`` items behind it) are flagged.
    """
    triples = _long(labels)
    final: dict[tuple, Any] = {}
    for item, ann, label in triples:
        if not _missing(label):
            final[(item, ann)] = label
    by_item: dict[Hashable, dict] = collections.defaultdict(dict)
    for (item, ann), label in final.items():
        by_item[item][ann] = label
    annotators = sorted({a for _, a in final}, key=str)
    report: dict[str, Any] = {"items": len(by_item), "labels": len(final), "annotators": len(annotators),
                              "items_multi": sum(len(v) >= 2 for v in by_item.values())}
    if report["items_multi"] == 0:
        report["note"] = "no item has labels from 2 or more annotators: agreement is undefined"
        report.update(cohen_kappa=None, fleiss_kappa=None, krippendorff_alpha=None)
    else:
        units = [list(v.values()) for v in by_item.values()]
        report["krippendorff_alpha"] = _num(krippendorff_alpha(units, level, categories=categories))
        report["cohen_kappa"] = None
        if len(annotators) == 2:
            a, b = annotators
            shared = [v for v in by_item.values() if a in v and b in v]
            if shared:
                w = None if level == "nominal" else ("linear" if level == "ordinal" else "quadratic")
                report["cohen_kappa"] = _num(cohen_kappa([v[a] for v in shared], [v[b] for v in shared],
                                                         weights=w, categories=categories))
        sizes = collections.Counter(len(v) for v in units if len(v) >= 2)
        m = max(sizes, key=lambda s: (sizes[s], s))
        report["fleiss_kappa"] = _num(fleiss_kappa_from_labels([u for u in units if len(u) == m], categories))
        report["fleiss_raters"], report["fleiss_items"] = m, sizes[m]
    per = annotator_agreement(triples, gold)
    report["per_annotator"] = {str(a): per[a] for a in annotators}
    flagged = set(flag_annotators(per, threshold, min_items=min_items))
    if gold:
        flagged |= set(flag_annotators(per, threshold, metric="gold_agreement", min_items=min_items))
    report["threshold"] = threshold
    report["flagged"] = sorted((str(a) for a in flagged))
    return report

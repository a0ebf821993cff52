"""Agreement statistics against textbook tables and values computed by hand.

Sources of the expected numbers:
- Fleiss' kappa: Fleiss (1971)'s 10 subjects x 14 raters x 5 categories table as reproduced on
  Wikipedia's "Fleiss' kappa" page (P-bar = 0.378, P-bar_e = 0.213, kappa = 0.210), recomputed
  here with exact fractions.
- Krippendorff's alpha: the reliability data with missing values of Krippendorff (2011),
  "Computing Krippendorff's Alpha-Reliability", 4 observers x 12 units (nominal alpha = 0.743,
  ordinal 0.815, interval 0.849, ratio 0.797), cross-checked by a brute-force sum over pairable
  values written below (independent of the coincidence-matrix code).
- Cohen's kappa and its weighted forms: small tables worked by hand in the comments.
"""

from __future__ import annotations

import inspect
import itertools
import math
import pathlib
import re
from fractions import Fraction

import pytest

from rlhfkit.studio import agreement as ag

N = None
# Krippendorff (2011): rows are observers A-D, columns units 1-12; None = missing
KRIPP = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]
KRIPP_UNITS = [list(u) for u in zip(*KRIPP)]

FLEISS = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


# --------------------------------------------------------------------------- Fleiss

def _fleiss_exact(table):
    n = sum(table[0])
    total = len(table) * n
    p_bar = sum(Fraction(sum(c * c for c in row) - n, n * (n - 1)) for row in table) / len(table)
    p_e = sum(Fraction(sum(row[j] for row in table), total) ** 2 for j in range(len(table[0])))
    return p_bar, p_e, (p_bar - p_e) / (1 - p_e)


def test_fleiss_kappa_on_fleiss_1971_table():
    p_bar, p_e, kappa = _fleiss_exact(FLEISS)
    assert round(float(p_bar), 3) == 0.378 and round(float(p_e), 3) == 0.213  # the page's rounded values
    assert round(float(kappa), 3) == 0.210
    assert ag.fleiss_kappa(FLEISS) == pytest.approx(float(kappa), abs=1e-12)


def test_fleiss_from_label_lists_equals_table_and_scotts_pi_for_two_raters():
    cats = ["a", "b", "c", "d", "e"]
    items = [[c for c, k in zip(cats, row) for _ in range(k)] for row in FLEISS]
    assert ag.fleiss_kappa_from_labels(items) == pytest.approx(0.20993070442195522, abs=1e-12)
    # two raters: Fleiss' kappa is Scott's pi. 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15:
    # p_o = 0.7, pooled p(yes) = 55/100, p_e = 0.55^2 + 0.45^2 = 0.505, pi = 0.195/0.495
    two = [["y", "y"]] * 20 + [["y", "n"]] * 5 + [["n", "y"]] * 10 + [["n", "n"]] * 15
    assert ag.fleiss_kappa_from_labels(two) == pytest.approx(0.195 / 0.495, abs=1e-12)


def test_fleiss_errors_and_degenerate_cases():
    with pytest.raises(ValueError, match="same number of raters"):
        ag.fleiss_kappa([[1, 1], [2, 1]])
    with pytest.raises(ValueError, match="at least 2 raters"):
        ag.fleiss_kappa([[1, 0], [0, 1]])  # a single annotator
    with pytest.raises(ValueError, match="same number of raters"):
        ag.fleiss_kappa_from_labels([["a", "b"], ["a"]])
    assert ag.fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == 1.0  # perfect agreement, both categories used
    assert math.isnan(ag.fleiss_kappa([[3, 0], [3, 0]]))  # one category only: chance term is 1


# --------------------------------------------------------------------------- Cohen

def test_cohen_kappa_two_by_two_by_hand():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = .5*.6 + .5*.4 = 0.5
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert ag.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert ag.cohen_kappa(b, a) == pytest.approx(0.4, abs=1e-12)


def test_weighted_cohen_kappa_by_hand():
    # a = 1,1,2,3 ; b = 1,2,2,1. Marginals a (1/2, 1/4, 1/4), b (1/2, 1/2, 0).
    # unweighted: p_o = 1/2, p_e = 1/4 + 1/8 = 3/8 -> (1/8)/(5/8) = 0.2
    # linear: sum w*O = (0+1+0+2)/4 = 3/4, sum w*E = 1/4 + 1/8 + 3/8 = 3/4 -> 0
    # quadratic: sum w*O = (0+1+0+4)/4 = 5/4, sum w*E = 1/4 + 1/8 + 5/8 = 1 -> -1/4
    a, b = [1, 1, 2, 3], [1, 2, 2, 1]
    assert ag.cohen_kappa(a, b) == pytest.approx(0.2, abs=1e-12)
    assert ag.cohen_kappa(a, b, weights="linear") == pytest.approx(0.0, abs=1e-12)
    assert ag.cohen_kappa(a, b, weights="quadratic") == pytest.approx(-0.25, abs=1e-12)
    # an unused middle category changes the ordinal distances: categories 1..4 with 3 unused
    # -> linear weights over indices of (1,2,3,4) are the same as before for these labels
    assert ag.cohen_kappa(a, b, weights="linear", categories=[1, 2, 3, 4]) == pytest.approx(0.0, abs=1e-12)


def test_cohen_kappa_degenerate_and_errors():
    assert ag.cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    assert math.isnan(ag.cohen_kappa(["a"] * 4, ["a"] * 4))  # p_e = 1: undefined
    assert ag.cohen_kappa(["a"] * 4, ["a", "a", "a", "b"]) == 0.0  # p_o = p_e = 3/4
    with pytest.raises(ValueError, match="different numbers of items"):
        ag.cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one item"):
        ag.cohen_kappa([], [])
    with pytest.raises(ValueError, match="missing"):
        ag.cohen_kappa(["a", None], ["a", "b"])
    with pytest.raises(ValueError, match="weights"):
        ag.cohen_kappa(["a"], ["a"], weights="cubic")
    with pytest.raises(ValueError, match="not among the categories"):
        ag.cohen_kappa(["a", "z"], ["a", "a"], categories=["a", "b"])


# --------------------------------------------------------------------------- Krippendorff

def _brute_alpha(units, level):
    """alpha = 1 - D_o/D_e summed over pairs of pairable values, in plain Python floats."""
    units = [[v for v in u if v is not None] for u in units]
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    freq = {v: values.count(v) for v in set(values)}

    def d2(c, k):
        if level == "nominal":
            return 0.0 if c == k else 1.0
        if level == "interval":
            return float(c - k) ** 2
        if level == "ratio":
            return ((c - k) / (c + k)) ** 2 if c + k else 0.0
        lo, hi = min(c, k), max(c, k)
        between = sum(freq[g] for g in freq if lo <= g <= hi)
        return (between - (freq[c] + freq[k]) / 2.0) ** 2

    d_o = sum(sum(d2(u[i], u[j]) for i, j in itertools.permutations(range(len(u)), 2)) / (len(u) - 1)
              for u in units) / n
    d_e = sum(d2(values[i], values[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    return 1.0 - d_o / d_e


@pytest.mark.parametrize("level,textbook", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                            ("ratio", 0.797)])
def test_krippendorff_alpha_on_the_2011_reliability_data(level, textbook):
    brute = _brute_alpha(KRIPP_UNITS, level)
    assert round(brute, 3) == textbook
    assert ag.krippendorff_alpha(KRIPP_UNITS, level) == pytest.approx(brute, abs=1e-12)


def test_krippendorff_nominal_exact_fraction():
    # nominal: alpha = 1 - (n-1) * sum_{c!=k} o_ck / sum_{c!=k} n_c n_k. Pairable values (unit 12
    # has one value): n_1..n_5 = 9, 13, 10, 5, 3, n = 40, sum_{c!=k} n_c n_k = 40^2 - 384 = 1216.
    # Disagreeing units: 2 (2,2,3,2: 6 ordered pairs / 3), 6 (1,2,3,4: 12/3), 8 (1,1,2,1: 6/3) -> 8.
    # alpha = 1 - 39 * 8 / 1216 = 0.743421... (Krippendorff 2011: 0.743)
    assert ag.krippendorff_alpha(KRIPP_UNITS) == pytest.approx(1 - 39 * 8 / 1216, abs=1e-12)


def test_krippendorff_two_coders_is_corrected_scotts_pi():
    # two coders, no missing values, nominal: alpha = 1 - (1 - pi) * (2N - 1)/(2N), with Scott's
    # pi = 0.195/0.495 for the 50-item table of the Cohen test (N = 50)
    two = [["y", "y"]] * 20 + [["y", "n"]] * 5 + [["n", "y"]] * 10 + [["n", "n"]] * 15
    assert ag.krippendorff_alpha(two) == pytest.approx(1 - (1 - 0.195 / 0.495) * 99 / 100, abs=1e-12)


def test_krippendorff_missing_values_nan_and_ordinal_labels():
    with_nan = [[float("nan") if v is None else v for v in u] for u in KRIPP_UNITS]
    assert ag.krippendorff_alpha(with_nan) == pytest.approx(ag.krippendorff_alpha(KRIPP_UNITS), abs=1e-15)
    # ordinal labels that are words, ordered by `categories`, give the same alpha as their ranks
    names = {1: "bad", 2: "poor", 3: "fair", 4: "good", 5: "great"}
    words = [[None if v is None else names[v] for v in u] for u in KRIPP_UNITS]
    assert ag.krippendorff_alpha(words, "ordinal", categories=list(names.values())) == pytest.approx(
        _brute_alpha(KRIPP_UNITS, "ordinal"), abs=1e-12)


def test_krippendorff_degenerate_and_errors():
    assert ag.krippendorff_alpha([[1, 1], [2, 2, 2], [3, 3]], "interval") == 1.0
    assert math.isnan(ag.krippendorff_alpha([["a", "a"], ["a", "a", "a"]]))  # no variation at all
    with pytest.raises(ValueError, match="2 or more annotators"):
        ag.krippendorff_alpha([[1], [2, None], [3]])  # a single annotator per item
    with pytest.raises(ValueError, match="numeric"):
        ag.krippendorff_alpha([["a", "b"]], "interval")
    with pytest.raises(ValueError, match="level"):
        ag.krippendorff_alpha([[1, 2]], "cardinal")


# --------------------------------------------------------------------------- per annotator

LABELS = [
    (1, "a", "X"), (1, "b", "X"), (1, "c", "X"),
    (2, "a", "X"), (2, "b", "X"), (2, "c", "Y"),
    (3, "a", "Y"), (3, "b", "X"), (3, "c", "X"),
    (4, "a", "X"), (4, "b", "Y"),
    (5, "a", "X"),
]
GOLD = {1: "X", 3: "X", 5: "Y"}


def test_annotator_agreement_leave_one_out_majority_and_gold():
    # a: item1 others X,X -> hit; item2 others X,Y split -> skipped; item3 others X,X -> miss;
    #    item4 other Y -> miss; item5 alone -> skipped. 1/3. Gold: item1 hit, item3 miss, item5 miss.
    # b: item1 hit, item2 split, item3 split (Y,X), item4 other X -> miss: 1/2. Gold 1, 3 hit.
    # c: item1 hit, item2 others X,X -> miss, item3 split: 1/2. Gold 1, 3 hit.
    s = ag.annotator_agreement(LABELS, GOLD)
    assert s["a"] == {"items": 5, "majority_items": 3, "majority_agreement": pytest.approx(1 / 3),
                      "gold_items": 3, "gold_agreement": pytest.approx(1 / 3)}
    assert (s["b"]["majority_items"], s["b"]["majority_agreement"]) == (2, 0.5)
    assert (s["c"]["majority_items"], s["c"]["majority_agreement"]) == (2, 0.5)
    assert s["b"]["gold_agreement"] == 1.0 and s["c"]["gold_agreement"] == 1.0
    assert ag.flag_annotators(s, 0.5) == ["a"]
    assert ag.flag_annotators(s, 0.5, min_items=4) == []
    assert ag.flag_annotators(s, 0.9, metric="gold_agreement") == ["a"]
    # a later label replaces the earlier one (undo / relabel): b now says X on item 4
    s2 = ag.annotator_agreement(LABELS + [(4, "b", "X")])
    assert s2["a"]["majority_agreement"] == pytest.approx(2 / 3)
    # dicts work like triples
    dicts = [{"item": i, "annotator": a, "label": lab} for i, a, lab in LABELS]
    assert ag.annotator_agreement(dicts, GOLD) == s
    with pytest.raises(ValueError, match="threshold"):
        ag.flag_annotators(s, 1.5)


def test_agreement_report_combines_everything():
    rep = ag.agreement_report(LABELS, gold=GOLD, threshold=0.5, min_items=2)
    assert rep["items"] == 5 and rep["annotators"] == 3 and rep["labels"] == 12 and rep["items_multi"] == 4
    # Fleiss on the 3 items rated by 3 annotators: table [[3,0],[2,1],[2,1]] (X, Y)
    # P_i = 1, 1/3, 1/3 -> P-bar = 5/9 = 45/81; p = (7/9, 2/9) -> P_e = 53/81 -> kappa = -8/28
    assert rep["fleiss_raters"] == 3 and rep["fleiss_items"] == 3
    assert rep["fleiss_kappa"] == pytest.approx(-2 / 7, abs=1e-12)
    assert rep["krippendorff_alpha"] == pytest.approx(_brute_alpha([["X", "X", "X"], ["X", "X", "Y"], ["Y", "X", "X"],
                                                                    ["X", "Y"], ["X"]], "nominal"), abs=1e-12)
    assert rep["cohen_kappa"] is None  # three annotators
    assert rep["flagged"] == ["a"]
    two = ag.agreement_report([(i, "p", x) for i, x in enumerate("yyn")] + [(i, "q", x) for i, x in enumerate("yyn")])
    assert two["cohen_kappa"] == 1.0
    one = ag.agreement_report([(i, "p", "y") for i in range(3)])
    assert one["krippendorff_alpha"] is None and "undefined" in one["note"]
    same = ag.agreement_report([(i, a, "y") for i in range(3) for a in "pq"])
    assert same["cohen_kappa"] is None and same["fleiss_kappa"] is None  # NaN -> None (no variation)


# --------------------------------------------------------------------------- position bias

def test_position_bias_rate_wilson_and_binomial():
    recs = [0] * 60 + [1] * 40 + [None] * 5
    out = ag.position_bias(recs)
    assert (out["first"], out["decided"], out["ties"]) == (60, 100, 5)
    assert out["first_rate"] == 0.6
    # Wilson, z = 1.96: centre (0.6 + z^2/200)/(1 + z^2/100), half z*sqrt(.24/100 + z^2/40000)/(1 + z^2/100)
    z = 1.959963984540054
    centre, half = (0.6 + z * z / 200) / (1 + z * z / 100), z * math.sqrt(0.0024 + z * z / 40000) / (1 + z * z / 100)
    assert out["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-12)
    assert out["ci95"] == pytest.approx([0.5020, 0.6906], abs=1e-4)
    # exact two-sided binomial test: 2 * P(X <= 40), X ~ Bin(100, 1/2), in exact integers
    exact = Fraction(2 * sum(math.comb(100, k) for k in range(41)), 2 ** 100)
    assert out["p_value"] == pytest.approx(float(exact), rel=1e-10)
    assert ag.position_bias([{"chosen_position": 0}, {"chosen_position": None}])["first"] == 1
    even = ag.position_bias([0, 1])
    assert even["p_value"] == 1.0 and even["first_rate"] == 0.5
    none = ag.position_bias([None, None])
    assert none["first_rate"] is None and none["ties"] == 2
    with pytest.raises(ValueError, match="chosen position"):
        ag.position_bias([2])
    assert ag.wilson_interval(0, 10)[0] == 0.0 and ag.wilson_interval(10, 10)[1] == 1.0


def test_every_function_cites_an_existing_docs_entry():
    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"
    heads = re.findall(r"^#{2,4} (.+)$", doc.read_text(), re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in heads}
    fns = [ag.cohen_kappa, ag.fleiss_kappa, ag.fleiss_kappa_from_labels, ag.krippendorff_alpha,
           ag.annotator_agreement, ag.flag_annotators, ag.position_bias, ag.wilson_interval,
           ag.binomial_two_sided_p, ag.agreement_report]
    for fn in fns:
        cited = re.findall(r"docs/algorithms\.md#([a-z0-9-]+)", inspect.getdoc(fn) or "")
        assert cited and all(c in anchors for c in cited), fn.__name__

"""``rlhfkit inspect studio://DIR::PROJECT``: the exported rows' data-quality table plus the raw
labels' statistics, checked against values counted and computed by hand."""

import json
import re
import types

import pytest
from studio_helpers import studio

from rlhfkit.cli import main
from rlhfkit.studio import db

pytest.importorskip("rlhfkit.studio.agreement")

# Two annotators on six pairwise items. Per item: (stored winner or "tie"/"both_bad", strength).
VOTES = {
    "x": [(0, 3), (0, 2), (1, 1), (0, 2), ("tie", None), (1, 3)],
    "y": [(0, 3), (0, None), (1, 2), (1, 1), ("tie", None), ("both_bad", None)],
}
SECONDS = {"x": [4, 8, 12, 16, 20, 24], "y": [3, 3, 3, 6, 6, 6]}
# gold answers (stored winner) of items 0, 3 and 5
GOLD = {0: 0, 3: 0, 5: 1}

# Hand values. Categories per item (x, y): (0,0) (0,0) (1,1) (0,1) (tie,tie) (1,both_bad).
# Cohen: p_o = 4/6; x marginals 0:3 1:2 tie:1, y 0:2 1:2 tie:1 bb:1 -> p_e = (6+4+1)/36 = 11/36;
#        kappa = (24/36 - 11/36) / (25/36) = 13/25.
COHEN = 13 / 25
# Fleiss (n = 2): P_bar = 4/6; pooled p = (5, 4, 2, 1)/12 -> P_e = 46/144;
#        kappa = (96 - 46) / (144 - 46) = 50/98.
FLEISS = 50 / 98
# Krippendorff nominal: n = 12 values, n_c = (5, 4, 2, 1); disagreeing ordered pairs sum to 4;
#        D_e sum = 144 - 46 = 98; alpha = 1 - 11 * 4 / 98.
ALPHA = 1 - 44 / 98


def _build(tmp_path, monkeypatch):
    """The project 'p' labelled as VOTES, each label taking SECONDS (a fake clock in the studio's
    DB module), plus one skip by a third annotator 'z'. Returns (studio dir, positions at which
    the chosen response was shown: 0 = first)."""
    recs = [{"prompt": f"What is {i} + {i}?", "responses": [f"It is {2 * i}.", f"I think it is {2 * i + 1}."]}
            for i in range(6)]
    for i, w in GOLD.items():
        recs[i]["gold"] = {"outcome": "win", "winner": w, "position": None, "strength": None}
    clock = [1000.0]
    monkeypatch.setattr(db, "time", types.SimpleNamespace(time=lambda: clock[0]))
    engine, tok = studio(tmp_path, records=recs, annotators=("x", "y", "z"), overlap=2)
    p = db.get_project(engine, "p")
    shown_positions = []
    for who, votes in VOTES.items():
        user = db.user_for_token(engine, tok[who])
        for k, (choice, strength) in enumerate(votes):
            served = db.next_item(engine, "p", user)["item"]
            item = next(i for i in db.project_labels(engine, "p")[1] if i["id"] == served["id"])
            assert item["position"] == k
            if isinstance(choice, int):
                pos = served["responses"].index(item["responses"][choice])
                shown_positions.append(pos)
                body = {"choice": "AB"[pos], "strength": strength}
            else:
                body = {"choice": choice}
            clock[0] += SECONDS[who][k]
            db.add_label(engine, p, served["id"], user, body)
    z = db.user_for_token(engine, tok["z"])
    first = db.project_labels(engine, "p")[1][0]
    db.add_label(engine, p, first["id"], z, {}, skipped=True)
    engine.dispose()
    return str(tmp_path / "studio"), shown_positions


def test_inspect_studio_project_by_hand(tmp_path, monkeypatch, capsys):
    d, positions = _build(tmp_path, monkeypatch)
    out = tmp_path / "out"
    assert main(["inspect", f"studio://{d}::p", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())

    # the exported pairs (majority): items 0, 1 (a wins), 2 (b wins); 3 and 5 split, 4 tie -> no pair
    assert rep["kind"] == "preference" and rep["rows"] == 3 and rep["invalid"]["rows"] == 0
    # margin column = mean strength of the winning votes: (3+3)/2, 2 (y gave none), (1+2)/2
    assert rep["strength"]["n"] == 3 and rep["strength"]["mean"] == pytest.approx((3 + 2 + 1.5) / 3)
    assert rep["length_bias"]["chars"]["rate"] == pytest.approx(1 / 3)  # only item 2's chosen is longer
    st = rep["studio"]
    assert st["export"]["format"] == "pairs" and st["export"]["items_used"] == 3
    assert st["export"]["items_without_a_pair (ties)"] == 3

    ag = rep["agreement"]
    assert ag["available"] is True and ag["annotators"] == 2 and ag["items_multi"] == 6  # z's skip left out
    assert ag["cohen_kappa"] == pytest.approx(COHEN, abs=1e-12)
    assert ag["fleiss_kappa"] == pytest.approx(FLEISS, abs=1e-12)
    assert ag["krippendorff_alpha"] == pytest.approx(ALPHA, abs=1e-12)
    # position bias: decided labels (x: 5, y: 4), first = those whose winner was shown first
    pb = ag["position_bias"]
    assert (pb["decided"], pb["ties"], pb["first"]) == (9, 3, positions.count(0))
    assert pb["first_rate"] == pytest.approx(positions.count(0) / 9)

    assert (st["items"], st["items_done"], st["labels"], st["skips"]) == (6, 6, 12, 1)
    assert st["outcomes"] == {"win": 9, "tie": 2, "both_bad": 1} and st["tied_labels"] == 2
    # strengths of the 9 wins: x 3,2,1,2,3; y 3,-,2,1 -> 1: 2, 2: 3, 3: 3, none: 1, mean 17/8
    assert st["strength"] == {"counts": {"1": 2, "2": 3, "3": 3}, "none": 1, "mean": 17 / 8}
    # seconds: 12 timed labels, sorted 3 3 3 4 6 6 6 8 12 16 20 24
    sec = st["seconds"]
    assert (sec["n"], sec["unknown"], sec["p50"], sec["max"]) == (12, 0, 6.0, 24.0)
    assert sec["mean"] == pytest.approx(111 / 12)
    x, y, z = (st["annotators"][k] for k in "xyz")
    assert (x["labels"], x["skips"], x["median_seconds"]) == (6, 0, 14.0)
    assert (y["labels"], y["median_seconds"]) == (6, 4.5)
    assert (z["labels"], z["skips"], z["majority_agreement"]) == (0, 1, None)
    # two annotators: the majority of the others is the other one; they agree on 4 of 6 items
    assert x["majority_agreement"] == pytest.approx(4 / 6) and y["majority_agreement"] == pytest.approx(4 / 6)
    # gold (items 0, 3, 5 = winners 0, 0, 1): x 3 of 3, y 1 of 3 (item 3 said 1, item 5 both bad)
    assert (x["gold_items"], x["gold_agreement"]) == (3, 1.0)
    assert (y["gold_items"], y["gold_agreement"]) == (3, pytest.approx(1 / 3))

    for name, value in [("cohen kappa", f"{COHEN:.3f}"), ("fleiss kappa", f"{FLEISS:.3f}"),
                        ("krippendorff alpha", f"{ALPHA:.3f}"), ("label outcomes", "9 win, 2 tie, 1 both bad"),
                        ("label strength 1 / 2 / 3", "2 / 3 / 3 (mean 2.125; 1 wins without a strength)"),
                        ("seconds per label", "12 labels: median 6.0, mean 9.2"),
                        ("x", "6 / 0 / 14.0 / 0.667 (6 items) / 1.000 (3 items)"),
                        ("y", "6 / 0 / 4.5 / 0.667 (6 items) / 0.333 (3 items)"),
                        ("position bias", f"first shown chosen {positions.count(0) / 9:.3f}")]:
        assert re.search(rf"^ +{re.escape(name)} +{re.escape(value)}", text, re.M), (name, value, text)

    # studio://PROJECT through RLHFKIT_STUDIO_DIR, with a row range over the export
    monkeypatch.delenv("RLHFKIT_STUDIO_DB", raising=False)
    monkeypatch.setenv("RLHFKIT_STUDIO_DIR", d)
    assert main(["inspect", "studio://p", "--rows", "0:2"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^  rows +2$", text, re.M) and "9 win, 2 tie, 1 both bad" in text


def test_missing_project_or_studio_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    d, _ = _build(tmp_path, monkeypatch)
    for path, msg in [(f"studio://{d}::nope", f"studio://{d}::nope: no project named 'nope'"),
                      (f"studio://{tmp_path}::p", "no studio database in")]:
        assert main(["inspect", path]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_project_without_labels_and_single_annotator(tmp_path, capsys):
    engine, tok = studio(tmp_path, records=[{"prompt": "q", "responses": ["a", "bb"]}])
    d = str(tmp_path / "studio")
    assert main(["inspect", f"studio://{d}::p"]) == 2
    assert "has no labelled items to export" in capsys.readouterr().err
    p, user = db.get_project(engine, "p"), db.user_for_token(engine, tok["ann"])
    served = db.next_item(engine, "p", user)["item"]
    db.add_label(engine, p, served["id"], user, {"choice": "A"})
    engine.dispose()
    assert main(["inspect", f"studio://{d}::p"]) == 0
    text = capsys.readouterr().out
    # one annotator: no item with two labels, so no agreement statistic, and the table says so
    assert "1 annotators, 0 items with >= 2 labels" in text and re.search(r"cohen kappa +n/a", text)
    assert "first shown chosen 1.000" in text and "(1 of 1 decided" in text

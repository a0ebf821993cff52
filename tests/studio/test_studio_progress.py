"""Admin progress: what the agreement statistics receive from the studio's labels, and the
values they give on a hand-computed case (when the statistics module is installed)."""

import sys
import types

import pytest
from studio_helpers import studio

from rlhfkit.studio import db
from rlhfkit.studio.progress import project_progress


def label_stored_winner(engine, who_token, position, winner):
    """Label item ``position`` so that the stored response ``winner`` wins; returns the position
    (0 = first) at which the winner was shown."""
    p = db.get_project(engine, "p")
    user = db.user_for_token(engine, who_token)
    it = next(i for i in db.project_labels(engine, "p")[1] if i["position"] == position)
    shown = db.get_item(engine, p, it["id"], user)["responses"]
    pos = shown.index(it["responses"][winner])
    db.add_label(engine, p, it["id"], user, {"choice": "AB"[pos]})
    return it["id"], pos


@pytest.fixture
def labelled(tmp_path):
    recs = [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(4)]
    engine, tok = studio(tmp_path, records=recs, annotators=("x", "y"), overlap=2)
    wins = {"x": [0, 0, 1, 1], "y": [0, 1, 1, 1]}
    expected_triples, expected_positions = [], []
    for who, ws in wins.items():
        for position, w in enumerate(ws):
            iid, pos = label_stored_winner(engine, tok[who], position, w)
            expected_triples.append((iid, who, w))
            expected_positions.append(pos)
    yield engine, expected_triples, expected_positions
    engine.dispose()


def test_agreement_receives_item_annotator_winner_triples_and_shown_positions(labelled, monkeypatch):
    engine, triples, positions = labelled
    seen = {}
    fake = types.ModuleType("rlhfkit.studio.agreement")

    def agreement_report(labels, gold=None, level="nominal"):
        seen["labels"], seen["gold"], seen["level"] = list(labels), gold, level
        return {"cohen_kappa": 0.5}

    def position_bias(records):
        seen["positions"] = [r["chosen_position"] for r in records]
        return {"first_rate": 0.25}

    fake.agreement_report, fake.position_bias = agreement_report, position_bias
    monkeypatch.setitem(sys.modules, "rlhfkit.studio.agreement", fake)
    prog = project_progress(engine, "p")
    assert sorted(seen["labels"]) == sorted(triples)
    assert seen["gold"] is None and seen["level"] == "nominal"
    assert sorted(seen["positions"]) == sorted(positions)
    assert prog["agreement"] == {"available": True, "cohen_kappa": 0.5, "position_bias": {"first_rate": 0.25}}
    assert prog["items_done"] == 4 and prog["annotators"]["x"]["labels"] == 4

    def broken(labels, **kw):
        raise ValueError("no item rated twice")

    fake.agreement_report = broken
    assert project_progress(engine, "p")["agreement"] == {"available": False,
                                                          "reason": "ValueError: no item rated twice"}


def test_agreement_is_unavailable_without_the_module(labelled, monkeypatch):
    engine, _, _ = labelled
    monkeypatch.setitem(sys.modules, "rlhfkit.studio.agreement", None)  # import fails
    ag = project_progress(engine, "p")["agreement"]
    assert ag["available"] is False and "not installed" in ag["reason"]


def test_cohen_kappa_of_the_labels_by_hand(labelled):
    pytest.importorskip("rlhfkit.studio.agreement")
    engine, _, positions = labelled
    ag = project_progress(engine, "p")["agreement"]
    # x: 0 0 1 1, y: 0 1 1 1 -> p_o = 3/4; p_e = 1/2 * 1/4 + 1/2 * 3/4 = 1/2; kappa = (3/4 - 1/2) / (1/2)
    assert ag["available"] is True
    assert ag["cohen_kappa"] == pytest.approx(0.5)
    first = sum(p == 0 for p in positions)
    assert ag["position_bias"]["first_rate"] == pytest.approx(first / 8)


def gold_studio(tmp_path):
    from rlhfkit.studio.importers import mark_gold

    recs = [{"prompt": f"q{i}", "responses": [f"good{i}", f"bad{i}"], "meta": {"source": "preference", "chosen": 0},
             "row": i} for i in range(4)]
    assert mark_gold(recs, "pairwise", "0:2", "f.jsonl") == 2
    engine, tok = studio(tmp_path, records=recs, annotators=("x", "y"), overlap=2)
    # x agrees with gold on both gold items, y on one of them; item 2, 3 are ordinary
    for who, ws in (("x", [0, 0, 1, 1]), ("y", [0, 1, 1, 1])):
        for position, w in enumerate(ws):
            label_stored_winner(engine, tok[who], position, w)
    items = db.project_labels(engine, "p")[1]
    return engine, {it["id"]: 0 for it in items if it["position"] < 2}


def test_gold_answers_reach_the_agreement_statistics(tmp_path, monkeypatch):
    engine, gold = gold_studio(tmp_path)
    seen = {}
    fake = types.ModuleType("rlhfkit.studio.agreement")
    fake.agreement_report = lambda labels, gold=None, level="nominal": seen.update(gold=gold) or {}
    fake.position_bias = lambda records: {}
    monkeypatch.setitem(sys.modules, "rlhfkit.studio.agreement", fake)
    project_progress(engine, "p")
    assert seen["gold"] == gold
    engine.dispose()


def test_gold_agreement_by_hand(tmp_path):
    pytest.importorskip("rlhfkit.studio.agreement")
    engine, _ = gold_studio(tmp_path)
    per = project_progress(engine, "p")["agreement"]["per_annotator"]
    assert per["x"]["gold_items"] == 2 and per["x"]["gold_agreement"] == pytest.approx(1.0)
    assert per["y"]["gold_items"] == 2 and per["y"]["gold_agreement"] == pytest.approx(0.5)
    engine.dispose()


def test_gold_from_ranked_lists_and_thumbs_rows_and_refusals():
    from rlhfkit.errors import DataError
    from rlhfkit.studio.importers import mark_gold

    lists = [{"prompt": "q", "responses": ["a", "b", "c"], "meta": {"scores": [-2.0, -1.0, -2.0]}, "row": 0}]
    mark_gold(lists, "ranking", "0:1", "l.jsonl")
    assert lists[0]["gold"] == {"ranks": [2, 1, 2]}
    thumbs = [{"prompt": "q", "responses": ["a"], "meta": {"source": "unpaired", "label": False}, "row": 5}]
    mark_gold(thumbs, "thumbs", "5:6", "u.jsonl")
    assert thumbs[0]["gold"] == {"thumbs": [False]}
    with pytest.raises(DataError, match=r"u.jsonl, row 5: no known answer for a rating gold item"):
        mark_gold(thumbs, "rating", "0:9", "u.jsonl")
    with pytest.raises(DataError, match="select no item"):
        mark_gold(thumbs, "thumbs", "0:2", "u.jsonl")

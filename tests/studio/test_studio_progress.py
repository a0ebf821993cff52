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

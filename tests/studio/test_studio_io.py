"""Import (trainer formats, Label Studio, Argilla) and export (pairs, listwise, unpaired) of studio
projects, aggregation against hand-counted votes, validation errors, schema migration, the CLI."""

import gzip
import json
import os

import pytest
from studio_helpers import studio

from conftest import write_jsonl
from rlhfkit.cli import main
from rlhfkit.data.formats import normalize_row
from rlhfkit.errors import DataError
from rlhfkit.studio import db
from rlhfkit.studio.export import export_rows, parse_studio_path, studio_rows
from rlhfkit.studio.importers import check_for_kind, read_items

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


def label_as(engine, project, user_name, token, position, stored_value):
    """Post a label given in stored response order (translated to the positions this user sees)."""
    p = db.get_project(engine, project)
    user = db.user_for_token(engine, token)
    it = next(i for i in db.project_labels(engine, project)[1] if i["position"] == position)
    order = db.shown_order(p["seed"], user["id"], it["id"], len(it["responses"]))
    if p["kind"] == "pairwise":
        body = dict(stored_value)
        if body.get("winner") is not None:
            body["choice"] = "AB"[order.index(body.pop("winner"))]
        body.pop("winner", None)
    else:
        (field, vals), = stored_value.items()
        body = {field: [vals[j] for j in order]}
    lab, created = db.add_label(engine, p, it["id"], user, body)
    assert created
    return lab


# --------------------------------------------------------------------------- import

def test_import_trainer_pairs_listwise_unpaired(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    assert read_items(pairs) == [{"prompt": "q", "responses": ["good", "bad"],
                                  "meta": {"source": "preference", "chosen": 0}, "row": 0}]
    lw = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "q", "completions": ["a", "b", "c"], "ranks": [2, 1, 3]}])
    rec = read_items(lw)[0]
    assert rec["responses"] == ["a", "b", "c"] and rec["meta"]["scores"] == [-2.0, -1.0, -3.0]
    un = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "q", "completion": "a", "label": True}])
    assert read_items(un)[0] == {"prompt": "q", "responses": ["a"], "meta": {"source": "unpaired", "label": True},
                                 "row": 0}
    two = write_jsonl(tmp_path / "two.jsonl", [{"prompt": "q", "completion": "a", "label": True}] * 2)
    with pytest.raises(DataError, match=r"two.jsonl, row 1, field 'responses': a pairwise task"):
        check_for_kind(read_items(two, rows="1:2"), "pairwise", two)
    po = write_jsonl(tmp_path / "po.jsonl", [{"prompt": "q"}])
    with pytest.raises(DataError, match=r"po.jsonl, row 0: no responses.*--sample_models"):
        check_for_kind(read_items(po), "pairwise", po)
    with pytest.raises(DataError, match=r"row 0, field 'responses': a pairwise task needs exactly 2 responses per item, this row has 3"):
        check_for_kind(read_items(lw), "pairwise", lw)


def test_hh_dialogue_becomes_conversational_and_exports_conversational(tmp_path):
    hh = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
          "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."}
    path = str(tmp_path / "hh.jsonl.gz")
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(hh) + "\n")
    recs = read_items(path)
    assert recs[0]["prompt"] == [{"role": "user", "content": "Hi there"}]
    assert recs[0]["responses"] == [[{"role": "assistant", "content": "Hello! How can I help?"}],
                                    [{"role": "assistant", "content": "Go away."}]]
    engine, tok = studio(tmp_path, records=recs)
    label_as(engine, "p", "ann", tok["ann"], 0, {"winner": 1, "strength": None})  # the annotator prefers 'Go away.'
    rows = export_rows(engine, "p", "pairs")
    assert rows == [{"prompt": [{"role": "user", "content": "Hi there"}],
                     "chosen": [{"role": "assistant", "content": "Go away."}],
                     "rejected": [{"role": "assistant", "content": "Hello! How can I help?"}],
                     "agreement": 1.0, "num_labels": 1}]
    # the trainers' own validation reads the exported row back unchanged
    back = normalize_row("preference", "export", 0, rows[0])
    assert back["prompt"] == rows[0]["prompt"] and back["chosen"] == rows[0]["chosen"]


def test_label_studio_and_argilla_exports_import(tmp_path):
    expect = [("Name a prime number.", ["7 is prime.", "9 is prime."]),
              ("Say hello politely.", ["Hello, nice to meet you.", "What do you want?"])]
    for name in ("labelstudio_pairwise.json", "argilla_v1_records.json", "argilla_v2_records.jsonl"):
        recs = read_items(os.path.join(FIX, name))
        assert [(r["prompt"], r["responses"]) for r in recs] == expect, name
    ls = read_items(os.path.join(FIX, "labelstudio_pairwise.json"))
    assert ls[0]["meta"] == {"labelstudio_id": 101}
    assert read_items(os.path.join(FIX, "argilla_v1_records.json"))[1]["meta"] == {"argilla_id": "rec-2"}
    bad = tmp_path / "ls.json"
    bad.write_text(json.dumps([{"id": 1, "data": {"prompt": "q", "answer1": "a", "answer2": "b"}},
                               {"id": 2, "data": {"prompt": "q"}}]))
    with pytest.raises(DataError, match=r"ls.json, row 1, field 'data': no responses"):
        read_items(str(bad), "labelstudio")
    bad.write_text(json.dumps([{"fields": {"question": "q", "response1": "a", "response2": ""}}]))
    with pytest.raises(DataError, match=r"row 0, field 'fields.response2': empty completion"):
        read_items(str(bad))


def test_validation_errors_name_file_row_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": 3, "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 1, field 'chosen'"):
        read_items(str(p))
    p.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 1: bad JSON on line 2"):
        read_items(str(p))
    with pytest.raises(DataError, match="format must be"):
        read_items(str(p), "csv-ish")


# --------------------------------------------------------------------------- aggregation and export

def test_pairwise_majority_margin_ties_and_unanimous(tmp_path):
    recs = [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(4)]
    engine, tok = studio(tmp_path, records=recs, annotators=("x", "y", "z"), overlap=3)
    votes = {0: [{"winner": 1, "strength": 2}, {"winner": 1, "strength": 3}, {"winner": 0, "strength": 1}],
             1: [{"winner": 0}, {"winner": 1}, {"choice": "tie"}],            # no majority -> tie
             2: [{"choice": "both_bad"}, {"choice": "both_bad"}, {"winner": 0}],
             3: [{"winner": 0}, {"winner": 0}, {"winner": 0}]}
    for pos, vs in votes.items():
        for who, v in zip(("x", "y", "z"), vs):
            label_as(engine, "p", who, tok[who], pos, v)
    pairs = export_rows(engine, "p", "pairs")
    # item 0: b0 wins 2 of 3, margin = mean strength of the winning votes (2 + 3) / 2
    assert pairs == [{"prompt": "q0", "chosen": "b0", "rejected": "a0", "agreement": pytest.approx(2 / 3),
                      "num_labels": 3, "margin": 2.5},
                     {"prompt": "q3", "chosen": "a3", "rejected": "b3", "agreement": 1.0, "num_labels": 3}]
    assert [r["prompt"] for r in export_rows(engine, "p", "pairs", aggregate="unanimous")] == ["q3"]
    assert [r["prompt"] for r in export_rows(engine, "p", "pairs", min_agreement=0.7)] == ["q3"]
    un = export_rows(engine, "p", "unpaired")
    assert [(r["prompt"], r["completion"], r["label"]) for r in un] == [
        ("q0", "a0", False), ("q0", "b0", True), ("q2", "a2", False), ("q2", "b2", False),
        ("q3", "a3", True), ("q3", "b3", False)]
    lw = export_rows(engine, "p", "listwise")
    assert [(r["prompt"], r["ranks"]) for r in lw] == [("q0", [2, 1]), ("q3", [1, 2])]
    stats = {}
    export_rows(engine, "p", "pairs", stats=stats)
    assert stats["rows"] == 2 and stats["items_without_a_pair (ties)"] == 2


def test_ranking_mean_ranks_ties_kept_or_dropped(tmp_path):
    recs = [{"prompt": "q", "responses": ["a", "b", "c"]}, {"prompt": "r", "responses": ["d", "e", "f"]}]
    engine, tok = studio(tmp_path, "ranking", recs, annotators=("x", "y"), overlap=2)
    label_as(engine, "p", "x", tok["x"], 0, {"ranks": [1, 2, 3]})
    label_as(engine, "p", "y", tok["y"], 0, {"ranks": [2, 1, 3]})   # mean ranks 1.5, 1.5, 3
    label_as(engine, "p", "x", tok["x"], 1, {"ranks": [3, 1, 2]})
    label_as(engine, "p", "y", tok["y"], 1, {"ranks": [3, 1, 2]})
    lw = export_rows(engine, "p", "listwise")
    assert [(r["completions"], r["ranks"], r["agreement"]) for r in lw] == [
        (["a", "b", "c"], [1, 1, 2], 0.5), (["d", "e", "f"], [3, 1, 2], 1.0)]
    assert [r["prompt"] for r in export_rows(engine, "p", "listwise", drop_ties=True)] == ["r"]
    pairs = export_rows(engine, "p", "pairs")
    assert {(r["chosen"], r["rejected"]) for r in pairs} == {("a", "c"), ("b", "c"), ("e", "d"), ("e", "f"), ("f", "d")}
    # the listwise rows are what the trainers read (ties kept)
    rec = normalize_row("listwise", "export", 0, lw[0])
    assert rec["scores"] == [-1.0, -1.0, -2.0]


def test_thumbs_and_rating_exports(tmp_path):
    recs = [{"prompt": "q", "responses": ["a", "b"]}]
    engine, tok = studio(tmp_path, "thumbs", recs, annotators=("x", "y", "z"), overlap=3)
    for who, v in zip("xyz", ([True, False], [True, True], [False, True])):
        label_as(engine, "p", who, tok[who], 0, {"thumbs": v})
    # a: 2 up 1 down -> True; b: 2 up 1 down -> True
    assert [(r["completion"], r["label"]) for r in export_rows(engine, "p", "unpaired")] == [("a", True), ("b", True)]
    engine.dispose()
    engine, tok = studio(tmp_path / "r", "rating", [{"prompt": "q", "responses": ["a", "b", "c"]}],
                         annotators=("x", "y"), overlap=2)
    label_as(engine, "p", "x", tok["x"], 0, {"ratings": [6, 3, 4]})
    label_as(engine, "p", "y", tok["y"], 0, {"ratings": [5, 4, 4]})   # means 5.5, 3.5, 4
    assert [(r["completion"], r["label"]) for r in export_rows(engine, "p", "unpaired")] == [("a", True), ("b", False)]
    assert export_rows(engine, "p", "listwise")[0]["ranks"] == [1, 3, 2]
    with pytest.raises(DataError, match="format must be one of"):
        export_rows(engine, "p", "csv")
    with pytest.raises(DataError, match="min_agreement must be in"):
        export_rows(engine, "p", min_agreement=2)


def test_skips_do_not_count(tmp_path):
    engine, tok = studio(tmp_path, records=[{"prompt": "q", "responses": ["a", "b"]}], annotators=("x", "y"), overlap=2)
    label_as(engine, "p", "x", tok["x"], 0, {"winner": 0})
    p = db.get_project(engine, "p")
    db.add_label(engine, p, 1, db.user_for_token(engine, tok["y"]), {}, skipped=True)
    assert export_rows(engine, "p", "pairs")[0]["num_labels"] == 1


# --------------------------------------------------------------------------- studio:// paths

def test_studio_paths(tmp_path, monkeypatch):
    engine, tok = studio(tmp_path, records=[{"prompt": "q", "responses": ["a", "b"]}])
    label_as(engine, "p", "ann", tok["ann"], 0, {"winner": 1})
    d = str(tmp_path / "studio")
    assert studio_rows(f"studio://{d}::p")[0]["chosen"] == "b"
    assert studio_rows(f"studio://{d}::p", prefer=("unpaired",))[0]["completion"] == "a"
    assert studio_rows(f"studio://{d}::p?format=listwise&min_agreement=0.5")[0]["ranks"] == [2, 1]
    monkeypatch.delenv("RLHFKIT_STUDIO_DB", raising=False)
    monkeypatch.setenv("RLHFKIT_STUDIO_DIR", d)
    assert parse_studio_path("studio://p?drop_ties=true") == (d, None, "p", {"drop_ties": True})
    assert studio_rows("studio://p")[0]["chosen"] == "b"
    from rlhfkit.data.loading import load_rows
    raw = load_rows("studio://p", rows="0:1")
    assert raw.source == "studio://p" and raw.rows[0]["rejected"] == "a"
    for bad, msg in [("studio://p?colour=red", "unknown studio option 'colour'"),
                     ("studio://p?format=csv", "format must be one of"),
                     (f"studio://{tmp_path}::p", "no studio database in"),
                     ("studio://nope", "no project named 'nope'"),
                     (f"studio://{d}::", "no project name")]:
        with pytest.raises(DataError, match=msg):
            studio_rows(bad)
    monkeypatch.delenv("RLHFKIT_STUDIO_DIR")
    with pytest.raises(DataError, match="RLHFKIT_STUDIO_DIR"):
        studio_rows("studio://p")


# --------------------------------------------------------------------------- schema versions

def test_sqlite_is_wal_and_versioned(tmp_path):
    engine = db.open_db(str(tmp_path))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert db.current_version(conn) == db.SCHEMA_VERSION == 1
    engine.dispose()


def test_a_newer_database_is_refused_and_left_unchanged(tmp_path, capsys):
    engine = db.open_db(str(tmp_path))
    db.add_user(engine, "a")
    with engine.begin() as conn:
        conn.execute(db.schema_version.update().values(version=7))
    engine.dispose()
    with pytest.raises(db.SchemaError, match="schema version 7, newer than this rlhfkit supports \\(1\\)"):
        db.open_db(str(tmp_path))
    assert main(["studio", "user", "list", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema version 7" in err and "upgrade rlhfkit" in err
    engine = db.make_engine(db.resolve_url(str(tmp_path)))
    with engine.connect() as conn:
        assert db.current_version(conn) == 7
    assert [u["name"] for u in db.list_users(engine)] == ["a"]
    engine.dispose()


def test_migration_steps_run_in_order_and_keep_data(tmp_path, monkeypatch):
    import sqlalchemy as sa

    engine = db.open_db(str(tmp_path))
    db.add_user(engine, "a")
    engine.dispose()

    def v2(conn):  # a later schema step: a new column
        conn.execute(sa.text("ALTER TABLE users ADD COLUMN email VARCHAR(200)"))

    monkeypatch.setitem(db.MIGRATIONS, 2, v2)
    engine = db.open_db(str(tmp_path))
    with engine.connect() as conn:
        assert db.current_version(conn) == 2
        assert conn.execute(sa.text("SELECT name, email FROM users")).all() == [("a", None)]
    engine.dispose()
    fresh = db.open_db(str(tmp_path / "fresh"))  # a new database runs every step
    with fresh.connect() as conn:
        assert db.current_version(conn) == 2
        assert "email" in [c["name"] for c in sa.inspect(conn).get_columns("users")]
    fresh.dispose()


def test_postgresql_urls_get_the_installed_driver(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    for installed, want in (({"psycopg"}, "postgresql+psycopg://u@h:5/d"),
                            ({"psycopg2", "psycopg"}, "postgresql://u@h:5/d"), (set(), "postgresql://u@h:5/d")):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, installed=installed: (
            object() if name in installed else None) if name in ("psycopg", "psycopg2") else real(name, *a))
        assert db._with_driver("postgresql://u@h:5/d") == want
    assert db._with_driver("postgres://u@h/d") == "postgres://u@h/d"  # no driver installed: unchanged
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "psycopg" else None)
    assert db._with_driver("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db._with_driver("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"  # a named driver stays
    assert db._with_driver("sqlite:///x.db") == "sqlite:///x.db"


def test_bad_database_urls_are_one_line_errors(tmp_path, capsys):
    assert main(["studio", "user", "list", "--db", "nosuchdialect://x"]) == 2
    assert "cannot use database URL" in capsys.readouterr().err


# --------------------------------------------------------------------------- CLI

def test_cli_users_projects_export(tmp_path, capsys):
    d = str(tmp_path / "s")
    assert main(["studio", "user", "add", "amy", "--admin", "--dir", d]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "shown once" in out[0]
    token = out[1]
    assert db.user_for_token(db.open_db(d), token)["is_admin"]
    main(["studio", "user", "add", "bo", "--dir", d])
    bo = capsys.readouterr().out.splitlines()[1]
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": [{"role": "user", "content": f"q{i}"}],
                                                   "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(3)])
    g = tmp_path / "g.md"
    g.write_text("Pick the better answer.")
    assert main(["studio", "project", "create", "pp", "--kind", "pairwise", "--data", data, "--guidelines", str(g),
                 "--overlap", "1", "--assign", "bo", "--dir", d, "--gold_rows", "1:3"]) == 0
    assert "created with 3 items (2 gold)" in capsys.readouterr().out
    engine = db.open_db(d)
    assert db.get_project(engine, "pp")["guidelines"] == "Pick the better answer."
    assert [it["gold"] is not None for it in db.project_labels(engine, "pp")[1]] == [False, True, True]
    for pos in range(3):
        label_as(engine, "pp", "bo", bo, pos, {"winner": 0, "strength": 3})
    out_file = str(tmp_path / "out.jsonl")
    assert main(["studio", "export", "pp", "--format", "pairs", "--out", out_file, "--dir", d]) == 0
    rows = [json.loads(x) for x in open(out_file)]
    assert rows[0] == {"prompt": [{"role": "user", "content": "q0"}],
                       "chosen": [{"role": "assistant", "content": "c0"}],
                       "rejected": [{"role": "assistant", "content": "r0"}],
                       "agreement": 1.0, "num_labels": 1, "margin": 3.0}
    capsys.readouterr()
    for argv, msg in [(["project", "create", "pp", "--kind", "pairwise", "--data", data], "already exists"),
                      (["project", "create", "x", "--kind", "pairwise", "--data", data, "--assign", "ghost"],
                       "unknown user 'ghost'"),
                      (["project", "create", "x", "--kind", "pairwise", "--data", str(tmp_path / "none.jsonl")],
                       "data file not found"),
                      (["project", "create", "x", "--kind", "pairwise", "--data", data, "--overlap", "0"],
                       "--overlap must be >= 1"),
                      (["export", "ghost", "--out", out_file], "no project named 'ghost'"),
                      (["project", "create", "x", "--kind", "thumbs", "--data", data, "--gold_rows", "0:1"],
                       "no known answer for a thumbs gold item"),
                      (["user", "add", "amy"], "already exists")]:
        assert main(["studio", *argv, "--dir", d]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert main(["studio", "user", "list"]) == 2
    assert "--dir" in capsys.readouterr().err
    # --db takes any SQLAlchemy URL; here the same SQLite file by URL
    assert main(["studio", "user", "list", "--db", "sqlite:///" + os.path.join(d, "studio.db")]) == 0
    assert capsys.readouterr().out.split() == ["amy", "admin", "bo", "annotator"]
    engine.dispose()


def test_schema_and_queries_compile_for_postgresql():
    """Nothing SQLite-only: the DDL and the item-serving queries compile for PostgreSQL."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    ddl = []
    mock = sa.create_mock_engine("postgresql://", lambda sql, *a, **k: ddl.append(str(sql.compile(dialect=mock.dialect))))
    db.metadata.create_all(mock, checkfirst=False)
    text = "\n".join(ddl)
    assert text.count("CREATE TABLE") == 7 and "SERIAL" in text and "AUTOINCREMENT" not in text
    for q in db.next_item_queries(1, 2, 3, 1000.0):
        sql = str(q.compile(dialect=postgresql.dialect()))
        assert "LIMIT" in sql and "NOT IN" in sql


def test_aggregation_cites_its_reference_entry():
    import inspect
    import pathlib
    import re

    from rlhfkit.studio.export import aggregate_item

    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "algorithms.md").read_text()
    assert re.findall(r"docs/algorithms\.md#([a-z0-9-]+)", inspect.getdoc(aggregate_item)) == ["label-aggregation"]
    assert "\n### label-aggregation\n" in doc

"""The studio on PostgreSQL: schema creation and migration, labelling over HTTP, annotators
labelling at once, and simultaneous fetches that never push an item past its overlap.

Runs when ``RLHFKIT_TEST_PG_URL`` names a PostgreSQL server whose user may create databases
(``.ci/start_postgres DIR`` starts a throwaway one and prints the variable); each test gets a
database of its own, dropped afterwards."""

import concurrent.futures as cf
import json
import os
import threading
import uuid

import pytest

PG_URL = os.environ.get("RLHFKIT_TEST_PG_URL")
pytestmark = pytest.mark.skipif(not PG_URL, reason="RLHFKIT_TEST_PG_URL is not set (no PostgreSQL server to test "
                                "against; .ci/start_postgres DIR starts one)")

sa = pytest.importorskip("sqlalchemy", reason="the studio's optional packages are not installed")
from studio_helpers import auth, live_server, pair_rows  # noqa: E402

from rlhfkit.cli import main  # noqa: E402
from rlhfkit.studio import db  # noqa: E402


@pytest.fixture
def pg_url():
    """A new, empty database on the test server; its URL (dropped after the test)."""
    if not any(__import__("importlib").util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver installed (pip install 'psycopg[binary]')")
    name = "rlhfkit_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(db._with_driver(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def pg_studio(url, records, *, annotators=("ann",), overlap=1, kind="pairwise"):
    engine = db.open_db(url=url)
    assert engine.dialect.name == "postgresql"
    tokens = {"boss": db.add_user(engine, "boss", admin=True)}
    for a in annotators:
        tokens[a] = db.add_user(engine, a)
    db.create_project(engine, "p", kind, records, overlap=overlap, assign=list(annotators))
    return engine, tokens


def pair_records(n):
    return [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]]} for r in pair_rows(n)]


# --------------------------------------------------------------------------- schema

def test_schema_is_created_versioned_and_migrated(pg_url, monkeypatch):
    engine = db.open_db(url=pg_url)
    with engine.connect() as conn:
        assert conn.dialect.name == "postgresql"
        assert db.current_version(conn) == db.SCHEMA_VERSION == 1
        assert set(sa.inspect(conn).get_table_names()) == {
            "schema_version", "users", "projects", "assignments", "items", "views", "labels"}
        assert conn.execute(sa.text("SELECT count(*) FROM schema_version")).scalar() == 1
    db.add_user(engine, "a")
    engine.dispose()
    assert db.migrate(db.make_engine(pg_url)) == 1  # opening again changes nothing

    def v2(conn):  # a later schema step: a new column
        conn.execute(sa.text("ALTER TABLE users ADD COLUMN email VARCHAR(200)"))

    monkeypatch.setitem(db.MIGRATIONS, 2, v2)
    engine = db.open_db(url=pg_url)
    with engine.connect() as conn:
        assert db.current_version(conn) == 2
        assert conn.execute(sa.text("SELECT name, email FROM users")).all() == [("a", None)]
        conn.execute(db.schema_version.update().values(version=7))
        conn.commit()
    engine.dispose()
    with pytest.raises(db.SchemaError, match="schema version 7, newer than this rlhfkit supports \\(2\\)"):
        db.open_db(url=pg_url)


def test_cli_with_a_postgresql_url(pg_url, tmp_path, capsys):
    assert main(["studio", "user", "add", "amy", "--db", pg_url]) == 0
    token = capsys.readouterr().out.splitlines()[1]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(3)))
    assert main(["studio", "project", "create", "hh", "--kind", "pairwise", "--data", str(data), "--db", pg_url,
                 "--assign", "amy"]) == 0
    assert "created with 3 items" in capsys.readouterr().out
    engine = db.open_db(url=pg_url)
    amy = db.user_for_token(engine, token)
    p = db.get_project(engine, "hh")
    while (it := db.next_item(engine, "hh", amy)["item"]) is not None:  # always prefer the correct sum
        db.add_label(engine, p, it["id"], amy, {"choice": "AB"[[r.endswith(f"{2 * it['position']}.")
                                                                 for r in it["responses"]].index(True)]})
    engine.dispose()
    out = tmp_path / "out.jsonl"
    assert main(["studio", "export", "hh", "--db", pg_url, "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in got] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in pair_rows(3)]


# --------------------------------------------------------------------------- labelling

def test_labelling_over_http(pg_url):
    import httpx

    recs = pair_records(3)
    engine, tokens = pg_studio(pg_url, recs)
    with live_server(engine) as url, httpx.Client(base_url=url, headers=auth(tokens["ann"]), timeout=30) as c:
        it = c.get("/api/projects/p/next").json()["item"]
        assert it["position"] == 0
        body = {"choice": "A", "strength": 3, "idempotency_key": "k0"}
        r = c.post(f"/api/projects/p/items/{it['id']}/label", json=body)
        assert r.status_code == 201, r.text
        winner = recs[0]["responses"].index(it["responses"][0])
        assert r.json()["label"]["value"] == {"outcome": "win", "winner": winner, "position": "A", "strength": 3}
        assert c.post(f"/api/projects/p/items/{it['id']}/label", json=body).status_code == 200  # retry
        assert c.post(f"/api/projects/p/items/{it['id']}/label", json={"choice": "B"}).status_code == 409
        it1 = c.get("/api/projects/p/next").json()["item"]
        assert it1["position"] == 1
        assert c.post(f"/api/projects/p/items/{it1['id']}/skip", json={}).status_code == 201
        assert c.post("/api/projects/p/undo").json() == {"undone_item": it1["id"]}
        assert c.get("/api/projects/p/next").json()["item"]["id"] == it1["id"]  # served again
        assert c.post(f"/api/projects/p/items/{it1['id']}/label", json={"choice": "tie"}).status_code == 201
        assert c.post(f"/api/projects/p/items/{it1['id']}/label", json={"choice": "B"}).status_code == 409
        it2 = c.get("/api/projects/p/next").json()["item"]
        r = c.post(f"/api/projects/p/items/{it2['id']}/label", json={"choice": "x"})
        assert r.status_code == 422 and "field 'choice'" in r.json()["detail"]
        boss = auth(tokens["boss"])
        prog = c.get("/api/admin/projects/p/progress", headers=boss).json()
        assert (prog["items_done"], prog["labels"], prog["annotators"]["ann"]["labels"]) == (2, 2, 2)
        rows = c.get("/api/admin/projects/p/export?format=pairs", headers=boss).json()["rows"]
    engine.dispose()
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        (recs[0]["responses"][winner], recs[0]["responses"][1 - winner])]  # the tie is not a pair


def test_eight_annotators_at_once_every_label_stored_exactly_once(pg_url):
    import httpx

    names, n_items, overlap = tuple(f"a{i}" for i in range(8)), 20, 3
    recs = [{"prompt": f"q{i}", "responses": [f"x{i}", f"y{i}"]} for i in range(n_items)]
    engine, tokens = pg_studio(pg_url, recs, annotators=names, overlap=overlap)
    with live_server(engine) as url:
        barrier = threading.Barrier(len(names))

        def annotate(name):
            sent = []
            with httpx.Client(base_url=url, headers=auth(tokens[name]), timeout=60) as c:
                barrier.wait()
                while (it := c.get("/api/projects/p/next").json()["item"]) is not None:
                    body = {"choice": "AB"[(it["id"] + len(sent)) % 2], "idempotency_key": f"{name}-{it['id']}"}
                    r = c.post(f"/api/projects/p/items/{it['id']}/label", json=body)
                    assert r.status_code == 201, r.text
                    assert c.post(f"/api/projects/p/items/{it['id']}/label", json=body).status_code == 200
                    sent.append((it["id"], name))
            return sent

        with cf.ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(annotate, names))
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT l.item_id, u.name FROM labels l JOIN users u ON u.id = l.user_id "
                                      "WHERE NOT l.skipped")).all()
    engine.dispose()
    sent = [s for r in results for s in r]
    assert sorted(map(tuple, stored)) == sorted(sent)
    assert len(set(sent)) == len(sent) == n_items * overlap  # every item exactly `overlap` times
    per_item = {}
    for i, n in sent:
        per_item.setdefault(i, set()).add(n)
    assert len(per_item) == n_items and all(len(v) == overlap for v in per_item.values())


@pytest.mark.parametrize("overlap", [1, 2])
def test_simultaneous_fetches_never_push_an_item_past_its_overlap(pg_url, overlap):
    """12 annotators ask for their next item at the same moment, five times over (a fresh project
    each round, 3 items): exactly 3 * overlap of them get an item, none beyond its overlap."""
    names = tuple(f"a{i}" for i in range(12))
    engine = db.open_db(url=pg_url)
    users = {}
    for n in names:
        db.add_user(engine, n)
    for u in db.list_users(engine):
        users[u["name"]] = {**u, "is_admin": False}
    for rnd in range(5):
        project = f"r{rnd}"
        db.create_project(engine, project, "pairwise", pair_records(3), overlap=overlap, assign=list(names))
        barrier = threading.Barrier(len(names))

        def fetch(name, project=project, barrier=barrier):
            barrier.wait()
            it = db.next_item(engine, project, users[name])["item"]
            return None if it is None else it["id"]

        with cf.ThreadPoolExecutor(len(names)) as pool:
            got = list(pool.map(fetch, names))
        served = [i for i in got if i is not None]
        holders = {i: served.count(i) for i in set(served)}
        assert len(served) == 3 * overlap and sorted(holders.values()) == [overlap] * 3, (rnd, got)
        with engine.connect() as conn:  # the stored leases agree with what was served
            leases = conn.execute(sa.text(
                "SELECT v.item_id, count(*) FROM views v JOIN items i ON i.id = v.item_id JOIN projects p "
                "ON p.id = i.project_id WHERE p.name = :p GROUP BY v.item_id"), {"p": project}).all()
        assert dict(map(tuple, leases)) == holders
    engine.dispose()

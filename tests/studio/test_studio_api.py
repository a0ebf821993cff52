"""The studio's HTTP API through FastAPI's TestClient: auth (401/403, nothing written), labels of every
kind mapped back through the order shown, retries, undo, resume, overlap, escaping."""

import time

import pytest
from studio_helpers import auth, count, pair_rows, studio

from rlhfkit.studio import db

TestClient = pytest.importorskip("fastapi.testclient").TestClient


@pytest.fixture
def app(tmp_path):
    from rlhfkit.studio.server import create_app

    engine, tokens = studio(tmp_path, annotators=("ann", "ann2"), overlap=2)
    client = TestClient(create_app(engine))
    yield engine, tokens, client
    engine.dispose()


def writes(engine):
    return tuple(count(engine, t) for t in (db.labels, db.views, db.users, db.projects, db.items, db.assignments))


def calls(item_id):
    return [("GET", "/api/projects/p", None), ("GET", "/api/projects/p/next", None),
            ("POST", f"/api/projects/p/items/{item_id}/label", {"choice": "A"}),
            ("POST", f"/api/projects/p/items/{item_id}/skip", {}), ("POST", "/api/projects/p/undo", None)]


ADMIN_CALLS = [("GET", "/api/admin/projects/p/progress", None), ("GET", "/api/admin/projects/p/export", None),
               ("POST", "/api/admin/users", {"name": "mallory", "admin": True}),
               ("POST", "/api/admin/projects", {"name": "q", "kind": "pairwise", "rows": pair_rows(2)}),
               ("POST", "/api/admin/projects/p/assign", {"users": ["outsider"]})]


def test_missing_wrong_or_expired_token_is_401_and_writes_nothing(app):
    engine, tokens, c = app
    expired = db.add_user(engine, "old", expires_days=1e-9)
    db.assign_users(engine, "p", ["old"])
    time.sleep(0.01)
    before = writes(engine)
    for headers in ({}, auth("not-a-token"), auth(tokens["ann"] + "x"), auth(expired), {"Authorization": "Basic abc"}):
        for method, path, body in calls(1) + ADMIN_CALLS + [("GET", "/api/me", None), ("GET", "/items/1?project=p", None)]:
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
    # a body that is not even JSON: still 401 (authentication comes first)
    r = c.post("/api/projects/p/items/1/label", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401
    assert writes(engine) == before
    assert c.post("/api/login", json={"token": expired}).status_code == 401


def test_unassigned_annotator_is_403_and_writes_nothing(app):
    engine, tokens, c = app
    before = writes(engine)
    for method, path, body in calls(1) + [("GET", "/items/1?project=p", None)]:
        r = c.request(method, path, json=body, headers=auth(tokens["outsider"]))
        assert r.status_code == 403, (path, r.text)
    for method, path, body in ADMIN_CALLS:  # an annotator is not an admin
        assert c.request(method, path, json=body, headers=auth(tokens["ann"])).status_code == 403
    assert writes(engine) == before
    assert c.get("/api/projects", headers=auth(tokens["outsider"])).json() == {"projects": []}
    assert [p["name"] for p in c.get("/api/projects", headers=auth(tokens["ann"])).json()["projects"]] == ["p"]


def test_label_of_a_shown_position_is_stored_against_the_stored_response(app):
    engine, tokens, c = app
    stored = {it["id"]: it["responses"] for it in db.project_labels(engine, "p")[1]}
    orders = []
    while True:
        nxt = c.get("/api/projects/p/next", headers=auth(tokens["ann"])).json()
        if nxt["item"] is None:
            break
        it = nxt["item"]
        assert sorted(it["responses"]) == sorted(stored[it["id"]])  # a permutation of the stored ones
        # a reload before labelling serves the same item in the same order (resume)
        assert c.get("/api/projects/p/next", headers=auth(tokens["ann"])).json()["item"] == it
        r = c.post(f"/api/projects/p/items/{it['id']}/label", json={"choice": "B", "strength": 3},
                   headers=auth(tokens["ann"]))
        assert r.status_code == 201, r.text
        lab = r.json()["label"]
        assert lab["value"]["winner"] == stored[it["id"]].index(it["responses"][1])
        assert lab["value"]["position"] == "B" and lab["value"]["strength"] == 3
        assert [stored[it["id"]][j] for j in lab["shown_order"]] == it["responses"]
        orders.append(tuple(lab["shown_order"]))
    assert len(orders) == 6 and len(set(orders)) == 2  # both orders occur over the items (seeded)
    assert nxt["done"] == 6 and nxt["total"] == 6


def test_retry_is_stored_once_a_different_label_conflicts_undo_and_resume(app):
    engine, tokens, c = app
    h = auth(tokens["ann"])
    first = c.get("/api/projects/p/next", headers=h).json()["item"]
    body = {"choice": "tie", "idempotency_key": "abc", "rationale": "same"}
    assert c.post(f"/api/projects/p/items/{first['id']}/label", json=body, headers=h).status_code == 201
    again = c.post(f"/api/projects/p/items/{first['id']}/label", json=body, headers=h)
    assert again.status_code == 200 and again.json()["created"] is False
    # without a key the same value is recognised as the same label too
    no_key = c.post(f"/api/projects/p/items/{first['id']}/label", json={"choice": "tie", "rationale": "same"},
                    headers=h)
    assert no_key.status_code == 200
    conflict = c.post(f"/api/projects/p/items/{first['id']}/label", json={"choice": "A"}, headers=h)
    assert conflict.status_code == 409 and "undo" in conflict.json()["detail"]
    assert count(engine, db.labels) == 1
    second = c.get("/api/projects/p/next", headers=h).json()["item"]
    assert second["id"] != first["id"]
    assert c.post(f"/api/projects/p/items/{second['id']}/skip", json={}, headers=h).status_code == 201
    third = c.get("/api/projects/p/next", headers=h).json()["item"]
    assert third["id"] not in (first["id"], second["id"])
    # undo removes the last one (the skip) and serves that item again, in the same order
    assert c.post("/api/projects/p/undo", headers=h).json() == {"undone_item": second["id"]}
    assert c.get("/api/projects/p/next", headers=h).json()["item"] == second
    assert c.post("/api/projects/p/undo", headers=h).json() == {"undone_item": first["id"]}
    assert count(engine, db.labels) == 0
    assert c.post("/api/projects/p/undo", headers=h).json() == {"undone_item": None}


def test_invalid_labels_are_422_naming_the_field_and_write_nothing(app):
    engine, tokens, c = app
    h = auth(tokens["ann"])
    iid = c.get("/api/projects/p/next", headers=h).json()["item"]["id"]
    before = writes(engine)
    for body, field in [({"choice": "C"}, "choice"), ({}, "choice"), ({"choice": "A", "strength": 4}, "strength"),
                        ({"choice": "A", "strength": True}, "strength"),
                        ({"choice": "A", "rationale": "x" * 10001}, "rationale"),
                        ({"choice": "A", "idempotency_key": "k" * 101}, "idempotency_key")]:
        r = c.post(f"/api/projects/p/items/{iid}/label", json=body, headers=h)
        assert r.status_code == 422 and f"'{field}'" in r.json()["detail"], (body, r.text)
    assert c.post("/api/projects/p/items/99999/label", json={"choice": "A"}, headers=h).status_code == 404
    assert c.get("/api/projects/nope/next", headers=h).status_code == 404
    assert writes(engine) == before


@pytest.mark.parametrize("kind,field,shown_values", [
    ("ranking", "ranks", [2, 1, 2]), ("thumbs", "thumbs", [True, False, False]), ("rating", "ratings", [7, 1, 4])])
def test_list_labels_are_stored_in_stored_order(tmp_path, kind, field, shown_values):
    from rlhfkit.studio.server import create_app

    recs = [{"prompt": f"q{i}", "responses": [f"r{i}-a", f"r{i}-b", f"r{i}-c"]} for i in range(8)]
    engine, tokens = studio(tmp_path, kind, recs)
    c = TestClient(create_app(engine))
    h = auth(tokens["ann"])
    identity = 0
    for _ in range(8):
        it = c.get("/api/projects/p/next", headers=h).json()["item"]
        r = c.post(f"/api/projects/p/items/{it['id']}/label", json={field: shown_values}, headers=h)
        assert r.status_code == 201, r.text
        stored = recs[it["position"]]["responses"]
        expect = [shown_values[it["responses"].index(s)] for s in stored]
        assert r.json()["label"]["value"] == {field: expect}
        identity += it["responses"] == stored
    assert identity < 8
    bad = {"ranking": [1, 2, 4], "thumbs": [1, 0, 1], "rating": [0, 3, 3]}[kind]
    c.post("/api/projects/p/undo", headers=h)
    it = c.get("/api/projects/p/next", headers=h).json()["item"]
    for body in ({field: bad}, {field: shown_values[:2]}, {field: "x"}):
        r = c.post(f"/api/projects/p/items/{it['id']}/label", json=body, headers=h)
        assert r.status_code == 422 and f"'{field}'" in r.json()["detail"]
    engine.dispose()


def test_overlap_serves_each_item_to_that_many_annotators(tmp_path):
    from rlhfkit.studio.server import create_app

    engine, tokens = studio(tmp_path, annotators=("a", "b", "c"), overlap=2)
    c = TestClient(create_app(engine))
    served = {}
    for who in ("a", "b", "c"):
        served[who] = []
        while (it := c.get("/api/projects/p/next", headers=auth(tokens[who])).json()["item"]) is not None:
            served[who].append(it["id"])
            c.post(f"/api/projects/p/items/{it['id']}/label", json={"choice": "A"}, headers=auth(tokens[who]))
    assert len(served["a"]) == 6 and len(served["b"]) == 6 and served["c"] == []
    # a skip frees a place: c gets that item
    assert c.post("/api/projects/p/undo", headers=auth(tokens["b"])).status_code == 200
    last = c.get("/api/projects/p/next", headers=auth(tokens["b"])).json()["item"]["id"]
    c.post(f"/api/projects/p/items/{last}/skip", json={}, headers=auth(tokens["b"]))
    assert c.get("/api/projects/p/next", headers=auth(tokens["c"])).json()["item"]["id"] == last
    engine.dispose()


def test_served_but_unlabelled_items_hold_their_place(tmp_path):
    from rlhfkit.studio.server import create_app

    engine, tokens = studio(tmp_path, annotators=("a", "b"), overlap=1)
    c = TestClient(create_app(engine))
    first_a = c.get("/api/projects/p/next", headers=auth(tokens["a"])).json()["item"]["id"]
    first_b = c.get("/api/projects/p/next", headers=auth(tokens["b"])).json()["item"]["id"]
    assert first_a != first_b
    engine.dispose()


def test_time_per_item_is_measured_from_serving(app):
    engine, tokens, c = app
    h = auth(tokens["ann"])
    it = c.get("/api/projects/p/next", headers=h).json()["item"]
    time.sleep(0.25)
    lab = c.post(f"/api/projects/p/items/{it['id']}/label", json={"choice": "A"}, headers=h).json()["label"]
    assert 0.25 <= lab["seconds"] < 10


def test_script_in_a_response_is_text_in_every_rendering(tmp_path):
    from rlhfkit.studio.server import create_app

    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    engine, tokens = studio(tmp_path, records=[{"prompt": "<b>hi</b>", "responses": [evil, "fine"]}])
    c = TestClient(create_app(engine))
    h = auth(tokens["ann"])
    r = c.get("/api/projects/p/next", headers=h)
    assert r.headers["content-type"].startswith("application/json")
    assert evil in r.json()["item"]["responses"]  # data, exactly as stored, in a JSON body
    page = c.get(f"/items/{r.json()['item']['id']}?project=p", headers=h)
    assert page.headers["content-type"].startswith("text/html")
    assert "<script>" not in page.text and "<img" not in page.text and "<b>hi" not in page.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "&lt;b&gt;hi&lt;/b&gt;" in page.text
    # the pages carry no data; their script writes text only through textContent
    for path in ("/", "/label", "/admin"):
        p = c.get(path)
        assert p.status_code == 200 and "script-src 'self'" in p.headers["content-security-policy"]
        assert "<script>" not in p.text  # only <script src=...>
    js = c.get("/static/app.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js
    assert "textContent" in js
    assert c.get("/static/../db.py").status_code == 404
    engine.dispose()


def test_login_sets_an_httponly_cookie_that_authenticates(app):
    engine, tokens, c = app
    r = c.post("/api/login", json={"token": tokens["ann"]})
    assert r.status_code == 200 and r.json()["name"] == "ann" and r.json()["is_admin"] is False
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/api/projects/p/next").status_code == 200  # the client keeps the cookie
    assert c.post("/api/logout").status_code == 204
    c.cookies.clear()
    assert c.get("/api/projects/p/next").status_code == 401
    assert c.post("/api/login", json={"token": "wrong"}).status_code == 401


def test_tokens_are_stored_only_as_hashes(app):
    import sqlalchemy as sa

    engine, tokens, _ = app
    with engine.connect() as conn:
        stored = [r.token_hash for r in conn.execute(sa.select(db.users.c.token_hash))]
    assert not set(tokens.values()) & set(stored)
    import hashlib
    assert hashlib.sha256(tokens["ann"].encode()).hexdigest() in stored


def test_admin_progress_and_api_projects(app):
    engine, tokens, c = app
    for who in ("ann", "ann2"):
        h = auth(tokens[who])
        for _ in range(3):
            it = c.get("/api/projects/p/next", headers=h).json()["item"]
            c.post(f"/api/projects/p/items/{it['id']}/label", json={"choice": "A"}, headers=h)
    it = c.get("/api/projects/p/next", headers=auth(tokens["ann"])).json()["item"]
    c.post(f"/api/projects/p/items/{it['id']}/skip", json={}, headers=auth(tokens["ann"]))
    prog = c.get("/api/admin/projects/p/progress", headers=auth(tokens["boss"])).json()
    assert prog["items"] == 6 and prog["items_done"] == 3 and prog["labels"] == 6
    assert prog["annotators"]["ann"]["labels"] == 3 and prog["annotators"]["ann"]["skips"] == 1
    assert prog["annotators"]["ann2"]["labels"] == 3
    ag = prog["agreement"]
    assert ag["available"] in (True, False) and (ag["available"] or "reason" in ag)
    exp = c.get("/api/admin/projects/p/export?format=unpaired", headers=auth(tokens["boss"])).json()
    winners = {}
    for lab in db.project_labels(engine, "p")[2]:
        if not lab["skipped"]:
            winners.setdefault(lab["item_id"], set()).add(lab["value"]["winner"])
    agreed = sum(len(w) == 1 for w in winners.values())  # both chose the same stored response
    assert exp["stats"]["rows"] == len(exp["rows"]) == 2 * agreed
    # the admin API creates users and projects (what an online labeller uses)
    r = c.post("/api/admin/users", json={"name": "newbie"}, headers=auth(tokens["boss"]))
    assert r.status_code == 201
    new = r.json()["token"]
    body = {"name": "q", "kind": "pairwise", "rows": pair_rows(3), "overlap": 1, "assign": ["newbie"]}
    assert c.post("/api/admin/projects", json=body, headers=auth(tokens["boss"])).status_code == 201
    assert c.get("/api/projects/q/next", headers=auth(new)).json()["item"]["position"] == 0
    bad = dict(body, name="r", filename="mine.jsonl", rows=pair_rows(1) + [{"prompt": "x", "chosen": "a", "rejected": " "}])
    r = c.post("/api/admin/projects", json=bad, headers=auth(tokens["boss"]))
    assert r.status_code == 422 and r.json()["detail"] == "mine.jsonl, row 1, field 'rejected': empty completion"
    r = c.post("/api/admin/projects", json=dict(bad, rows=[1, 2]), headers=auth(tokens["boss"]))
    assert r.status_code == 422 and r.json()["detail"].startswith("mine.jsonl, row 0: row is a int")
    assert c.post("/api/admin/projects", json=body, headers=auth(tokens["boss"])).status_code == 422  # name taken

"""The studio under a real uvicorn on loopback: 8 annotators labelling at once, and a server killed
with SIGKILL mid-labelling and restarted on the same SQLite file."""

import concurrent.futures as cf
import os
import signal
import sqlite3
import threading
import time

import httpx
import pytest
from studio_helpers import auth, live_server, start_subprocess_server, studio

from rlhfkit.studio import db

N_ANNOTATORS = 8
ITEMS = 24
OVERLAP = 3


def labels_in_db(path: str) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT l.item_id, u.name, l.value, l.idem_key FROM labels l JOIN users u "
                           "ON u.id = l.user_id WHERE l.skipped = 0").fetchall()
    finally:
        con.close()


def test_eight_annotators_at_once_every_label_stored_exactly_once(tmp_path):
    names = tuple(f"a{i}" for i in range(N_ANNOTATORS))
    recs = [{"prompt": f"q{i}", "responses": [f"x{i}", f"y{i}"]} for i in range(ITEMS)]
    engine, tokens = studio(tmp_path, records=recs, annotators=names, overlap=OVERLAP)
    # two annotators post the same first item at the same moment: both must land
    first_item = 1
    with live_server(engine) as url:
        barrier = threading.Barrier(N_ANNOTATORS)

        def annotate(name):
            sent = []
            with httpx.Client(base_url=url, headers=auth(tokens[name]), timeout=30) as c:
                barrier.wait()
                while True:
                    r = c.get("/api/projects/p/next")
                    assert r.status_code == 200, r.text
                    it = r.json()["item"]
                    if it is None:
                        return sent
                    choice = "AB"[(it["id"] + len(name)) % 2] if it["id"] != first_item else "A"
                    body = {"choice": choice, "idempotency_key": f"{name}-{it['id']}"}
                    r = c.post(f"/api/projects/p/items/{it['id']}/label", json=body)
                    assert r.status_code == 201, r.text
                    # a client retry (lost response) must not store it twice
                    assert c.post(f"/api/projects/p/items/{it['id']}/label", json=body).status_code == 200
                    sent.append((it["id"], name, f"{name}-{it['id']}"))

        with cf.ThreadPoolExecutor(N_ANNOTATORS) as pool:
            results = list(pool.map(annotate, names))
    engine.dispose()
    sent = [s for r in results for s in r]
    stored = labels_in_db(str(tmp_path / "studio" / "studio.db"))
    assert sorted((i, n, k) for i, n, _, k in stored) == sorted(sent)
    assert len(set(sent)) == len(sent) == ITEMS * OVERLAP  # every item got exactly `overlap` annotators
    per_item = {}
    for i, n, _, _ in stored:
        per_item.setdefault(i, set()).add(n)
    assert all(len(v) == OVERLAP for v in per_item.values()) and len(per_item) == ITEMS
    assert sum(1 for r in results if r) >= 2  # the work was spread over several annotators


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_labelling_then_restart_loses_and_duplicates_nothing(tmp_path):
    recs = [{"prompt": f"q{i}", "responses": [f"x{i}", f"y{i}"]} for i in range(40)]
    engine, tokens = studio(tmp_path, records=recs, annotators=("a", "b"), overlap=1)
    engine.dispose()
    directory = str(tmp_path / "studio")
    acked: dict[str, set] = {"a": set(), "b": set()}
    pending: dict[str, tuple | None] = {"a": None, "b": None}
    stop = threading.Event()

    def annotate(name, url, until_stop=True):
        """Label until the server dies (or there is nothing left); a request whose answer was lost
        stays pending and is retried with the same idempotency key after the restart."""
        with httpx.Client(base_url=url, headers=auth(tokens[name]), timeout=10) as c:
            while not (until_stop and stop.is_set()):
                try:
                    if pending[name] is not None:
                        iid, body = pending[name]
                    else:
                        it = c.get("/api/projects/p/next").json()["item"]
                        if it is None:
                            return
                        iid, body = it["id"], {"choice": "A", "idempotency_key": f"{name}-{it['id']}"}
                        pending[name] = (iid, body)
                    r = c.post(f"/api/projects/p/items/{iid}/label", json=body)
                    assert r.status_code in (200, 201), r.text
                    acked[name].add((iid, body["idempotency_key"]))
                    pending[name] = None
                except httpx.TransportError:
                    return  # the server is gone

    proc, url = start_subprocess_server(directory)
    assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
    try:
        threads = [threading.Thread(target=annotate, args=(n, url)) for n in ("a", "b")]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while sum(map(len, acked.values())) < 8 and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # while both annotators are posting
        proc.wait(10)
        for t in threads:
            t.join(15)
        before_restart = sum(map(len, acked.values()))
        assert 8 <= before_restart < 40
        con = sqlite3.connect(os.path.join(directory, "studio.db"))
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        con.close()
        proc, url = start_subprocess_server(directory)
        for n in ("a", "b"):  # finish, retrying what was in flight
            annotate(n, url, until_stop=False)
    finally:
        proc.kill()
        proc.wait(10)
    stored = labels_in_db(os.path.join(directory, "studio.db"))
    keys = [(i, k) for i, _, _, k in stored]
    assert len(keys) == len(set(keys)) == 40  # every item once, none twice
    assert set(keys) == acked["a"] | acked["b"]  # everything acknowledged is there
    assert pending == {"a": None, "b": None}
    engine = db.open_db(directory)
    assert db.next_item(engine, "p", db.user_for_token(engine, tokens["a"]))["item"] is None
    engine.dispose()

"""Shared set-up of the studio tests: a studio with users and a project, a live server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the studio's optional packages are not installed")
pytest.importorskip("sqlalchemy", reason="the studio's optional packages are not installed")

from rlhfkit.studio import db  # noqa: E402

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def pair_rows(n: int, evil: str | None = None) -> list[dict]:
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
            for i in range(n)]
    if evil is not None:
        rows[0]["chosen"] = evil
    return rows


def studio(tmp_path, kind="pairwise", records=None, *, overlap=1, annotators=("ann",), seed=0, name="p"):
    """(engine, {name: token}) with an admin 'boss', the annotators assigned to project ``name``
    and an unassigned 'outsider'."""
    engine = db.open_db(str(tmp_path / "studio"))
    tokens = {"boss": db.add_user(engine, "boss", admin=True)}
    for a in (*annotators, "outsider"):
        tokens[a] = db.add_user(engine, a)
    if records is None:
        records = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]]} for r in pair_rows(6)]
    db.create_project(engine, name, kind, records, guidelines="Prefer correct sums.", overlap=overlap,
                      assign=list(annotators), seed=seed)
    return engine, tokens


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def count(engine, table) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


@contextlib.contextmanager
def live_server(engine):
    """The app under a real uvicorn on 127.0.0.1, an ephemeral port; yields the base URL."""
    import uvicorn

    from rlhfkit.studio.server import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", access_log=False))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not t.is_alive():
            raise RuntimeError("the studio server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)
        sock.close()


def start_subprocess_server(directory: str) -> tuple[subprocess.Popen, str]:
    """``rlhfkit studio serve --dir DIR --port 0`` as a child process; (process, base URL)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(SRC)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cli", "studio", "serve", "--dir", directory,
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("server did not start: " + proc.stderr.read()[-2000:])
    return proc, json.loads(line)["studio"]

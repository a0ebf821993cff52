"""The studio's storage: SQLAlchemy Core tables, schema versions and every read/write.

SQLite by default (``studio.db`` in the project dir: WAL journal, a 30 s busy timeout, every
transaction ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing), or any
SQLAlchemy URL (``postgresql://...``: psycopg 3 when psycopg2 is not installed). Only portable
SQLAlchemy types and constructs are used; the pragmas are issued for the SQLite dialect alone.
Where SQLite's write lock does not serialise writers (PostgreSQL), serving a fresh item locks its
project's row first, so an item is never served past its overlap (see :func:`next_item`).

Each public write function runs in one transaction (``engine.begin()``): a process killed in
the middle leaves either the whole write or none of it.

Schema versions: ``schema_version`` holds one row. :data:`MIGRATIONS` maps a version to the
function that brings a database from the previous version to it (version 1 creates the
tables). Opening a database applies the missing steps in order, each in its own transaction;
a database written by a newer rlhfkit (a higher version) is refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import time
from typing import Any, Callable

from ..errors import RlhfkitError

try:
    import sqlalchemy as sa
except ImportError as e:  # pragma: no cover - the optional extra is missing
    raise RlhfkitError("rlhfkit studio needs its optional packages: pip install 'rlhfkit[studio]'") from e

KINDS = ("pairwise", "ranking", "thumbs", "rating")
DB_FILE = "studio.db"
LEASE_SECONDS = 30 * 60
"""An item served to an annotator counts towards its overlap for this long without a label."""


class StudioError(RlhfkitError):
    """A studio request or command that cannot be carried out (its message says why)."""


class SchemaError(StudioError):
    """The database's schema version is not one this rlhfkit can use."""


metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True))

projects = sa.Table(
    "projects", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("guidelines", sa.Text, nullable=False, default=""),
    sa.Column("overlap", sa.Integer, nullable=False, default=1),
    sa.Column("seed", sa.Integer, nullable=False, default=0),
    sa.Column("source", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False))

assignments = sa.Table(
    "assignments", metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True))

items = sa.Table(
    "items", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),          # JSON: a string or a list of messages
    sa.Column("responses", sa.Text, nullable=False),       # JSON: list of strings / message lists
    sa.Column("meta", sa.Text, nullable=False, default="{}"),
    sa.Column("gold", sa.Text, nullable=True),             # JSON label value, for hidden gold items
    sa.UniqueConstraint("project_id", "position", name="uq_items_position"))

views = sa.Table(
    "views", metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("shown_at", sa.Float, nullable=False))

labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("skipped", sa.Boolean, nullable=False, default=False),
    sa.Column("value", sa.Text, nullable=True),            # JSON, in the items' stored response order
    sa.Column("shown_order", sa.Text, nullable=False),     # JSON: stored index shown at each position
    sa.Column("rationale", sa.Text, nullable=False, default=""),
    sa.Column("seconds", sa.Float, nullable=True),
    sa.Column("idem_key", sa.String(100), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("item_id", "user_id", name="uq_labels_item_user"),
    sa.Index("ix_labels_project", "project_id"))


# --------------------------------------------------------------------------- engine and schema

def _create_v1(conn) -> None:
    metadata.create_all(conn, tables=[users, projects, assignments, items, views, labels])


SCHEMA_VERSION = 1
MIGRATIONS: dict[int, Callable] = {1: _create_v1}
"""version -> step bringing a database at ``version - 1`` to ``version`` (0 = empty database)."""


def resolve_url(directory: str | None = None, url: str | None = None) -> str:
    """The database URL: ``url`` if given, else SQLite ``DIR/studio.db``."""
    if url:
        return url
    if not directory:
        raise StudioError("give the studio directory (--dir DIR) or a database URL (--db URL)")
    os.makedirs(directory, exist_ok=True)
    return "sqlite:///" + os.path.abspath(os.path.join(directory, DB_FILE))


def _with_driver(url: str) -> str:
    """``postgresql://`` names SQLAlchemy's default driver (psycopg2); when only psycopg 3 is
    installed (the ``studio`` extra's), the URL is given that driver instead."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + rest
    return url


def make_engine(url: str):
    """An engine for ``url``; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE``."""
    try:
        engine = sa.create_engine(_with_driver(url), future=True, pool_pre_ping=not url.startswith("sqlite"))
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
        raise StudioError(f"cannot use database URL {url!r}: {e}") from e
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # transactions are begun explicitly below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # a write transaction takes the write lock at the start: a deferred one that reads and
            # then writes can fail at once (SQLITE_BUSY_SNAPSHOT) instead of waiting for the other
            # writer; read-only ones (see reading()) read a snapshot without the lock
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("studio_read") else "BEGIN IMMEDIATE")
    return engine


def reading(engine):
    """A connection for reads only (no write lock on SQLite)."""
    return engine.connect().execution_options(studio_read=True)


def current_version(conn) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    v = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    return int(v or 0)


def migrate(engine) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` (refusing a newer one); returns the version."""
    with engine.begin() as conn:
        version = current_version(conn)
    target = max(MIGRATIONS)
    if version > target:
        raise SchemaError(f"the studio database is at schema version {version}, newer than this rlhfkit "
                          f"supports ({target}); upgrade rlhfkit to open it (nothing was changed)")
    while version < target:
        step = version + 1
        with engine.begin() as conn:  # one transaction per step
            if current_version(conn) != version:  # another process migrated meanwhile
                version = current_version(conn)
                continue
            MIGRATIONS[step](conn)
            if version == 0:
                schema_version.create(conn, checkfirst=True)
                conn.execute(schema_version.insert().values(version=step))
            else:
                conn.execute(schema_version.update().values(version=step))
        version = step
    return version


def open_db(directory: str | None = None, url: str | None = None):
    """Engine for a studio, schema created or migrated."""
    engine = make_engine(resolve_url(directory, url))
    try:
        migrate(engine)
    except sa.exc.OperationalError as e:
        raise StudioError(f"cannot open the studio database: {e.orig}") from e
    return engine


# --------------------------------------------------------------------------- users

def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(engine, name: str, *, admin: bool = False, expires_days: float | None = None) -> str:
    """Create a user; returns the token (stored only as its hash)."""
    name = (name or "").strip()
    if not name or len(name) > 100 or any(c in name for c in ",\n\r\t"):
        raise StudioError(f"user name {name!r} must be 1-100 characters without commas or line breaks")
    token = secrets.token_urlsafe(24)
    now = time.time()
    with engine.begin() as conn:
        if conn.execute(sa.select(users.c.id).where(users.c.name == name)).first():
            raise StudioError(f"user '{name}' already exists")
        conn.execute(users.insert().values(
            name=name, token_hash=hash_token(token), is_admin=bool(admin), created_at=now,
            expires_at=None if expires_days is None else now + expires_days * 86400))
    return token


def user_for_token(engine, token: str | None) -> dict | None:
    """The user a token belongs to, or None (unknown or expired token)."""
    if not token:
        return None
    with reading(engine) as conn:
        row = conn.execute(sa.select(users).where(users.c.token_hash == hash_token(token))).mappings().first()
    if row is None or (row["expires_at"] is not None and row["expires_at"] < time.time()):
        return None
    return dict(row)


def list_users(engine) -> list[dict]:
    with reading(engine) as conn:
        return [dict(r) for r in conn.execute(
            sa.select(users.c.id, users.c.name, users.c.is_admin, users.c.expires_at).order_by(users.c.id)).mappings()]


# --------------------------------------------------------------------------- projects and items

def create_project(engine, name: str, kind: str, records: list[dict], *, guidelines: str = "",
                   overlap: int = 1, assign: list[str] = (), seed: int = 0, source: str = "") -> int:
    """A project with its items, in one transaction. ``records``: ``{"prompt", "responses",
    "meta"?, "gold"?}`` each (see :mod:`rlhfkit.studio.importers`)."""
    if kind not in KINDS:
        raise StudioError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if not name or len(name) > 100 or "/" in name or "::" in name or name.strip() != name:
        raise StudioError(f"project name {name!r} must be 1-100 characters without '/', '::' or edge spaces")
    if not isinstance(overlap, int) or overlap < 1:
        raise StudioError(f"overlap must be an integer >= 1 (got {overlap!r})")
    if not records:
        raise StudioError("a project needs at least one item")
    with engine.begin() as conn:
        if conn.execute(sa.select(projects.c.id).where(projects.c.name == name)).first():
            raise StudioError(f"project '{name}' already exists")
        uids = []
        for who in assign:
            uid = conn.execute(sa.select(users.c.id).where(users.c.name == who)).scalar()
            if uid is None:
                raise StudioError(f"cannot assign unknown user '{who}' (add it with: rlhfkit studio user add {who})")
            uids.append(uid)
        pid = conn.execute(projects.insert().values(
            name=name, kind=kind, guidelines=guidelines, overlap=overlap, seed=seed, source=source,
            created_at=time.time())).inserted_primary_key[0]
        conn.execute(items.insert(), [
            {"project_id": pid, "position": i, "prompt": json.dumps(r["prompt"]),
             "responses": json.dumps(r["responses"]), "meta": json.dumps(r.get("meta") or {}),
             "gold": None if r.get("gold") is None else json.dumps(r["gold"])}
            for i, r in enumerate(records)])
        if uids:
            conn.execute(assignments.insert(), [{"project_id": pid, "user_id": u} for u in dict.fromkeys(uids)])
    return pid


def assign_users(engine, project: str, names: list[str]) -> None:
    with engine.begin() as conn:
        p = _project(conn, project)
        for who in names:
            uid = conn.execute(sa.select(users.c.id).where(users.c.name == who)).scalar()
            if uid is None:
                raise StudioError(f"unknown user '{who}'")
            if not conn.execute(sa.select(assignments).where(
                    (assignments.c.project_id == p["id"]) & (assignments.c.user_id == uid))).first():
                conn.execute(assignments.insert().values(project_id=p["id"], user_id=uid))


def _project(conn, name: str) -> dict:
    row = conn.execute(sa.select(projects).where(projects.c.name == name)).mappings().first()
    if row is None:
        raise StudioError(f"no project named '{name}'")
    return dict(row)


def get_project(engine, name: str) -> dict:
    with reading(engine) as conn:
        return _project(conn, name)


def is_assigned(engine, project_id: int, user: dict) -> bool:
    if user["is_admin"]:
        return True
    with reading(engine) as conn:
        return conn.execute(sa.select(assignments).where(
            (assignments.c.project_id == project_id) & (assignments.c.user_id == user["id"]))).first() is not None


def list_projects(engine, user: dict | None = None) -> list[dict]:
    """Projects (all for an admin or ``None``, else the user's assignments) with item counts."""
    q = sa.select(projects.c.id, projects.c.name, projects.c.kind, projects.c.overlap,
                  sa.select(sa.func.count()).where(items.c.project_id == projects.c.id).scalar_subquery().label("items"))
    if user is not None and not user["is_admin"]:
        q = q.join(assignments, assignments.c.project_id == projects.c.id).where(assignments.c.user_id == user["id"])
    with reading(engine) as conn:
        return [dict(r) for r in conn.execute(q.order_by(projects.c.id)).mappings()]


def shown_order(seed: int, user_id: int, item_id: int, n: int) -> list[int]:
    """The stored response index shown at each position: a permutation fixed by
    (project seed, annotator, item), so a reload shows the same order."""
    rng = random.Random(f"{seed}:{user_id}:{item_id}")
    order = list(range(n))
    rng.shuffle(order)
    return order


def _item_out(row, project: dict, user_id: int) -> dict:
    responses = json.loads(row["responses"])
    order = shown_order(project["seed"], user_id, row["id"], len(responses))
    return {"id": row["id"], "position": row["position"], "prompt": json.loads(row["prompt"]),
            "responses": [responses[j] for j in order]}


def _retry_race(fn):
    """Run a write again when a concurrent one won a unique-key race (the same annotator's two
    requests at once on a database without SQLite's write lock): the second run sees the first's row."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(3):
            try:
                return fn(*args, **kwargs)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
    return wrapper


def next_item_queries(project_id: int, user_id: int, overlap: int, now: float):
    """(resume, fresh) SELECTs of :func:`next_item`: the first item served to the user and not
    labelled yet; else the first item the user has not seen whose labels (skips excluded) plus
    open leases of other annotators are fewer than ``overlap``."""
    mine_labelled = sa.select(labels.c.item_id).where(labels.c.user_id == user_id)
    resume = (sa.select(items).join(views, (views.c.item_id == items.c.id) & (views.c.user_id == user_id))
              .where(items.c.project_id == project_id).where(items.c.id.not_in(mine_labelled))
              .order_by(items.c.position).limit(1))
    holders_labels = (sa.select(sa.func.count()).select_from(labels).where(
        (labels.c.item_id == items.c.id) & (labels.c.skipped == sa.false())).scalar_subquery())
    holders_views = (sa.select(sa.func.count()).select_from(views).where(
        (views.c.item_id == items.c.id) & (views.c.shown_at > now - LEASE_SECONDS)
        & ~sa.exists().where((labels.c.item_id == views.c.item_id) & (labels.c.user_id == views.c.user_id))
    ).scalar_subquery())
    seen = sa.select(views.c.item_id).where(views.c.user_id == user_id)
    fresh = (sa.select(items).where(items.c.project_id == project_id)
             .where(items.c.id.not_in(mine_labelled)).where(items.c.id.not_in(seen))
             .where(holders_labels + holders_views < overlap)
             .order_by(items.c.position).limit(1))
    return resume, fresh


@_retry_race
def next_item(engine, project: str, user: dict) -> dict:
    """The annotator's next item: one served before and not labelled yet (resume), else the first
    item this annotator has not seen whose labels plus open leases are fewer than ``overlap``.
    Serving records a view (time per item starts here; the item counts towards its overlap)."""
    now = time.time()
    with engine.begin() as conn:
        p = _project(conn, project)
        uid = user["id"]
        resume, fresh = next_item_queries(p["id"], uid, p["overlap"], now)
        row = conn.execute(resume).mappings().first()
        if row is None:
            # choosing a fresh item counts other annotators' open leases, then adds one: two
            # annotators doing this at once must not both see the last free place. SQLite's write
            # lock (BEGIN IMMEDIATE) already serialises them; elsewhere (PostgreSQL) a row lock on
            # the project does (FOR NO KEY UPDATE: it does not block label inserts, whose foreign
            # key takes only a key-share lock). The count that follows sees every committed lease.
            conn.execute(sa.select(projects.c.id).where(projects.c.id == p["id"]).with_for_update(key_share=True))
            row = conn.execute(fresh).mappings().first()
            if row is not None:
                conn.execute(views.insert().values(item_id=row["id"], user_id=uid, shown_at=now))
        done = conn.execute(sa.select(sa.func.count()).select_from(labels).where(
            (labels.c.project_id == p["id"]) & (labels.c.user_id == uid))).scalar()
        total = conn.execute(sa.select(sa.func.count()).select_from(items).where(items.c.project_id == p["id"])).scalar()
        return {"item": None if row is None else _item_out(row, p, uid), "done": int(done), "total": int(total),
                "kind": p["kind"]}


def get_item(engine, project: dict, item_id: int, user: dict) -> dict:
    with reading(engine) as conn:
        row = conn.execute(sa.select(items).where(
            (items.c.id == item_id) & (items.c.project_id == project["id"]))).mappings().first()
    if row is None:
        raise StudioError(f"no item {item_id} in project '{project['name']}'")
    return _item_out(row, project, user["id"])


# --------------------------------------------------------------------------- labels

def _canonical(kind: str, body: dict, order: list[int]) -> dict:
    """The label in stored response order, from the positions the annotator saw; a StudioError
    names the field that is wrong."""
    n = len(order)

    def per_response(field: str, check) -> list:
        vals = body.get(field)
        if not isinstance(vals, list) or len(vals) != n:
            raise StudioError(f"field '{field}': expected a list of {n} values, one per shown response")
        for v in vals:
            check(v)
        out = [None] * n
        for pos, v in enumerate(vals):
            out[order[pos]] = v
        return out

    def bad(field, msg):
        raise StudioError(f"field '{field}': {msg}")

    if kind == "pairwise":
        choice = body.get("choice")
        if choice not in ("A", "B", "tie", "both_bad"):
            bad("choice", f"expected 'A', 'B', 'tie' or 'both_bad' (got {choice!r})")
        strength = body.get("strength")
        if strength is not None and (isinstance(strength, bool) or strength not in (1, 2, 3)):
            bad("strength", f"expected 1, 2 or 3 or null (got {strength!r})")
        winner = None if choice in ("tie", "both_bad") else order["AB".index(choice)]
        return {"outcome": "win" if winner is not None else choice, "winner": winner,
                "position": choice if winner is not None else None, "strength": strength}
    if kind == "ranking":
        def rank_ok(v):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= n:
                bad("ranks", f"each rank must be an integer in 1..{n} (got {v!r})")
        return {"ranks": per_response("ranks", rank_ok)}
    if kind == "thumbs":
        def thumb_ok(v):
            if not isinstance(v, bool):
                bad("thumbs", f"each value must be true (up) or false (down) (got {v!r})")
        return {"thumbs": per_response("thumbs", thumb_ok)}
    if kind == "rating":
        def rating_ok(v):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 7:
                bad("ratings", f"each rating must be an integer in 1..7 (got {v!r})")
        return {"ratings": per_response("ratings", rating_ok)}
    raise StudioError(f"unknown kind {kind!r}")  # pragma: no cover


class Conflict(StudioError):
    """The annotator already labelled this item differently (undo first)."""


@_retry_race
def add_label(engine, project: dict, item_id: int, user: dict, body: dict, *, skipped: bool = False) -> tuple[dict, bool]:
    """Store one label (or a skip); returns ``(label, created)``. Posting the same label again
    (the same ``idempotency_key``, or the same value) returns the stored one with ``created``
    False; a different label for an item already labelled is a :class:`Conflict`."""
    rationale = body.get("rationale") or ""
    if not isinstance(rationale, str) or len(rationale) > 10000:
        raise StudioError("field 'rationale': expected text of at most 10000 characters")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 100):
        raise StudioError("field 'idempotency_key': expected a string of 1-100 characters")
    now = time.time()
    with engine.begin() as conn:
        row = conn.execute(sa.select(items).where(
            (items.c.id == item_id) & (items.c.project_id == project["id"]))).mappings().first()
        if row is None:
            raise StudioError(f"no item {item_id} in project '{project['name']}'")
        order = shown_order(project["seed"], user["id"], item_id, len(json.loads(row["responses"])))
        value = None if skipped else _canonical(project["kind"], body, order)
        old = conn.execute(sa.select(labels).where(
            (labels.c.item_id == item_id) & (labels.c.user_id == user["id"]))).mappings().first()
        if old is not None:
            same = (key is not None and old["idem_key"] == key) or (
                bool(old["skipped"]) == skipped and old["value"] == (None if value is None else json.dumps(value)))
            if same:
                return _label_out(old), False
            raise Conflict(f"item {item_id} is already labelled by '{user['name']}'; undo it first to change it")
        shown = conn.execute(sa.select(views.c.shown_at).where(
            (views.c.item_id == item_id) & (views.c.user_id == user["id"]))).scalar()
        values = dict(project_id=project["id"], item_id=item_id, user_id=user["id"], skipped=skipped,
                      value=None if value is None else json.dumps(value), shown_order=json.dumps(order),
                      rationale=rationale, seconds=None if shown is None else max(0.0, now - shown),
                      idem_key=key, created_at=now)
        lid = conn.execute(labels.insert().values(**values)).inserted_primary_key[0]
        return _label_out({**values, "id": lid}), True


def _label_out(row) -> dict:
    return {"id": row["id"], "item_id": row["item_id"], "skipped": bool(row["skipped"]),
            "value": None if row["value"] is None else json.loads(row["value"]),
            "shown_order": json.loads(row["shown_order"]), "rationale": row["rationale"],
            "seconds": row["seconds"]}


def undo_last(engine, project: dict, user: dict) -> int | None:
    """Delete the annotator's most recent label in the project; the item is served next again.
    Returns its item id (None when there was nothing to undo)."""
    with engine.begin() as conn:
        last = conn.execute(sa.select(labels.c.id, labels.c.item_id).where(
            (labels.c.project_id == project["id"]) & (labels.c.user_id == user["id"]))
            .order_by(labels.c.created_at.desc(), labels.c.id.desc()).limit(1)).first()
        if last is None:
            return None
        conn.execute(labels.delete().where(labels.c.id == last.id))
        conn.execute(views.delete().where((views.c.item_id == last.item_id) & (views.c.user_id == user["id"])))
        conn.execute(views.insert().values(item_id=last.item_id, user_id=user["id"], shown_at=time.time()))
        return int(last.item_id)


def project_labels(engine, project: str) -> tuple[dict, list[dict], list[dict]]:
    """(project, items, labels with annotator names) of a project, for export and progress."""
    with reading(engine) as conn:
        p = _project(conn, project)
        its = [{"id": r["id"], "position": r["position"], "prompt": json.loads(r["prompt"]),
                "responses": json.loads(r["responses"]), "meta": json.loads(r["meta"]),
                "gold": None if r["gold"] is None else json.loads(r["gold"])}
               for r in conn.execute(sa.select(items).where(items.c.project_id == p["id"])
                                     .order_by(items.c.position)).mappings()]
        labs = [{**_label_out(r), "user": r["name"], "created_at": r["created_at"]}
                for r in conn.execute(sa.select(labels, users.c.name).join(users, users.c.id == labels.c.user_id)
                                      .where(labels.c.project_id == p["id"]).order_by(labels.c.id)).mappings()]
    return p, its, labs


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)

"""The studio's web server: FastAPI routes over :mod:`rlhfkit.studio.db`, and the static pages.

Authentication: ``Authorization: Bearer TOKEN`` on every ``/api`` call (or the ``studio_token``
cookie that ``POST /api/login`` sets for the browser pages: HttpOnly, SameSite=Strict). No token,
an unknown or an expired one: 401, and nothing is read or written. An annotator reaches only the
projects they are assigned to (403 otherwise); ``/api/admin/*`` needs an admin (403).

Every response body is JSON except the pages; the pages render all model/data text with
``textContent`` (never as HTML), and the one server-rendered view (``/items/ID``) escapes it.
"""

from __future__ import annotations

import html
import json
import os
import threading

from ..errors import DataError, RlhfkitError
from . import db

try:
    import uvicorn
    from fastapi import Body, Depends, FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
except ImportError as e:  # pragma: no cover - the optional extra is missing
    raise RlhfkitError("rlhfkit studio needs its optional packages: pip install 'rlhfkit[studio]'") from e

STATIC = os.path.join(os.path.dirname(__file__), "static")
COOKIE = "studio_token"


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE)


def create_app(engine) -> FastAPI:
    """The application over an opened (migrated) engine."""
    app = FastAPI(title="rlhfkit studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    open_paths = ("/api/login", "/api/logout", "/api/health")

    @app.middleware("http")
    async def _authenticate_first(request: Request, call_next):
        # 401 before anything else (a body is not even parsed) for every API call but sign-in
        if request.url.path.startswith("/api/") and request.url.path not in open_paths:
            u = await run_in_threadpool(db.user_for_token, engine, _token(request))
            if u is None:
                return JSONResponse({"detail": "missing, unknown or expired token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(db.Conflict)
    def _conflict(_request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(RlhfkitError)
    def _bad_request(_request, exc):
        status = 404 if str(exc).startswith("no project named") or str(exc).startswith("no item ") else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    def user(request: Request) -> dict:
        u = db.user_for_token(engine, _token(request))
        if u is None:
            raise HTTPException(401, "missing, unknown or expired token", headers={"WWW-Authenticate": "Bearer"})
        return u

    def admin(u: dict = Depends(user)) -> dict:
        if not u["is_admin"]:
            raise HTTPException(403, "this needs an admin account")
        return u

    def project_for(name: str, u: dict) -> dict:
        p = db.get_project(engine, name)
        if not db.is_assigned(engine, p["id"], u):
            raise HTTPException(403, f"'{u['name']}' is not assigned to project '{name}'")
        return p

    def me_out(u: dict) -> dict:
        return {"name": u["name"], "is_admin": bool(u["is_admin"]),
                "projects": db.list_projects(engine, u)}

    # ---------------------------------------------------------------- pages
    def page(name: str):
        return FileResponse(os.path.join(STATIC, name), media_type="text/html",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                                     "style-src 'self'; object-src 'none'; frame-ancestors 'none'"})

    @app.get("/", include_in_schema=False)
    def login_page():
        return page("login.html")

    @app.get("/label", include_in_schema=False)
    def label_page():
        return page("label.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        return page("admin.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        media = {".js": "text/javascript", ".css": "text/css"}.get(os.path.splitext(name)[1])
        path = os.path.join(STATIC, name)
        if media is None or os.path.basename(name) != name or not os.path.isfile(path):
            raise HTTPException(404, "not found")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-store"})

    @app.get("/items/{item_id}", include_in_schema=False)
    def item_view(item_id: int, project: str, u: dict = Depends(user)):
        p = project_for(project, u)
        it = db.get_item(engine, p, item_id, u)
        return HTMLResponse(render_item_html(p, it))

    # ---------------------------------------------------------------- session
    @app.get("/api/health")
    def health():
        return {"ok": True, "schema_version": db.SCHEMA_VERSION}

    @app.post("/api/login")
    def login(body: dict = Body(...)):
        u = db.user_for_token(engine, body.get("token") if isinstance(body, dict) else None)
        if u is None:
            raise HTTPException(401, "unknown or expired token")
        resp = JSONResponse(me_out(u))
        resp.set_cookie(COOKIE, body["token"], httponly=True, samesite="strict", path="/")
        return resp

    @app.post("/api/logout")
    def logout():
        resp = Response(status_code=204)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/api/me")
    def me(u: dict = Depends(user)):
        return me_out(u)

    # ---------------------------------------------------------------- annotating
    @app.get("/api/projects")
    def projects(u: dict = Depends(user)):
        return {"projects": db.list_projects(engine, u)}

    @app.get("/api/projects/{name}")
    def project(name: str, u: dict = Depends(user)):
        p = project_for(name, u)
        return {"name": p["name"], "kind": p["kind"], "guidelines": p["guidelines"], "overlap": p["overlap"]}

    @app.get("/api/projects/{name}/next")
    def next_item(name: str, u: dict = Depends(user)):
        project_for(name, u)
        return db.next_item(engine, name, u)

    @app.post("/api/projects/{name}/items/{item_id}/label")
    def label(name: str, item_id: int, body: dict = Body(...), u: dict = Depends(user)):
        p = project_for(name, u)
        lab, created = db.add_label(engine, p, item_id, u, body if isinstance(body, dict) else {})
        return JSONResponse({"label": lab, "created": created}, status_code=201 if created else 200)

    @app.post("/api/projects/{name}/items/{item_id}/skip")
    def skip(name: str, item_id: int, body: dict = Body(default={}), u: dict = Depends(user)):
        p = project_for(name, u)
        lab, created = db.add_label(engine, p, item_id, u, body if isinstance(body, dict) else {}, skipped=True)
        return JSONResponse({"label": lab, "created": created}, status_code=201 if created else 200)

    @app.post("/api/projects/{name}/undo")
    def undo(name: str, u: dict = Depends(user)):
        p = project_for(name, u)
        return {"undone_item": db.undo_last(engine, p, u)}

    # ---------------------------------------------------------------- admin
    @app.get("/api/admin/projects/{name}/progress")
    def progress(name: str, u: dict = Depends(admin)):
        from .progress import project_progress
        return project_progress(engine, name)

    @app.get("/api/admin/projects/{name}/export")
    def export(name: str, format: str = "pairs", aggregate: str = "majority", drop_ties: bool = False,
               min_agreement: float = 0.0, min_labels: int = 1, u: dict = Depends(admin)):
        from .export import export_rows
        stats: dict = {}
        rows = export_rows(engine, name, format, aggregate=aggregate, drop_ties=drop_ties,
                           min_agreement=min_agreement, min_labels=min_labels, stats=stats)
        return {"rows": rows, "stats": stats}

    @app.post("/api/admin/users")
    def add_user(body: dict = Body(...), u: dict = Depends(admin)):
        token = db.add_user(engine, str(body.get("name", "")), admin=bool(body.get("admin", False)),
                            expires_days=body.get("expires_days"))
        return JSONResponse({"name": body.get("name"), "token": token}, status_code=201)

    @app.post("/api/admin/projects")
    def create_project(body: dict = Body(...), u: dict = Depends(admin)):
        from ..data.loading import RawRows
        from .importers import check_for_kind, mark_gold, records_from_rows
        rows = body.get("rows")
        if not isinstance(rows, list) or not rows:
            raise DataError("field 'rows': expected a non-empty list of rows in a trainer, Label Studio or "
                            "Argilla format")
        source = str(body.get("filename") or "rows")[:200]
        records = records_from_rows(RawRows(source=source, rows=rows, index=list(range(len(rows)))),
                                    body.get("format", "auto"))
        kind = body.get("kind", "pairwise")
        if kind not in db.KINDS:
            raise DataError(f"field 'kind': expected one of {', '.join(db.KINDS)} (got {kind!r})")
        check_for_kind(records, kind, source)
        if body.get("gold_rows"):
            mark_gold(records, kind, str(body["gold_rows"]), source)
        overlap, seed = body.get("overlap", 1), body.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise DataError(f"field 'seed': expected an integer (got {seed!r})")
        assign = body.get("assign") or []
        if isinstance(assign, str):
            assign = [a.strip() for a in assign.split(",") if a.strip()]
        pid = db.create_project(engine, str(body.get("name", "")), kind, records,
                                guidelines=str(body.get("guidelines", "")), overlap=overlap,
                                assign=list(assign), seed=seed, source=source)
        return JSONResponse({"id": pid, "name": body.get("name"), "items": len(records)}, status_code=201)

    @app.post("/api/admin/projects/{name}/assign")
    def assign(name: str, body: dict = Body(...), u: dict = Depends(admin)):
        db.assign_users(engine, name, list(body.get("users") or []))
        return {"ok": True}

    return app


def _text(x) -> str:
    if isinstance(x, list):
        return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in x)
    return str(x)


def render_item_html(project: dict, item: dict) -> str:
    """A printable page of one item (the responses in this annotator's order), every text escaped."""
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(project['name'])} item {item['id']}</title>",
             f"<h1>{e(project['name'])} — item {item['id']}</h1>", "<h2>Prompt</h2>",
             f"<pre>{e(_text(item['prompt']))}</pre>"]
    for i, r in enumerate(item["responses"]):
        parts.append(f"<h2>Response {chr(65 + i) if i < 26 else i + 1}</h2><pre>{e(_text(r))}</pre>")
    return "\n".join(parts)


def serve(engine, host: str = "127.0.0.1", port: int = 8321, log_level: str = "warning",
          ready: threading.Event | None = None) -> None:
    """Run the server until interrupted (prints the address once it listens)."""
    app = create_app(engine)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    server = uvicorn.Server(config)

    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        for s in server.servers:
            for sock in s.sockets:
                addr = sock.getsockname()
                print(json.dumps({"studio": f"http://{addr[0]}:{addr[1]}", "port": addr[1]}), flush=True)
        if ready is not None:
            ready.set()

    server.startup = startup
    server.run()

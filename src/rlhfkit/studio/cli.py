"""``rlhfkit studio ...``: serve, users, projects, export (see :mod:`rlhfkit.studio`)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import RlhfkitError


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=None, help="studio directory (holds studio.db, the SQLite default)")
    p.add_argument("--db", default=None, help="SQLAlchemy database URL instead of DIR/studio.db, "
                   "e.g. postgresql://user@host/studio")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rlhfkit studio", description="human feedback: a labelling web app "
                                 "whose labels export in the trainers' formats")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    s = sub.add_parser("serve", help="serve the labelling pages and the HTTP API")
    _where(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=8321, help="port (0 = any free port; the address is printed)")

    u = sub.add_parser("user", help="accounts: user add NAME [--admin] | user list")
    usub = u.add_subparsers(dest="ucmd", metavar="ACTION", required=True)
    ua = usub.add_parser("add", help="create an account and print its token (shown once)")
    ua.add_argument("name")
    ua.add_argument("--admin", action="store_true")
    ua.add_argument("--expires_days", "--expires-days", type=float, default=None,
                    help="token lifetime in days (default: no expiry)")
    _where(ua)
    ul = usub.add_parser("list", help="list accounts")
    _where(ul)

    pr = sub.add_parser("project", help="projects: project create NAME ... | project list | project assign")
    psub = pr.add_subparsers(dest="pcmd", metavar="ACTION", required=True)
    pc = psub.add_parser("create", help="create a labelling project from a data file")
    pc.add_argument("name")
    pc.add_argument("--kind", required=True, choices=("pairwise", "ranking", "thumbs", "rating"))
    pc.add_argument("--data", required=True, help="rows: trainer formats (pairs, listwise, unpaired, prompt-only), "
                    "a Label Studio JSON export or Argilla records")
    pc.add_argument("--format", default="auto", choices=("auto", "trainer", "labelstudio", "argilla"))
    pc.add_argument("--rows", default=None, help="row range 'start:stop' of the data file")
    pc.add_argument("--guidelines", default=None, help="file with the guidelines shown beside each item")
    pc.add_argument("--overlap", type=int, default=1, help="annotators per item (default 1)")
    pc.add_argument("--assign", default="", help="comma-separated annotator names")
    pc.add_argument("--seed", type=int, default=0, help="seed of the per-annotator response order")
    pc.add_argument("--gold_rows", "--gold-rows", default="", help="rows 'start:stop' whose file judgement is known "
                    "to be right: hidden gold items that annotators are scored against")
    pc.add_argument("--sample_models", "--sample-models", default="",
                    help="prompt-only data: comma-separated models to sample responses from")
    pc.add_argument("--num_responses", "--num-responses", type=int, default=2, help="responses per prompt to sample")
    pc.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64)
    pc.add_argument("--temperature", type=float, default=1.0)
    _where(pc)
    pl = psub.add_parser("list", help="list projects")
    _where(pl)
    pa = psub.add_parser("assign", help="assign annotators to a project")
    pa.add_argument("name")
    pa.add_argument("--users", required=True, help="comma-separated annotator names")
    _where(pa)
    pp = psub.add_parser("progress", help="progress and agreement of a project (JSON)")
    pp.add_argument("name")
    _where(pp)

    he = sub.add_parser("humaneval", help="blind A/B human evaluation of two models on a prompt file "
                        "(rlhfkit eval --human studio://DIR::NAME reads the result)")
    he.add_argument("name")
    he.add_argument("--model_a", "--model-a", required=True, help="model A (its win rate is reported)")
    he.add_argument("--model_b", "--model-b", required=True, help="model B, e.g. A's reference")
    he.add_argument("--prompts", required=True, help="prompt rows (prompt-only trainer format)")
    he.add_argument("--rows", default=None, help="row range 'start:stop' of the prompt file")
    he.add_argument("--guidelines", default=None, help="file with the guidelines shown beside each item")
    he.add_argument("--overlap", type=int, default=1, help="annotators per item (default 1)")
    he.add_argument("--assign", default="", help="comma-separated annotator names")
    he.add_argument("--seed", type=int, default=0, help="seed of the sampling and the per-annotator order")
    he.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64)
    he.add_argument("--temperature", type=float, default=1.0)
    _where(he)

    ex = sub.add_parser("export", help="write a project's labels in a trainer format")
    ex.add_argument("project")
    ex.add_argument("--format", default="pairs", choices=("pairs", "listwise", "unpaired"))
    ex.add_argument("--aggregate", default="majority", choices=("majority", "unanimous"))
    ex.add_argument("--drop_ties", "--drop-ties", action="store_true", help="listwise: leave out lists with tied ranks")
    ex.add_argument("--min_agreement", "--min-agreement", type=float, default=0.0,
                    help="leave out items whose share of labels equal to the most frequent one is below this")
    ex.add_argument("--min_labels", "--min-labels", type=int, default=1)
    ex.add_argument("--out", required=True, help="output .jsonl")
    _where(ex)
    return ap


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from . import db

    if args.cmd in ("user", "project", "export", "serve", "humaneval"):
        if not args.dir and not args.db:
            raise db.StudioError("give --dir DIR (the studio directory) or --db URL")
    engine = db.open_db(args.dir, args.db)
    try:
        if args.cmd == "serve":
            from .server import serve
            if not 0 <= args.port <= 65535:
                raise db.StudioError(f"--port must be in 0..65535 (got {args.port})")
            if args.host not in ("127.0.0.1", "localhost", "::1"):
                print(f"rlhfkit studio: serving on {args.host}, reachable from other machines; tokens travel in "
                      "clear text unless a TLS proxy is in front", file=sys.stderr)
            serve(engine, args.host, args.port)
        elif args.cmd == "user" and args.ucmd == "add":
            if args.expires_days is not None and args.expires_days <= 0:
                raise db.StudioError(f"--expires_days must be > 0 (got {args.expires_days})")
            token = db.add_user(engine, args.name, admin=args.admin, expires_days=args.expires_days)
            print(f"user '{args.name}'{' (admin)' if args.admin else ''} created; token (shown once, keep it):")
            print(token)
        elif args.cmd == "user":
            for u in db.list_users(engine):
                print(f"{u['name']}\t{'admin' if u['is_admin'] else 'annotator'}")
        elif args.cmd == "project" and args.pcmd == "create":
            _create(engine, args)
        elif args.cmd == "project" and args.pcmd == "list":
            for p in db.list_projects(engine):
                print(f"{p['name']}\t{p['kind']}\t{p['items']} items\toverlap {p['overlap']}")
        elif args.cmd == "project" and args.pcmd == "assign":
            db.assign_users(engine, args.name, _csv(args.users))
        elif args.cmd == "project" and args.pcmd == "progress":
            from .progress import project_progress
            print(json.dumps(project_progress(engine, args.name), indent=1))
        elif args.cmd == "humaneval":
            _humaneval(engine, args)
        elif args.cmd == "export":
            from .export import export_rows, write_jsonl
            stats: dict = {}
            rows = export_rows(engine, args.project, args.format, aggregate=args.aggregate,
                               drop_ties=args.drop_ties, min_agreement=args.min_agreement,
                               min_labels=args.min_labels, stats=stats)
            write_jsonl(rows, args.out)
            print(f"wrote {len(rows)} {args.format} rows to {args.out} ({json.dumps(stats)})")
    finally:
        engine.dispose()
    return 0


def _guidelines(path: str | None) -> str:
    from . import db

    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise db.StudioError(f"cannot read guidelines file: {e}") from e


def _humaneval(engine, args) -> None:
    from . import db
    from .humaneval import create_humaneval

    if args.overlap < 1:
        raise db.StudioError(f"--overlap must be >= 1 (got {args.overlap})")
    if args.max_new_tokens < 1:
        raise db.StudioError(f"--max_new_tokens must be >= 1 (got {args.max_new_tokens})")
    if args.temperature < 0:
        raise db.StudioError(f"--temperature must be >= 0 (got {args.temperature})")
    create_humaneval(engine, args.name, args.model_a, args.model_b, args.prompts, rows=args.rows,
                     overlap=args.overlap, assign=_csv(args.assign), seed=args.seed,
                     guidelines=_guidelines(args.guidelines), max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature)
    where = f"studio://{args.dir}::{args.name}" if args.dir else f"studio://{args.name}"
    print(f"human evaluation '{args.name}' created: {args.model_a} (A) vs {args.model_b} (B), shown blind in a "
          f"per-annotator order; results: rlhfkit eval --human {where}")


def _create(engine, args) -> None:
    from . import db
    from .importers import check_for_kind, mark_gold, read_items, sample_responses

    if args.overlap < 1:
        raise db.StudioError(f"--overlap must be >= 1 (got {args.overlap})")
    guidelines = ""
    if args.guidelines:
        try:
            with open(args.guidelines, encoding="utf-8") as f:
                guidelines = f.read()
        except OSError as e:
            raise db.StudioError(f"cannot read guidelines file: {e}") from e
    records = read_items(args.data, args.format, args.rows)
    if args.sample_models:
        if args.num_responses < 1:
            raise db.StudioError("--num_responses must be >= 1")
        records = sample_responses(records, _csv(args.sample_models), args.num_responses,
                                   max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    check_for_kind(records, args.kind, args.data)
    gold = mark_gold(records, args.kind, args.gold_rows, args.data) if args.gold_rows else 0
    db.create_project(engine, args.name, args.kind, records, guidelines=guidelines, overlap=args.overlap,
                      assign=_csv(args.assign), seed=args.seed, source=args.data)
    print(f"project '{args.name}' ({args.kind}) created with {len(records)} items"
          + (f" ({gold} gold)" if gold else "") + f", overlap {args.overlap}"
          + (f", assigned to {', '.join(_csv(args.assign))}" if args.assign else ""))


def run(argv: list[str]) -> int:
    """Entry from ``rlhfkit studio``: user errors as one line, exit status 2."""
    try:
        return main(argv)
    except RlhfkitError as e:
        print(f"rlhfkit studio: error: {e}", file=sys.stderr)
        return 2

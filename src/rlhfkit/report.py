"""``rlhfkit report RUN_DIR``: one self-contained HTML file (no scripts, no network; curves as
base64 PNG data URIs) with a run's tables, curves and sample responses.

RUN_DIR is either a training run dir (``run.json``, ``metrics.jsonl``, maybe ``completions.jsonl``)
or a quickstart dir (``summary.json`` naming its tables, samples and stage subdirs). Every string
read from those files is HTML-escaped, and a Content-Security-Policy forbids scripts, so a
completion holding markup shows as text.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os

from .errors import ConfigError
from .plot import read_metrics, run_figures

# panels shown under "more curves" (collapsed): useful, but not what a reader looks at first
SECONDARY = {"value", "chosen_rejected", "logps", "truncated", "zero_std", "kl_coef", "kl_token",
             "throughput", "memory"}
MAX_SAMPLE_STEPS, MAX_SAMPLES_PER_STEP = 3, 6

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1280px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 10px;border-bottom:2px solid #d9dee7;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 8px}.meta{color:#5a6475;margin:0 0 18px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:14px 16px;margin:12px 0}
table{border-collapse:collapse;font-size:14px;background:#fff}
th,td{border:1px solid #dde2ea;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;font-size:15px;padding:0 0 6px}
.note{color:#5a6475;font-size:13px;margin:6px 0 0}.scroll{overflow-x:auto}
.curves{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:10px}
.curves img{width:100%;height:auto;background:#fff;border:1px solid #dde2ea;border-radius:6px}
.responses{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:10px;margin-top:8px}
.resp{background:#f9fafc;border:1px solid #dde2ea;border-radius:6px;padding:8px 10px}
.resp h4{margin:0 0 4px;font-size:13px;color:#3b4a66}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.prompt{background:#eef3fb;border-radius:6px;padding:8px 10px}.label{font-size:12px;color:#5a6475;margin:6px 0 2px}
table.samples{width:100%}table.samples td:nth-child(-n+2){width:40%}
a{color:#2456a6}details summary{cursor:pointer;color:#3b4a66;margin:8px 0;font-weight:600}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:3px 18px;font-size:13px}
.kv .k{color:#5a6475}.kv .v{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, decimals: int | None = None) -> str:
    """A table cell: integers as they are, floats to a sensible precision (``decimals`` when a
    column fixes it), lists element-wise, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        a = abs(value)
        if a < 0.001 or a >= 1e9:
            return f"{value:.2e}"
        if decimals is None:
            if value.is_integer() and a < 1e6:
                return str(int(value))
            decimals = _decimals(a)
        return f"{value:,.{decimals}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _decimals(magnitude: float) -> int:
    return 0 if magnitude >= 1000 else 1 if magnitude >= 100 else 2 if magnitude >= 10 else 3


def _decimals_of(values) -> int | None:
    """One precision for a set of cells (fixed by the largest non-integral float), or None."""
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v) and 0.001 <= abs(v) < 1e9]
    return _decimals(max(abs(v) for v in vals)) if any(not v.is_integer() for v in vals) else None


def _column_decimals(rows, n: int) -> list[int | None]:
    """Per column, so that a column's decimals line up."""
    return [_decimals_of([r[j] for r in rows if j < len(r)]) for j in range(n)]


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table_html(columns, rows, title: str = "", note: str = "", align: str = "column") -> str:
    """An HTML table (every cell escaped; numbers right-aligned, one precision per column, or per
    row with ``align="row"`` for a table whose rows are different metrics)."""
    out = ['<div class="scroll"><table>']
    if title:
        out.append(f"<caption>{esc(title)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead><tbody>")
    rows = [list(r) if isinstance(r, (list, tuple)) else [r] for r in rows]
    width = max([len(columns)] + [len(r) for r in rows])
    decimals = _column_decimals(rows, width)
    for row in rows:
        if align == "row":
            decimals = [_decimals_of(row)] * width
        cells = "".join(f'<td class="num">{esc(fmt(v, decimals[j]))}</td>' if _is_num(v)
                        else f"<td>{esc(fmt(v))}</td>" for j, v in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table></div>")
    if note:
        out.append(f'<p class="note">{esc(note)}</p>')
    return "".join(out)


def _png_uri(fig, dpi: int = 100) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def curves_html(run_dir: str, smooth: float, name: str) -> str:
    """The run's panels as embedded PNGs (the secondary ones collapsed)."""
    import matplotlib.pyplot as plt

    try:
        figures = run_figures(run_dir, smooth, name)
    except ConfigError as e:
        return f'<p class="note">no curves: {esc(e)}</p>'
    main, more = [], []
    try:
        for panel, fig in figures:
            img = (f'<img src="{_png_uri(fig)}" alt="{esc(name)}: {esc(panel.title)}" '
                   f'title="{esc(", ".join(panel.keys))}">')
            (more if panel.name in SECONDARY else main).append(img)
    finally:
        for _p, fig in figures:
            plt.close(fig)
    out = f'<div class="curves">{"".join(main)}</div>' if main else ""
    if more:
        out += (f"<details><summary>more curves ({len(more)})</summary>"
                f'<div class="curves">{"".join(more)}</div></details>')
    return out


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}; is it a file written by rlhfkit?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def recipe_of(record: dict) -> str:
    """The command that wrote a run, from ``run.json`` (its ``recipe`` or its config's shape)."""
    for key in ("recipe", "command"):
        if isinstance(record.get(key), str) and record[key]:
            return record[key]
    cfg = record.get("config") or {}
    if "rounds" in cfg and "loss_type" in cfg:
        return "online-dpo"
    if "desirable_weight" in cfg:
        return "kto"
    if "loss_type" in cfg:
        return f"dpo ({cfg['loss_type']})"
    if "center_rewards_coef" in cfg or "margin" in cfg:
        return "rm"
    if "advantage" in cfg:
        return "ppo" if cfg["advantage"] == "gae" else f"grpo ({cfg['advantage']})"
    return "sft" if cfg else "unknown"


KEY_SETTINGS = ["model.name", "model.lora.r", "data.path", "data.eval_path", "train.epochs",
                "train.max_steps", "train.batch_size", "train.grad_accum", "train.lr", "train.lr_scheduler",
                "train.warmup_ratio", "train.max_grad_norm", "train.seed", "rollout.num_generations",
                "rollout.max_new_tokens", "rollout.temperature"]


def key_settings(record: dict) -> list[tuple[str, object]]:
    """Curated settings from ``run.json``'s config, then the recipe's own top-level scalars."""
    cfg = record.get("config") or {}
    rows = []
    for dotted in KEY_SETTINGS:
        node = cfg
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node not in (None, ""):
            rows.append((dotted, node))
    for k, v in cfg.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            v = "; ".join(_brief(x) for x in v)  # e.g. rewards: type=verifier verifier=arithmetic weight=1
        if not isinstance(v, dict) and v not in (None, ""):
            rows.append((k, v if not isinstance(v, list) or len(v) < 8 else f"{len(v)} items"))
    count = ((record.get("data") or {}).get("examples") or {}).get("count")
    if count is not None:
        rows.append(("training examples", count))
    return rows


def _brief(item: dict) -> str:
    """A config list item by its named parts (non-empty strings) and weight; the rest is in run.json."""
    parts = [f"{k}={v}" for k, v in item.items() if isinstance(v, str) and v]
    if _is_num(item.get("weight")):
        parts.append(f"weight={fmt(item['weight'])}")
    return " ".join(parts) or json.dumps(item, sort_keys=True)


def eval_table(records: list[dict]) -> tuple[list[str], list[list]]:
    """``metric | initial (step a) | final (step b) | change`` from the first and last eval records."""
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    if not evals:
        return [], []
    x = "round" if "step" not in evals[0] and "round" in evals[0] else "step"
    first, last = evals[0], evals[-1]
    keys = [k for k in dict.fromkeys([*first, *last]) if k.startswith("eval/")]
    if first is last:
        return (["metric", f"{x} {first.get(x, '?')}"],
                [[k, first[k]] for k in keys if _is_num(first.get(k))])
    rows = []
    for k in keys:
        a, b = first.get(k), last.get(k)
        if not (_is_num(a) or _is_num(b)):
            continue
        rows.append([k, a, b, b - a if _is_num(a) and _is_num(b) else None])
    return ["metric", f"initial ({x} {first.get(x, '?')})", f"final ({x} {last.get(x, '?')})", "change"], rows


def last_train_table(records: list[dict]) -> list[list]:
    """``metric | last value | step`` of the main training series."""
    from .plot import panel_of

    last: dict[str, tuple] = {}
    for r in records:
        for k, v in r.items():
            if not k.startswith("eval/") and _is_num(v) and k not in ("step", "round") and panel_of(k):
                last[k] = (v, r.get("step", r.get("round")))
    return [[k, v, s] for k, (v, s) in last.items()]


def read_completions(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a log being written
            if isinstance(row, dict):
                rows.append(row)
    return rows


def completions_html(path: str) -> str:
    """A few logged completions: the first, a middle and the last logged step."""
    rows = read_completions(path)
    if not rows:
        return '<p class="note">completions.jsonl is empty</p>'
    steps = sorted({r.get("step") for r in rows if _is_num(r.get("step"))})
    picked = steps if len(steps) <= MAX_SAMPLE_STEPS else [steps[0], steps[len(steps) // 2], steps[-1]]
    out = [f'<p class="note">{len(rows)} completions logged at {len(steps)} steps; showing up to '
           f"{MAX_SAMPLES_PER_STEP} from step {', '.join(str(s) for s in picked)}.</p>"]
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("step", "prompt", "completion")]
    head = "".join(f"<th>{esc(k)}</th>" for k in ["prompt", "completion", *extra])
    for step in picked or [None]:
        group = [r for r in rows if step is None or r.get("step") == step][:MAX_SAMPLES_PER_STEP]
        body = "".join(
            f'<tr><td><pre>{esc(_text(r.get("prompt", "")))}</pre></td><td><pre>{esc(_text(r.get("completion", "")))}</pre></td>'
            + "".join(f'<td class="num">{esc(fmt(r.get(k)))}</td>' if _is_num(r.get(k)) else f"<td>{esc(fmt(r.get(k)))}</td>"
                      for k in extra) + "</tr>" for r in group)
        out.append(f'<div class="card scroll"><table class="samples"><caption>step {esc(step)}</caption>'
                   f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    return "".join(out)


def _text(value) -> str:
    """A prompt or completion as text (chat message lists shown as ``role: content`` lines)."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in value)
    return value if isinstance(value, str) else json.dumps(value)


def run_section(run_dir: str, name: str, smooth: float, heading: str = "h2") -> str:
    """Recipe, settings, eval table, curves and logged completions of one training run."""
    out = []
    record = {}
    if os.path.isfile(os.path.join(run_dir, "run.json")):
        record = _read_json(os.path.join(run_dir, "run.json"))
    try:
        records = read_metrics(run_dir)
    except ConfigError as e:
        records = []
        out.append(f'<p class="note">{esc(e)}</p>')
    recipe = recipe_of(record) if record else ("online-dpo" if os.path.isfile(
        os.path.join(run_dir, "rounds.jsonl")) else "unknown")
    final = os.path.join(run_dir, "final")
    out.append(f'<p class="meta">recipe <b>{esc(recipe)}</b> · run dir <code>{esc(os.path.abspath(run_dir))}</code>'
               + (f" · final model <code>{esc(os.path.abspath(final))}</code>" if os.path.isdir(final) else "")
               + "</p>")
    cols, rows = eval_table(records)
    if rows:
        out.append(f'<div class="card">{table_html(cols, rows, "Evaluation: initial vs final", align="row")}</div>')
    settings = key_settings(record) if record else []
    if settings:
        items = "".join(f'<div><span class="k">{esc(k)}</span> <span class="v">{esc(fmt(v))}</span></div>'
                        for k, v in settings)
        full = esc(json.dumps(record.get("config", {}), indent=1))
        out.append(f'<details class="card"{" open" if heading == "h2" else ""}><summary>key settings</summary>'
                   f'<div class="kv">{items}</div><details><summary>full config (run.json)</summary>'
                   f"<pre>{full}</pre></details></details>")
    last = last_train_table(records)
    if last:
        out.append(f'<details><summary>last training values ({len(last)})</summary>'
                   f'{table_html(["metric", "value", "step"], last, align="row")}</details>')
    if records:
        out.append(f"<{heading}>Curves</{heading}>")
        out.append(curves_html(run_dir, smooth, name))
    comp = os.path.join(run_dir, "completions.jsonl")
    if os.path.isfile(comp):
        out.append(f"<{heading}>Sampled completions</{heading}>" + completions_html(comp))
    return "".join(out)


def samples_html(samples: list) -> str:
    """Each prompt once, the policies' responses side by side."""
    out = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            continue
        out.append(f'<div class="card"><div class="label">prompt {i + 1}</div>'
                   f'<pre class="prompt">{esc(_text(s.get("prompt", "")))}</pre>')
        if s.get("answer") not in (None, ""):
            out.append(f'<div class="label">reference answer: <b>{esc(_text(s["answer"]))}</b></div>')
        responses = s.get("responses") or {}
        if isinstance(responses, dict):
            out.append('<div class="responses">' + "".join(
                f'<div class="resp"><h4>{esc(name)}</h4><pre>{esc(_text(text))}</pre></div>'
                for name, text in responses.items()) + "</div>")
        out.append("</div>")
    return "".join(out)


def _duration(seconds) -> str:
    if not _is_num(seconds):
        return ""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def quickstart_body(qdir: str, summary: dict, smooth: float) -> tuple[str, str]:
    title = str(summary.get("title") or "rlhfkit quickstart")
    out = []
    meta = [f"output dir <code>{esc(summary.get('output_dir') or os.path.abspath(qdir))}</code>"]
    if _duration(summary.get("wall_s")):
        meta.append(f"wall time {esc(_duration(summary.get('wall_s')))}")
    stages = [str(s) for s in summary.get("stages") or []] or sorted(
        s for s in os.listdir(qdir) if os.path.isfile(os.path.join(qdir, s, "metrics.jsonl")))
    if stages:
        meta.append("stages " + " · ".join(f'<a href="#stage-{esc(s)}">{esc(s)}</a>' for s in stages))
    out.append(f'<p class="meta">{" · ".join(meta)}</p>')
    tables = summary.get("tables") or []
    legacy = summary.get("rows")
    if not tables and isinstance(legacy, list) and legacy and all(isinstance(r, dict) for r in legacy):
        columns = list(dict.fromkeys(k for r in legacy for k in r))  # an older summary: rows of dicts
        tables = [{"title": "Results", "columns": columns, "rows": [[r.get(c) for c in columns] for r in legacy]}]
    if tables:
        out.append("<h2>Results</h2>")
    for t in tables:
        if isinstance(t, dict):
            out.append(f'<div class="card">{table_html(t.get("columns") or [], t.get("rows") or [], t.get("title", ""), t.get("note", ""))}</div>')
    samples = summary.get("samples") or []
    if samples:
        out.append("<h2>Sample responses</h2>" + samples_html(samples))
    for stage in stages:
        stage_dir = os.path.join(qdir, stage)
        out.append(f'<h2 id="stage-{esc(stage)}">Stage: {esc(stage)}</h2>')
        if not os.path.isdir(stage_dir):
            out.append(f'<p class="note">no run dir at {esc(stage_dir)}</p>')
            continue
        out.append(run_section(stage_dir, stage, smooth, heading="h3"))
    return title, "".join(out)


def render(run_dir: str, smooth: float = 0.6) -> str:
    """The report's HTML for a run dir or a quickstart dir."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"no directory at {run_dir}; give a run dir or a quickstart output dir")
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_path):
        title, body = quickstart_body(run_dir, _read_json(summary_path), smooth)
    elif any(os.path.exists(os.path.join(run_dir, f)) for f in ("metrics.jsonl", "rounds.jsonl", "run.json")):
        name = os.path.basename(os.path.normpath(run_dir))
        title, body = f"rlhfkit run: {name}", run_section(run_dir, name, smooth)
    else:
        raise ConfigError(f"{run_dir} holds no summary.json, metrics.jsonl or run.json; "
                          "give a directory written by an rlhfkit command")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f'<h1>{esc(title)}</h1><p class="meta">rlhfkit report · written {stamp}</p>'
            f"{body}</main></body></html>\n")


def write_report(run_dir: str, out: str | None = None, smooth: float = 0.6, log=print) -> str:
    """Write the report (default ``RUN_DIR/report.html``); return its path."""
    if not 0.0 <= smooth < 1.0:
        raise ConfigError(f"--smooth {smooth} is outside [0, 1); 0.6 is a good start (0 = off)")
    text = render(run_dir, smooth)
    out = out or os.path.join(run_dir, "report.html")
    try:
        if os.path.dirname(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except OSError as e:
        raise ConfigError(f"cannot write the report to {out}: {e.strerror}; pass --out FILE") from None
    log(f"wrote {out} ({len(text.encode()) / 1e6:.1f} MB); open it in a browser")
    return out

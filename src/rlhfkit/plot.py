"""``rlhfkit plot RUN_DIR``: one PNG per quantity from a run's ``metrics.jsonl`` (matplotlib, a
core dependency, on the Agg backend).

Each panel holds one quantity (or one unit) on its y axis, labelled with its unit, steps on x and
the run name in the title. Training series are lines (optionally smoothed with an exponential
moving average, the raw series faint behind it, for series of 8 points or more); evaluation series (``eval/...``) are markers.
A metric goes to at most one panel, and a series identical to one already drawn (``train/nll``
beside ``train/loss`` in SFT) is drawn once, its other name noted in the legend.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from .errors import ConfigError

# (panel name, title, y label, pattern on the metric name); the first match wins, and panels
# are shown in this order. Names not matched here are not plotted (counters, timings, flags).
PANELS = [
    ("gold", "gold reward (verifier)", "gold reward (score)", r"gold"),
    ("reward", "reward (training signal)", "reward (score)", r"^(rollout|eval|eval/greedy|eval/sampled)/reward$"),
    ("accuracy", "pair accuracy", "chosen above rejected (fraction)", r"accuracy$"),
    ("exact", "exact match", "exact match (fraction)", r"exact"),
    ("margin", "margin (chosen - rejected)", "margin (reward units)", r"margin$"),
    ("nll", "negative log-likelihood", "NLL (nats/token)", r"(^|/)nll$"),
    ("kl", "KL to the reference", "KL (nats/response)", r"^(rollout|eval|eval/sampled|train)/kl(_k3)?$"),
    ("kl_token", "KL to the reference, per token", "KL (nats/token)", r"(^|/)kl_token$"),
    ("length", "response length", "length (tokens)", r"(^|/)length(_mean|_max)?$"),
    ("entropy", "policy entropy", "entropy (nats/token)", r"(^|/)entropy$"),
    ("clip", "clip fraction", "clipped (fraction of tokens)", r"clip_frac$"),
    ("approx_kl", "policy change per update", "approx. KL (nats/token)", r"approx_kl$"),
    ("explained_variance", "critic explained variance", "explained variance (1 = perfect)",
     r"explained_variance$"),
    ("value_loss", "critic (value) loss", "value loss (squared reward units)", r"value_loss$"),
    ("loss", "loss", "loss (objective value)", r"(^|/)(loss|policy_loss)$"),
    ("value", "mean value estimate", "value (reward units)", r"value_mean$"),
    ("chosen_rejected", "chosen and rejected scores", "score (reward units)",
     r"^(train|eval)/(rewards/)?(chosen|rejected)$"),
    ("logps", "chosen and rejected log p", "log p (nats/response)", r"logps/(chosen|rejected)$"),
    ("truncated", "truncated responses", "cut at max_new_tokens (fraction)", r"truncated_frac$"),
    ("zero_std", "groups with no reward spread", "zero-std groups (fraction)", r"zero_std_frac$"),
    ("kl_coef", "KL coefficient", "beta (per nat)", r"kl_coef$"),
    ("grad_norm", "gradient norm (before clipping)", "grad norm (L2)", r"grad_norm$"),
    ("lr", "learning rate", "learning rate", r"(^|/)lr$"),
    ("throughput", "throughput", "tokens / s", r"tokens_per_s$"),
    ("memory", "peak memory", "peak RSS (GB)", r"peak_rss_gb$"),
]
_COMPILED = [(n, t, y, re.compile(p)) for n, t, y, p in PANELS]
# per-function rewards: rollout/reward/<name>, eval/greedy/<name>, eval/sampled/<name>
_COMPONENT = re.compile(r"^(?:rollout/reward|eval/greedy|eval/sampled)/([A-Za-z0-9_.\-]+)$")
_NOT_COMPONENT = {"reward", "kl", "kl_k3", "length", "truncated_frac", "gold"}
MIN_SMOOTH_POINTS = 8  # shorter series are drawn raw: an EMA of a few points only lags
_ORDER = {name: i for i, (name, *_rest) in enumerate(PANELS)}


@dataclasses.dataclass
class Panel:
    """One axis: the metrics drawn on it, and ``{dropped: kept}`` for series left out because
    they equal one drawn here (``kept``'s legend entry names them)."""
    name: str
    title: str
    ylabel: str
    keys: list[str]
    duplicates: dict[str, str] = dataclasses.field(default_factory=dict)


def read_metrics(path: str) -> list[dict]:
    """Records of ``metrics.jsonl`` (or ``rounds.jsonl``, which online-DPO run dirs of earlier versions hold)."""
    if os.path.isdir(path):
        for name in ("metrics.jsonl", "rounds.jsonl"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ConfigError(f"no metrics file at {path}; give a run directory written by an rlhfkit command")
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ConfigError(f"{path}: line {i + 1} is not JSON (a torn write?); remove it") from None
    return out


def x_key(records: list[dict]) -> str:
    """``step`` for training runs, ``round`` for online-DPO round logs."""
    return "round" if records and all("round" in r and "step" not in r for r in records) else "step"


def series(records: list[dict], x: str = "step") -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (steps, values)}``, finite numbers only."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for k, v in r.items():
            if k in ("step", "round") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if not math.isfinite(v):
                continue
            xs, ys = out.setdefault(k, ([], []))
            xs.append(int(r.get(x, 0)))
            ys.append(float(v))
    return out


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average: ``s_0 = x_0``, ``s_t = w * s_(t-1) + (1 - w) * x_t``."""
    if not 0.0 <= weight < 1.0:
        raise ConfigError(f"smoothing weight {weight} is outside [0, 1); try --smooth 0.6 (0 = off)")
    out: list[float] = []
    for v in values:
        out.append(v if not out else weight * out[-1] + (1.0 - weight) * v)
    return out


def panel_of(key: str) -> tuple[str, str, str] | None:
    """``(name, title, y label)`` of the panel metric ``key`` belongs to, or None (not plotted)."""
    if key.endswith("_errors"):
        return None
    for name, title, ylabel, pattern in _COMPILED:
        if pattern.search(key):
            return name, title, ylabel
    m = _COMPONENT.match(key)
    if m and m.group(1) not in _NOT_COMPONENT:
        c = m.group(1)
        return f"reward-{c}", f"reward function '{c}'", f"{c} (score)"
    return None


def _key_rank(key: str) -> tuple:
    # training series first, then greedy/sampled evaluation; mean before max
    return (key.startswith("eval/"), "sampled" in key, key.endswith("_max"), key)


def panels(data: dict[str, tuple[list[int], list[float]]]) -> list[Panel]:
    """Group the metrics into panels (display order); each series at most once across panels."""
    by_name: dict[str, Panel] = {}
    for key in sorted(data, key=_key_rank):
        spec = panel_of(key)
        if spec is None or not data[key][0]:
            continue
        p = by_name.setdefault(spec[0], Panel(*spec, keys=[]))
        p.keys.append(key)
    out = sorted(by_name.values(), key=lambda p: (_ORDER.get(p.name, _ORDER["reward"] + 0.5), p.name))
    # Identical series are drawn once: within a panel always (they would overlap exactly), across
    # panels only when they carry information (3+ distinct values), so that two all-zero
    # counters of a short run are not taken for one another.
    seen: dict[tuple, tuple[str, Panel]] = {}
    for p in out:
        for key in list(p.keys):
            sig = (tuple(data[key][0]), tuple(data[key][1]))
            if sig in seen and (seen[sig][1] is p or len(set(data[key][1])) >= 3):
                kept, holder = seen[sig]
                p.keys.remove(key)
                holder.duplicates[key] = kept  # noted in the legend of the series drawn
            else:
                seen.setdefault(sig, (key, p))
    constant_beta = [p for p in out if p.name == "kl_coef" and all(len(set(data[k][1])) == 1 for k in p.keys)]
    return [p for p in out if p.keys and p not in constant_beta]


def is_eval(key: str) -> bool:
    return key.startswith("eval/")


def draw_panel(panel: Panel, data, run_name: str, smooth: float = 0.0, xlabel: str = "step"):
    """A matplotlib Figure with one axis for ``panel`` (raw series faint when smoothed)."""
    import matplotlib  # a core dependency (pyproject.toml)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dup_of: dict[str, list[str]] = {}
    for dropped, kept in panel.duplicates.items():
        dup_of.setdefault(kept, []).append(dropped)
    for i, key in enumerate(panel.keys):
        xs, ys = data[key]
        color = colors[i % len(colors)]
        label = key + (f" (= {', '.join(dup_of[key])})" if key in dup_of else "")
        if is_eval(key):
            ax.plot(xs, ys, linestyle="--", linewidth=0.8, marker="o", markersize=5, color=color, label=label)
        elif smooth > 0 and len(ys) >= MIN_SMOOTH_POINTS:
            ax.plot(xs, ys, linewidth=1.0, alpha=0.25, color=color, label="_raw " + key)
            ax.plot(xs, ema(ys, smooth), linewidth=1.8, color=color, label=f"{label} (EMA {smooth:g})")
        else:
            ax.plot(xs, ys, linewidth=1.5, marker="o" if len(xs) < 12 else None, markersize=3,
                    color=color, label=label)
    if panel.name == "accuracy":
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    title = f"{run_name}: {panel.title}"
    ax.set_title(title, fontsize=11 if len(title) <= 48 else 9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if panel.name == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.set_ylim(bottom=0)  # warmup and decay read against zero
    else:
        ax.ticklabel_format(axis="y", useOffset=False)  # no "1e-5+1.08e1" offsets
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def run_figures(run_dir: str, smooth: float = 0.0, name: str = ""):
    """``[(panel, figure)]`` for a run dir (or a metrics file); the caller closes the figures."""
    records = read_metrics(run_dir)
    xk = x_key(records)
    data = series(records, xk)
    run_name = name or os.path.basename(os.path.normpath(run_dir if os.path.isdir(run_dir)
                                                         else os.path.dirname(run_dir)))
    ps = panels(data)
    if not ps:
        raise ConfigError(f"{run_dir}: no plottable metrics found")
    return [(p, draw_panel(p, data, run_name, smooth, xlabel=xk)) for p in ps]


def plot_run(run_dir: str, out_dir: str = "", log=print, smooth: float = 0.0, name: str = "") -> list[str]:
    """Write one PNG per panel (``OUT/<panel>.png``, default ``RUN_DIR/plots``); return their paths."""
    import matplotlib.pyplot as plt

    if not 0.0 <= smooth < 1.0:
        raise ConfigError(f"--smooth {smooth} is outside [0, 1); 0.6 is a good start (0 = off)")
    figures = run_figures(run_dir, smooth, name)
    out_dir = out_dir or os.path.join(run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir), "plots")
    try:
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for p, fig in figures:
            path = os.path.join(out_dir, f"{p.name}.png")
            fig.savefig(path, dpi=110)
            paths.append(path)
    except OSError as e:
        raise ConfigError(f"cannot write plots to {out_dir}: {e.strerror}; pass --out DIR") from None
    finally:
        for _p, fig in figures:
            plt.close(fig)
    log(f"wrote {len(paths)} plots to {out_dir}: " + ", ".join(os.path.basename(p) for p in paths))
    return paths

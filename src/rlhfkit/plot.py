"""``rlhfkit plot RUN_DIR``: PNG curves from a run's ``metrics.jsonl`` (matplotlib, a core dependency)."""

from __future__ import annotations

import json
import math
import os
import re

from .errors import ConfigError

# figure name -> metric-name patterns (first match wins, so order matters)
GROUPS = [
    ("kl", r"(^|/)(kl|kl_k3|kl_token|approx_kl|kl_coef)$"),
    ("length", r"length"),
    ("accuracy", r"accuracy|exact|margin"),
    ("reward", r"reward|/arithmetic$|/gsm8k$|/format$|/rm(_\d+)?$"),
    ("loss", r"loss|nll|perplexity"),
]


def read_metrics(path: str) -> list[dict]:
    if os.path.isdir(path):
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


def series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for k, v in r.items():
            if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if not math.isfinite(v):
                continue
            xs, ys = out.setdefault(k, ([], []))
            xs.append(int(r.get("step", 0)))
            ys.append(float(v))
    return out


def group_of(key: str) -> str | None:
    for name, pattern in GROUPS:
        if re.search(pattern, key):
            return name
    return None


def plot_run(run_dir: str, out_dir: str = "", log=print) -> list[str]:
    """Write one PNG per metric group; return their paths."""
    import matplotlib  # a core dependency (pyproject.toml)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = series(read_metrics(run_dir))
    out_dir = out_dir or os.path.join(run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir), "plots")
    os.makedirs(out_dir, exist_ok=True)
    grouped: dict[str, list[str]] = {}
    for k in sorted(data):
        g = group_of(k) if not k.endswith("_errors") else None
        if g is not None and len(data[k][0]) > 0:
            grouped.setdefault(g, []).append(k)
    paths = []
    for g, keys in grouped.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            xs, ys = data[k]
            ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=k)
        ax.set_xlabel("step")
        ax.set_title(f"{os.path.basename(os.path.normpath(run_dir))}: {g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{g}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if not paths:
        raise ConfigError(f"{run_dir}: no plottable metrics found")
    log(f"wrote {len(paths)} plots to {out_dir}: " + ", ".join(os.path.basename(p) for p in paths))
    return paths

"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, Weights & Biases and trackio
(``train.report_to``), and the settings of what a run logs (``train.log_completions``).

Each tracker gets the run's resolved config once, when it starts, and every metrics record with
its step. TensorBoard is optional and silently skipped when it is not installed (it is the
default); wandb and trackio are optional installs that a run asking for them cannot do without,
so :func:`require_trackers` stops it before anything is loaded, in one line that says how to
install them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

from ..errors import ConfigError, TrainingError

REPORT_TO = ("tensorboard", "wandb", "trackio")
INSTALL = {"wandb": "pip install 'rlhfkit[wandb]'", "trackio": "pip install 'rlhfkit[trackio]'",
           "tensorboard": "pip install 'rlhfkit[tensorboard]'"}


@dataclasses.dataclass
class TrackingConfig:
    """The ``train.*`` keys of logging (a base of :class:`rlhfkit.config.TrainConfig`)."""

    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])
    """Trackers beside metrics.jsonl: tensorboard, wandb, trackio (a list, or 'none'; 'all' = the
    installed ones). Each gets the resolved config once and every metrics record (main process only);
    wandb / trackio must be installed: pip install 'rlhfkit[wandb]' / 'rlhfkit[trackio]'."""
    tensorboard: bool = True
    """Deprecated: false removes tensorboard from report_to."""
    log_completions: int = 0
    """Online RL (grpo, ppo, online-dpo): every N steps write sampled prompts, completions, rewards
    (total and per source) and advantages to output_dir/completions.jsonl (0 = off)."""
    log_completions_rows: int = 8
    """At most this many rows of completions.jsonl per logged step."""

    def validate_tracking(self, p: str = "train.") -> None:
        from ..config import check_range

        check_range(p + "log_completions", self.log_completions, lo=0)
        check_range(p + "log_completions_rows", self.log_completions_rows, lo=1)
        self.report_to = check_report_to(p + "report_to", self.report_to, self.tensorboard)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module injected without a spec
        import sys

        return name in sys.modules


def check_report_to(key: str, value, tensorboard: bool = True) -> list[str]:
    """``train.report_to`` as a list of tracker names: ``none`` -> [], ``all`` -> the installed
    ones, duplicates dropped, and ``train.tensorboard: false`` drops tensorboard."""
    from ..config import check_choice

    names = [v for v in value.split(",") if v] if isinstance(value, str) else list(value or [])
    out: list[str] = []
    for n in names:
        if n == "all":
            out += [t for t in REPORT_TO if _installed(t)]
        elif n != "none":
            check_choice(key, n, REPORT_TO + ("none", "all"))
            out.append(n)
    return [n for i, n in enumerate(out) if n not in out[:i] and (tensorboard or n != "tensorboard")]


def require_trackers(report_to, key: str = "train.report_to") -> None:
    """ConfigError (one line) when wandb or trackio is asked for and not installed."""
    for name in report_to:
        if name in ("wandb", "trackio") and not _installed(name):
            raise ConfigError(_missing(name, key))


def _missing(name: str, key: str = "train.report_to") -> str:
    return f"{key} names {name}, which is not installed; install it with {INSTALL[name]} (or drop it: --{key} tensorboard)"


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardTracker:
    def __init__(self, run_dir: str, run_name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter  # ImportError when tensorboard is missing

        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per training process start (project: ``WANDB_PROJECT``, default 'rlhfkit')."""

    def __init__(self, run_dir: str, run_name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError(_missing("wandb")) from None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlhfkit"), name=run_name, config=config,
                              dir=run_dir)

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A trackio run (project: ``TRACKIO_PROJECT``, default 'rlhfkit'); trackio keeps one current run."""

    def __init__(self, run_dir: str, run_name: str, config: dict):
        try:
            import trackio
        except ImportError:
            raise ConfigError(_missing("trackio")) from None
        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "rlhfkit"), name=run_name, config=config)

    def log(self, step: int, metrics: dict) -> None:
        self.trackio.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.trackio.finish()


HINT = {"wandb": "log in with `wandb login` or set WANDB_MODE=offline, or ",
        "trackio": "check its settings (TRACKIO_PROJECT, TRACKIO_SPACE_ID), or "}
TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


def open_trackers(report_to, run_dir: str, config_fn, log=None) -> list:
    """The trackers of ``report_to``, each started with the resolved config (``config_fn()``, computed
    once and only when one is asked for). TensorBoard missing: skipped; wandb / trackio missing:
    ConfigError."""
    require_trackers(report_to)
    out, config = [], None
    for name in report_to:
        if config is None and name != "tensorboard":  # TensorBoard records no config
            config = config_fn() if config_fn is not None else {}
        try:
            out.append(TRACKERS[name](run_dir, os.path.basename(os.path.abspath(run_dir)), config))
        except ImportError:  # TensorBoard is not installed: metrics.jsonl only
            pass
        except Exception as e:  # e.g. wandb without a login: one line, not the tracker's traceback
            for t in out:
                t.close()
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise TrainingError(f"train.report_to: starting {name} failed ({type(e).__name__}: {first}); "
                                f"{HINT.get(name, '')}drop it with --train.report_to tensorboard") from None
    return out

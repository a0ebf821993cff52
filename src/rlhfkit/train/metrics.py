"""The run's metrics file: append-only strict JSONL, plus the trackers of ``train.report_to``
(TensorBoard, wandb, trackio; :mod:`.trackers`)."""

from __future__ import annotations

import json
import math
import os

from ..errors import TrainingError
from .trackers import open_trackers


def truncate_jsonl(path: str, step: int, log=None) -> None:
    """On resume, drop the records of ``path`` written after the checkpoint at ``step`` (no duplicates,
    no gaps). A torn final line (the process was killed while writing it) is dropped and reported; a
    broken line before the end is an error."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(lines) - 1:
                if log:
                    log(f"{path}: dropped a torn final line (a write was interrupted): {line.strip()[:60]!r}")
                continue
            raise TrainingError(f"{path}, line {i + 1}: not a JSON record; fix or delete that line, "
                                "then resume again") from None
        if rec.get("step", 0) <= step:
            keep.append(json.dumps(rec, allow_nan=False) + "\n" if not line.endswith("\n") else line)
    with open(path, "w") as f:
        f.writelines(keep)


class MetricsLog:
    """Append-only JSONL of metrics, and each record to the trackers of ``report_to`` (default:
    TensorBoard when installed, or none with ``tensorboard=False``). Only an ``enabled`` log (the
    main process) writes or starts trackers; ``config_fn()`` gives the resolved config they record."""

    def __init__(self, path: str, tensorboard: bool = True, enabled: bool = True, *,
                 report_to: list[str] | None = None, config_fn=None):
        self.path, self.enabled = path, enabled  # only the main process writes
        if report_to is None:
            report_to = ["tensorboard"] if tensorboard else []
        self.trackers = open_trackers(report_to, os.path.dirname(path) or ".", config_fn) if enabled else []

    @classmethod
    def for_run(cls, cfg, enabled: bool, config_fn=None) -> "MetricsLog":
        """The metrics log of a run dir for ``cfg`` (a TrainConfig): metrics.jsonl + ``cfg.report_to``."""
        return cls(os.path.join(cfg.output_dir, "metrics.jsonl"), enabled=enabled, report_to=cfg.report_to,
                   config_fn=config_fn)

    @property
    def tb(self):
        """The TensorBoard writer, if one is open."""
        return next((t.writer for t in self.trackers if hasattr(t, "writer")), None)

    def truncate_after(self, step: int, log=None) -> None:
        """On resume, drop records written after the checkpoint (:func:`truncate_jsonl`)."""
        if self.enabled:
            truncate_jsonl(self.path, step, log)

    @staticmethod
    def record(step: int, metrics: dict) -> dict:
        """Strict JSON: a non-finite number is written as null and its key listed in ``nonfinite``."""
        rec: dict = {"step": step}
        bad = []
        for k, v in metrics.items():
            if isinstance(v, float):
                if math.isfinite(v):
                    v = round(v, 8)
                else:
                    v = None
                    bad.append(k)
            rec[k] = v
        if bad:
            rec["nonfinite"] = bad
        return rec

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        rec = self.record(step, metrics)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")
        for t in self.trackers:
            t.log(step, metrics)

    def close(self):
        for t in self.trackers:
            t.close()
        self.trackers = []

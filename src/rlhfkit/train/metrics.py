"""The run's metrics file: append-only strict JSONL (+ TensorBoard when it is installed)."""

from __future__ import annotations

import json
import math
import os

from ..errors import TrainingError


class MetricsLog:
    """Append-only JSONL of metrics (+ TensorBoard when available)."""

    def __init__(self, path: str, tensorboard: bool = True, enabled: bool = True):
        self.path, self.enabled = path, enabled  # only the main process writes
        self.tb = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(os.path.dirname(path), "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def truncate_after(self, step: int, log=None) -> None:
        """On resume, drop records written after the checkpoint (no duplicates, no gaps). A torn
        final line (the process was killed while writing it) is dropped and reported; a broken
        line before the end is an error."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
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
                        log(f"{self.path}: dropped a torn final line (a write was interrupted): {line.strip()[:60]!r}")
                    continue
                raise TrainingError(f"{self.path}, line {i + 1}: not a JSON record; fix or delete that line, "
                                    "then resume again") from None
            if rec.get("step", 0) <= step:
                keep.append(json.dumps(rec, allow_nan=False) + "\n" if not line.endswith("\n") else line)
        with open(self.path, "w") as f:
            f.writelines(keep)

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
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()

"""Sampled completions of online RL as a table: ``RUN_DIR/completions.jsonl`` (``train.log_completions``).

Every ``train.log_completions`` steps (GRPO / PPO / RLOO / REINFORCE++) or rounds (online DPO),
up to ``train.log_completions_rows`` of the step's sampled rows, one strict-JSON object each::

    {"step": 4, "prompt": "What is 2 + 3?", "completion": "... 5", "reward": 1.0,
     "reward/arithmetic": 1.0, "reward/format": 0.0, "advantage": 0.71}

``step`` is the optimizer step (or round) the samples were drawn for, as in ``metrics.jsonl``;
``reward`` is the weighted total the update used, ``reward/<source>`` each source's value (null
where the source failed on that row), ``advantage`` the sequence's advantage where the estimator
gives one (GRPO: its group-normalised score; PPO: the mean over its tokens; null for completions
left out of the update: truncated with ``mask_truncated``, or in a zero-variance group that
``filter_zero_std`` dropped). The rows are the first of the step in sampling order (a prompt's
samples together). On resume the file is cut back to the checkpoint's step, as metrics.jsonl is,
so no step appears twice; a fresh run starts it empty. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import os

from .metrics import truncate_jsonl

FILE = "completions.jsonl"


def _num(v):
    """A JSON-safe number: non-finite -> None."""
    if v is None:
        return None
    v = float(v)
    return round(v, 8) if math.isfinite(v) else None


class CompletionLog:
    """Appends sampled rows to ``run_dir/completions.jsonl`` every ``every`` steps (0 = never)."""

    def __init__(self, run_dir: str, every: int, rows: int, enabled: bool | None = None):
        self.path = os.path.join(run_dir, FILE)
        self.every, self.rows, self.enabled = int(every), int(rows), enabled
        self._started = False

    @classmethod
    def for_run(cls, train_cfg, enabled: bool | None = None) -> "CompletionLog":
        """``enabled`` None: decided at :meth:`start`, on the main process only (data parallel starts
        after the recipe is built)."""
        return cls(train_cfg.output_dir, train_cfg.log_completions, train_cfg.log_completions_rows, enabled)

    def start(self, done: int, log=None) -> None:
        """Before the first step of this process (``done`` steps already trained): drop rows of later
        steps (a resumed run re-samples them; a fresh run, ``done`` = 0, starts empty)."""
        if self.enabled is None:
            from .common import dist_rank

            self.enabled = dist_rank() == 0
        if self.enabled and not self._started:
            truncate_jsonl(self.path, done, log)
        self._started = True

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based, as in metrics.jsonl) is logged."""
        return self.enabled and self.every > 0 and step % self.every == 0

    def write(self, step: int, prompts: list, completions: list[str], rewards: list[float],
              per_source: dict[str, list[float]] | None = None, advantages: list | None = None) -> int:
        """Append up to ``rows`` rows of step ``step``; returns how many were written."""
        if not self.due(step):
            return 0
        n = min(self.rows, len(completions))
        with open(self.path, "a", encoding="utf-8") as f:
            for i in range(n):
                row = {"step": step, "prompt": prompts[i], "completion": completions[i], "reward": _num(rewards[i])}
                for name, vals in (per_source or {}).items():
                    row[f"reward/{name}"] = _num(vals[i])
                if advantages is not None:
                    row["advantage"] = _num(advantages[i])
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False, default=str) + "\n")
        return n

    def log_rollout(self, step_index: int, exs: list, n: int, texts: list[str], res, adv=None, mask=None) -> None:
        """Online RL: called by every step's rollout (``step_index`` 0-based) with the step's prompt
        examples (``n`` samples each), their completions, the reward result and, optionally, the
        per-token advantages ``adv`` (N, T) and the mask of the tokens the update uses."""
        self.start(step_index)
        if not self.due(step_index + 1):
            return
        prompts = [ex.extra.get("prompt") for ex in exs for _ in range(n)]
        seq_adv = None
        if adv is not None and mask is not None:
            k = min(self.rows, len(texts))
            cnt = mask[:k].sum(1)
            mean = (adv[:k] * mask[:k]).sum(1) / cnt.clamp(min=1)
            seq_adv = [float(a) if c > 0 else None for a, c in zip(mean.tolist(), cnt.tolist())]
            seq_adv += [None] * (len(texts) - k)
        self.write(step_index + 1, prompts, texts, res.total, res.per_source, seq_adv)

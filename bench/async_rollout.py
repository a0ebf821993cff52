"""``rollout.async`` against the synchronous loop: GRPO step time on the embedded model, side by side.

    python bench/async_rollout.py [--steps 5 --repeats 2 --threads 2]

Runs the shipped ``grpo_arithmetic`` recipe (SmolLM2-135M, 4 prompts x 8 samples of up to 48
tokens per step, no evaluation) for ``--steps`` steps, synchronously and with ``rollout.async
true``, alternating, ``--repeats`` times each, every run in its own process (so peak RSS is its
own). Step 1 of an async run samples synchronously (nothing was sampled ahead yet) and step N
starts no rollout for a next step, so the table reports steps 2..N-1: the median step time and its ratio to the synchronous run's, the
median seconds spent generating (in the worker, for async), the median seconds the main thread
waited for the rollout (async: the part of generation the update did not hide), and the peak
RSS. The CPU use of other processes seen before the run is printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler_dtype import busy_processes  # noqa: E402


def run(mode: str, steps: int, threads: int, out: str) -> list[dict]:
    cmd = [sys.executable, "-m", "rlhfkit.cli", "grpo", "--config", "grpo_arithmetic",
           "--train.max_steps", str(steps), "--train.output_dir", out, "--train.overwrite", "true",
           "--train.eval_steps", "0", "--train.save_steps", "0", "--task_eval_size", "0",
           "--train.progress", "false", "--train.tensorboard", "false", "--train.threads", str(threads),
           "--rollout.async", "true" if mode == "async" else "false"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{mode} run failed:\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [x for x in map(json.loads, f) if "train/step_time_s" in x]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    busy = busy_processes()
    print("other processes using CPU:", "; ".join(busy) if busy else "none")
    res: dict = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for mode in ("sync", "async"):
                recs = run(mode, a.steps, a.threads, os.path.join(tmp, f"{mode}{rep}"))
                res[mode] += recs[1:-1]
                print(f"  {mode} run {rep + 1}: step times " + ", ".join(f"{x['train/step_time_s']:.1f}" for x in recs))
    med = {m: statistics.median(x["train/step_time_s"] for x in r) for m, r in res.items()}
    print(f"\nGRPO grpo_arithmetic, {a.steps} steps x {a.repeats} runs per mode, threads {a.threads}; steps 2..{a.steps - 1}")
    print(f"{'mode':6} {'step s':>7} {'ratio':>6} {'gen s':>6} {'wait s':>7} {'reward':>7} {'peak RSS GB':>12}")
    for m, r in res.items():
        gen = statistics.median(x["rollout/gen_seconds"] for x in r)
        wait = statistics.median(x.get("rollout/wait_seconds", x["rollout/gen_seconds"]) for x in r)
        rew = statistics.mean(x["rollout/reward"] for x in r)
        rss = max(x["train/peak_rss_gb"] for x in r)
        print(f"{m:6} {med[m]:7.2f} {med[m] / med['sync']:6.2f} {gen:6.2f} {wait:7.2f} {rew:7.3f} {rss:12.2f}")


if __name__ == "__main__":
    main()

"""Peak memory per process: FSDP2 (``train.fsdp``) vs DDP, 2 processes, the embedded model.

Both runs are the same SFT job (full fine-tuning, AdamW, ``--steps`` steps of ``--batch`` examples per
process) launched by ``torch.distributed.run`` with 2 processes on the CPU (gloo). Reported per
process: the peak resident memory of the whole process (``ru_maxrss`` at exit: loading, training
and writing ``final/``) and, for rank 0, the peak by the end of the last training step (the
``train/peak_rss_gb`` of its metrics). Run it with nothing else running.

    python bench/fsdp_memory.py --steps 3 --batch 2
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(out: str, argv: list[str]) -> None:
    """One training process: the CLI, then its peak RSS into ``out/rank{R}.json``."""
    rank = int(os.environ.get("RANK", "0"))

    def record():
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}, f)

    atexit.register(record)
    from rlhfkit.cli import main

    sys.argv = ["rlhfkit"] + argv
    code = main()
    sys.exit(code or 0)


def run(mode: str, data: str, work: str, args) -> dict:
    out = os.path.join(work, mode)
    os.makedirs(out, exist_ok=True)
    cli = ["sft", "--model.name", args.model, "--data.path", data, "--train.max_steps", str(args.steps),
           "--train.batch_size", str(args.batch), "--train.output_dir", os.path.join(out, "run"),
           "--train.progress", "false", "--train.tensorboard", "false", "--train.threads", "1",
           "--train.eval_steps", "0", "--train.fsdp", "true" if mode == "fsdp" else "false", *args.extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.abspath(__file__), "--child", out, "--", *cli]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{p.stderr[-3000:]}")
    ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in (0, 1)]
    with open(os.path.join(out, "run", "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f if "train/loss" in line]
    return {"mode": mode, "wall_s": wall, "peak_rss_gb": [r["peak_rss_gb"] for r in ranks],
            "rank0_peak_by_last_step_gb": max(s["train/peak_rss_gb"] for s in steps),
            "loss": [s["train/loss"] for s in steps]}


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        return child(sys.argv[i + 1], sys.argv[sys.argv.index("--") + 1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more rlhfkit sft arguments for both runs")
    args = ap.parse_args()
    from rlhfkit.tasks.arithmetic import make_problems, sft_rows

    with tempfile.TemporaryDirectory(prefix="fsdp-mem-") as work:
        data = os.path.join(work, "sft.jsonl")
        with open(data, "w") as f:
            for r in sft_rows(make_problems(64, seed=0)):
                f.write(json.dumps(r) + "\n")
        res = [run(m, data, work, args) for m in ("ddp", "fsdp")]
    for r in res:
        print(f"{r['mode']:4s}  peak RSS per process (whole run) {r['peak_rss_gb'][0]:.2f} / {r['peak_rss_gb'][1]:.2f} GB"
              f"  rank 0 by the last step {r['rank0_peak_by_last_step_gb']:.2f} GB  wall {r['wall_s']:.0f} s  "
              f"loss {' '.join(f'{x:.4f}' for x in r['loss'])}")
    d, f_ = res
    print(f"fsdp/ddp: whole-run peak rank 0 {f_['peak_rss_gb'][0] / d['peak_rss_gb'][0]:.2f}, rank 1 "
          f"{f_['peak_rss_gb'][1] / d['peak_rss_gb'][1]:.2f}; by the last step (rank 0) "
          f"{f_['rank0_peak_by_last_step_gb'] / d['rank0_peak_by_last_step_gb']:.2f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

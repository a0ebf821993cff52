"""PPO with and without PPO-ptx, side by side on the embedded model: does the SFT term mixed into
every update pay the alignment tax?

    python examples/ppo_ptx.py --steps 20 --ptx_coef 0.5

Both runs are the shipped ``ppo_arithmetic`` recipe (verifier reward, critic, k1 KL in the reward)
cut to ``--steps`` steps, from the same seed; the second adds ``ptx_coef`` × the SFT loss of
``ptx_batch_size`` rows of general chat per update (the chosen replies of HH-RLHF harmless rows
``--ptx_rows``). Each final policy is then measured against the starting model with
``rlhfkit eval --tax`` (docs/algorithms.md#alignment-tax): the token NLL of the built-in
general-text set (not the ptx data: another source) and greedy exact match on held-out
arithmetic problems, each with its paired-bootstrap 95 % interval.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rlhfkit.config import ModelConfig, build_config
from rlhfkit.evaluate import EvalConfig
from rlhfkit.evaluate import run as eval_run
from rlhfkit.shipped import resolve_config
from rlhfkit.train import rl

sys.path.insert(0, os.path.dirname(__file__))
from paft_compare import HH, write_sft_file  # noqa: E402  (HH chosen replies as prompt/completion rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ptx_coef", type=float, default=0.5)
    ap.add_argument("--ptx_rows", default="0:400")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--eval_problems", type=int, default=64)
    ap.add_argument("--out", default="runs/ppo_ptx")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ptx = write_sft_file(HH, args.ptx_rows, os.path.join(args.out, "ptx.jsonl"))
    rows = []
    for coef in (0.0, args.ptx_coef):
        name = f"ptx_{coef:g}"
        over = [("model.name", args.base), ("train.max_steps", str(args.steps)), ("train.eval_steps", "0"),
                ("train.save_steps", "0"), ("train.threads", str(args.threads)), ("train.progress", "false"),
                ("train.overwrite", "true"), ("train.output_dir", os.path.join(args.out, name)),
                ("eval_samples", "0"), ("task_eval_size", "0")]
        if coef > 0:
            over += [("ptx_coef", str(coef)), ("ptx_path", ptx)]
        cfg = build_config(rl.PPOConfig, resolve_config("ppo_arithmetic"), over)
        t0 = time.time()
        rl.run(cfg, log=lambda *a: None)
        train_s = time.time() - t0
        recs = [json.loads(x) for x in open(os.path.join(args.out, name, "metrics.jsonl"))]
        tail = [r["rollout/reward"] for r in recs if "rollout/reward" in r][-5:]
        ev = EvalConfig(model=ModelConfig(name=os.path.join(args.out, name, "final")), reference=args.base,
                        tax=True, tax_task="arithmetic", task_size=args.eval_problems,
                        output_dir=os.path.join(args.out, name, "tax"), threads=args.threads)
        tax = eval_run(ev, log=lambda *a: None)["tax"]
        row = {"ptx_coef": coef, "train_s": round(train_s), "reward_last5": sum(tail) / len(tail),
               "nll": tax["nll"], "task": tax["task"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| PPO, {args.steps} steps | rollout reward, last 5 steps | held-out text NLL tax (95 % CI) | "
          "arithmetic exact-match tax (95 % CI) | train wall |")
    print("|---|---|---|---|---|")
    for r in rows:
        n, t = r["nll"], r["task"]
        print(f"| ptx_coef {r['ptx_coef']:g} | {r['reward_last5']:.3f} | {n['tax']:+.4f} [{n['ci_low']:+.4f}, "
              f"{n['ci_high']:+.4f}] | {t['tax']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] | {r['train_s']} s |")


if __name__ == "__main__":
    main()

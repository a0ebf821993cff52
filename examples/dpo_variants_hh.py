"""Short DPO-family runs on HH-RLHF harmless from the embedded model, one loss per run, judged on
held-out pairs none of them trained on: implicit-reward accuracy β·(h(y_w) − h(y_l)) > 0 with the
starting model as π_ref (ties ½), before and after.

    python examples/dpo_variants_hh.py --steps 20 --losses sigmoid sigmoid_norm bco_pair sigmoid,bco_pair,sft

Each run is the shipped ``dpo_hh`` recipe (lower 20 of 30 layers frozen, reference log-probs
precomputed) cut to ``--steps`` steps of 16 pairs from rows 0:(16·steps), evaluated on rows
``--eval_rows``. A list loss (MPO) takes ``--weights`` (default 0.8,0.2,1.0). ``--set KEY=VALUE``
(repeatable) adds a config key to every run, e.g. ``--set use_weighting=true`` (WPO) or
``--set f_divergence=js``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from rlhfkit.config import build_config
from rlhfkit.shipped import resolve_config
from rlhfkit.train import dpo

BETAS = {"sigmoid_norm": 5.0}  # length-normalised log-ratios are ~|y| times smaller


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--losses", nargs="+", default=["sigmoid", "sigmoid_norm", "bco_pair", "sigmoid,bco_pair,sft"])
    ap.add_argument("--weights", default="0.8,0.2,1.0")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                   "hh-rlhf-harmless", "test.jsonl.gz"))
    ap.add_argument("--eval_rows", default="2000:2160")
    ap.add_argument("--out", default="runs/dpo_variants_hh")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config key for every run")
    args = ap.parse_args()
    extra = [tuple(kv.split("=", 1)) for kv in args.set]
    tag = "".join(f"+{k}={v}" for k, v in extra)
    results = []
    for loss in args.losses:
        over = [("loss_type", loss), ("data.path", args.data), ("data.rows", f"0:{16 * args.steps}"),
                ("data.eval_rows", args.eval_rows), ("train.max_steps", str(args.steps)),
                ("train.eval_steps", str(args.steps)), ("train.save_steps", "0"), ("train.lr", str(args.lr)),
                ("train.threads", str(args.threads)), ("train.progress", "false"), ("train.overwrite", "true"),
                ("train.output_dir", os.path.join(args.out, loss.replace(",", "+") + tag))] + extra
        if "," in loss:
            over.append(("loss_weights", args.weights))
        if loss in BETAS:
            over.append(("beta", str(BETAS[loss])))
        cfg = build_config(dpo.DPOConfig, resolve_config("dpo_hh"), over)
        t0 = time.time()
        res = dpo.run(cfg, log=lambda *a: None)
        row = {"loss": loss + "".join(f" {k}={v}" for k, v in extra), "beta": cfg.beta, "steps": args.steps,
               "accuracy_before": res["initial"]["eval/reward_accuracy"],
               "accuracy_after": res["final"]["eval/reward_accuracy"],
               "margin_after": res["final"]["eval/reward_margin"], "wall_s": round(time.time() - t0, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n| loss | β | held-out accuracy before | after {args.steps} steps | margin after | wall |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['loss']} | {r['beta']:g} | {r['accuracy_before']:.3f} | **{r['accuracy_after']:.3f}** | "
              f"{r['margin_after']:.4f} | {r['wall_s']:.0f} s |")
    print(f"peak RSS {rss:.1f} GB")


if __name__ == "__main__":
    main()

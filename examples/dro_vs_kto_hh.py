"""DRO beside KTO on the same thumbs-up / thumbs-down rows of HH-RLHF harmless, from the embedded
model, judged on held-out pairs neither trained on: implicit-reward accuracy h(y_w) − h(y_l) > 0
with the starting model as π_ref (ties ½), before and after.

    python examples/dro_vs_kto_hh.py --steps 20 --methods dro kto

Rows 0:``--pairs`` of the HH harmless test split, each pair split into a thumbs-up (chosen) and a
thumbs-down (rejected) row; ``--steps`` steps of ``--batch`` rows (the same rows, in the same
order, for both methods); held-out pairs ``--eval_rows``. Each run is its shipped recipe (lower 20
of 30 layers frozen, reference log-probs precomputed): ``kto_hh`` (β 0.1) and ``dro_hh`` (τ 1,
thumbs 1 / 0, V(x) a linear head on the reference's last-prompt-token state, value lr 1e-3);
``--value_model separate`` trains a second LM as V instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from rlhfkit.config import build_config
from rlhfkit.shipped import resolve_config
from rlhfkit.train import dro, kto

RECIPES = {"dro": (dro, dro.DROConfig, "dro_hh"), "kto": (kto, kto.KTOConfig, "kto_hh")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["dro", "kto"], choices=sorted(RECIPES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=320)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--value_model", default="reference_head", choices=dro.VALUE_MODELS)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                   "hh-rlhf-harmless", "test.jsonl.gz"))
    ap.add_argument("--eval_rows", default="2000:2160")
    ap.add_argument("--out", default="runs/dro_vs_kto_hh")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results = []
    for method in args.methods:
        module, cls, shipped = RECIPES[method]
        over = [("data.path", args.data), ("data.rows", f"0:{args.pairs}"), ("data.eval_rows", args.eval_rows),
                ("train.batch_size", str(args.batch)), ("train.max_steps", str(args.steps)),
                ("train.eval_steps", str(args.steps)), ("train.save_steps", "0"), ("train.lr", str(args.lr)),
                ("train.threads", str(args.threads)), ("train.progress", "false"), ("train.overwrite", "true"),
                ("train.output_dir", os.path.join(args.out, method))]
        if method == "dro":
            over += [("tau", str(args.tau)), ("value_model", args.value_model)]
        cfg = build_config(cls, resolve_config(shipped), over)
        records = []
        t0 = time.time()
        res = module.run(cfg, log=lambda *a: None)
        wall = time.time() - t0
        with open(os.path.join(cfg.train.output_dir, "metrics.jsonl")) as f:
            records = [json.loads(x) for x in f if '"train/loss"' in x]
        row = {"method": method, "steps": args.steps, "rows_per_step": args.batch,
               "strength": cfg.tau if method == "dro" else cfg.beta,
               "accuracy_before": res["initial"]["eval/reward_accuracy"],
               "accuracy_after": res["final"]["eval/reward_accuracy"],
               "margin_after": res["final"]["eval/reward_margin"],
               "loss_first": records[0]["train/loss"], "loss_last": records[-1]["train/loss"],
               "wall_s": round(wall, 1)}
        if method == "dro":
            row["value_explained_variance_last"] = records[-1].get("train/value/explained_variance")
        results.append(row)
        print(json.dumps(row), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n| method | τ / β | held-out accuracy before | after {args.steps} steps | margin after | "
          "train loss first → last | wall |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['strength']:g} | {r['accuracy_before']:.3f} | **{r['accuracy_after']:.3f}** | "
              f"{r['margin_after']:.4f} | {r['loss_first']:.4f} → {r['loss_last']:.4f} | {r['wall_s']:.0f} s |")
    print(f"peak RSS {rss:.1f} GB")


if __name__ == "__main__":
    main()

"""Held-out preference accuracy of a trained policy measured against the model it started from.

    python examples/pairs_vs_initial.py --policy runs/simpo_hh2/final --initial smollm2-135m \
        --data ../shared/data/hh-rlhf-harmless/test.jsonl.gz --rows 2000:2312

Reference-free losses (SimPO, ORPO) have no π_ref during training, so their own accuracy is
the absolute one (length-normalised log π(y_w) > log π(y_l)). This script also reports the
DPO-style implicit-reward accuracy with the *initial* model as reference, h = log π − log
π_init, i.e. whether training moved probability toward the chosen responses — the same
measure the DPO/IPO/KTO runs report, so all losses can be compared on one scale.
"""

from __future__ import annotations

import argparse
import json

import torch

from rlhfkit.config import DataConfig, TrainConfig
from rlhfkit.data.pipeline import load_records
from rlhfkit.data.tokenize import tokenize_records
from rlhfkit.models.loading import load_model
from rlhfkit.models.reference import Reference
from rlhfkit.train.common import make_collate
from rlhfkit.train.dpo import DPOConfig, evaluate_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--initial", default="smollm2-135m")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", default="")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max_length", type=int, default=384)
    ap.add_argument("--max_prompt_length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy, tok = load_model(args.policy)
    initial, _ = load_model(args.initial)
    data = DataConfig(path=args.data, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                      prompt_truncation="left", skip_invalid=True)
    exs = tokenize_records(load_records(args.data, args.rows, data, ("preference",), print), tok, data,
                           source=args.data, log=print)
    train = TrainConfig()
    collate_fn = make_collate(tok, data, train)
    cfg = DPOConfig(beta=args.beta, train=train)
    with torch.no_grad():
        vs_initial = evaluate_pairs(policy.eval(), Reference("model", model=initial), exs, collate_fn, 32, cfg)
        own = evaluate_pairs(policy, Reference("none"), exs, collate_fn, 32, cfg)
        before = evaluate_pairs(initial, Reference("none"), exs, collate_fn, 32, cfg)
    out = {"pairs": len(exs), "accuracy_vs_initial": vs_initial["reward_accuracy"],
           "margin_vs_initial": vs_initial["reward_margin"],
           "length_normalised_accuracy_before": before["reward_accuracy"],
           "length_normalised_accuracy_after": own["reward_accuracy"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Where an rlhfkit step spends its time: torch.profiler top ops for one stage of the bench.

    python bench/profile_step.py dpo [--threads 2] [--rows 12]

Builds the same rlhfkit trainer as ``bench/<stage>.py`` (same model, data and settings),
runs one warm-up step, profiles the next and prints the top ops by self CPU time, plus the
positions computed per step against the real tokens.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["sft", "rm", "dpo", "grpo"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=15)
    a = ap.parse_args()
    mod = importlib.import_module(a.stage)
    b = C.base_parser(mod.STAGE, **mod.DEFAULTS).parse_args([])
    b.threads = a.threads
    rows, _, _ = mod.bench_data(b)
    b.data = C.write_jsonl(rows, os.path.join(tempfile.mkdtemp(prefix="rlhfkit-profile-"), "data.jsonl"))
    b.model = C.model_dir()
    C.child_setup(a.threads)
    trainer, model, _ = mod.rlhfkit_trainer(b)
    trainer._train_step(0)
    if a.stage != "grpo":
        batch = trainer.micro_batch(1)
        print(f"step 1: {batch.input_ids.shape[0]} rows x {batch.input_ids.shape[1]} = "
              f"{batch.input_ids.numel()} positions for {batch.num_real_tokens} real tokens, "
              f"LM head on {batch.tgt_pos.numel()} targets")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer._train_step(1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

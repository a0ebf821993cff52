"""Peak memory of LoRA DPO with the reference as "adapters disabled" vs a separate frozen copy.

    python bench/dpo_reference_memory.py [--rows 0:64] [--steps 4]

Runs the same LoRA DPO job (embedded SmolLM2-135M, HH-RLHF harmless pairs) twice, each in a
fresh process, and prints peak RSS and seconds per step for both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HH = os.path.join(HERE, "..", "..", "shared", "data", "hh-rlhf-harmless", "test.jsonl.gz")


def child(mode: str, rows: str, steps: int, out: str) -> None:
    from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
    from rlhfkit.train import dpo

    cfg = dpo.DPOConfig(
        model=ModelConfig(lora=LoraConfig(r=16, alpha=32)),
        data=DataConfig(path=HH, rows=rows, max_length=384, max_prompt_length=128,
                        prompt_truncation="left", skip_invalid=True),
        train=TrainConfig(output_dir=out, max_steps=steps, batch_size=8, lr=1e-4, progress=False,
                          tensorboard=False, threads=2), reference=mode)
    t0 = time.time()
    trainer = dpo.build(cfg, log=lambda *a: None)
    t1 = time.time()
    for s in range(steps):
        trainer._train_step(s)
    t2 = time.time()
    print(json.dumps({"mode": mode, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "setup_s": t1 - t0, "s_per_step": (t2 - t1) / steps}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="0:64")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--child", default="")
    ap.add_argument("--out", default="/tmp/rlhfkit-bench-dpo-ref")
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.rows, a.steps, os.path.join(a.out, a.child))
    res = {}
    for mode in ("adapters", "model"):
        p = subprocess.run([sys.executable, __file__, "--child", mode, "--rows", a.rows,
                            "--steps", str(a.steps), "--out", a.out], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(p.stderr[-3000:])
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        r = res[mode]
        print(f"reference={mode:9s} peak_rss={r['peak_rss_gb']:.2f} GB  s/step={r['s_per_step']:.2f}")
    print(f"memory_ratio(adapters/model)={res['adapters']['peak_rss_gb'] / res['model']['peak_rss_gb']:.3f} "
          f"saved={res['model']['peak_rss_gb'] - res['adapters']['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()

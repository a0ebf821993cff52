"""GRPO with the exact fp32 sampler vs a bf16 sampling copy corrected by truncated IS.

    python examples/cheap_sampler.py [--steps 16] [--out runs/cheap_sampler]

Two GRPO runs on the generated arithmetic task from the embedded model, identical but for
``runtime.sampler_dtype`` (fp32 | bf16; with bf16 ``correction.mode: auto`` applies token-level
TIS with cap 2), run one after the other in this process. Reported side by side: held-out greedy
exact match of each final policy (64 problems disjoint from training, decoded from the exact fp32
weights), generation tokens/s and step time over the run (mean of steps 2..N: step 1 includes
the first weight copy), and the mismatch statistics of the bf16 run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def run(dtype: str, a) -> dict:
    from rlhfkit.config import ModelConfig, TrainConfig
    from rlhfkit.train import rl

    out = os.path.join(a.out, dtype)
    cfg = rl.RLConfig(model=ModelConfig(name="smollm2-135m"), task="arithmetic", task_size=2000, task_eval_size=64,
                      rewards=["arithmetic"], kl_coef=0.0, reference="none", eval_samples=0,
                      train=TrainConfig(output_dir=out, overwrite=True, max_steps=a.steps, batch_size=4, lr=1e-5,
                                        lr_scheduler="constant", warmup_ratio=0.0, progress=False, seed=1))
    cfg.rollout.num_generations = 8
    cfg.rollout.max_new_tokens = 48
    cfg.runtime.sampler_dtype = dtype
    t0 = time.perf_counter()
    res = rl.run(cfg, log=lambda *x: None)
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "train/loss" in r]
    later = steps[1:] or steps
    mean = (lambda k: sum(r.get(k, 0.0) for r in later) / len(later))
    return {"em_before": res["initial"]["eval/greedy/arithmetic"], "em_after": res["final"]["eval/greedy/arithmetic"],
            "gen_tok_s": mean("rollout/gen_tokens_per_s"), "step_s": mean("train/step_time_s"),
            "gen_s": mean("rollout/gen_seconds"), "train_reward_last4": sum(r["rollout/reward"] for r in steps[-4:]) / 4,
            "abs_logp_diff": mean("train/mismatch/abs_logp_diff"), "capped_frac": mean("train/mismatch/capped_frac"),
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default="runs/cheap_sampler")
    a = ap.parse_args()
    got = {d: run(d, a) for d in ("fp32", "bf16")}
    print(f"\nGRPO, arithmetic task, {a.steps} steps x 4 prompts x 8 samples, embedded model")
    print(f"{'':38}{'fp32 sampler':>16}{'bf16 sampler + TIS':>22}")
    rows = [("held-out greedy exact match, start", "em_before", "{:.3f}"),
            ("held-out greedy exact match, end", "em_after", "{:.3f}"),
            ("training reward, last 4 steps", "train_reward_last4", "{:.3f}"),
            ("generation tokens/s (steps 2..N)", "gen_tok_s", "{:.1f}"),
            ("generation s/step", "gen_s", "{:.2f}"), ("step s", "step_s", "{:.2f}"),
            ("mean |logp_sampler - logp_trainer|", "abs_logp_diff", "{:.4f}"),
            ("tokens with capped IS weight", "capped_frac", "{:.4f}"), ("wall s", "wall_s", "{:.0f}")]
    for name, k, fmt in rows:
        print(f"{name:38}{fmt.format(got['fp32'][k]):>16}{fmt.format(got['bf16'][k]):>22}")
    print(f"bf16/fp32 generation speed: {got['bf16']['gen_tok_s'] / got['fp32']['gen_tok_s']:.2f}x, "
          f"step time ratio {got['bf16']['step_s'] / got['fp32']['step_s']:.2f}")


if __name__ == "__main__":
    main()

"""Online-RL loss trajectories on a tiny random model, saved or compared.

    python bench/rl_trajectories.py --save before.json      # record
    python bench/rl_trajectories.py --compare before.json   # same configs, report differences

Each config runs a few GRPO / PPO / RLOO / REINFORCE++ steps from the same seed; every
per-step metric that is not a timing or a memory figure is recorded. ``--compare`` prints
the largest absolute difference per config and key and exits 1 above ``--tol``. Used to
check that a change to the online-RL code keeps the mathematics (same losses to 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch  # noqa: E402

SKIP = ("time", "seconds", "per_s", "rss", "mem_gb", "lr")
FORMAT = {"type": "verifier", "verifier": "format", "pattern": "^ "}  # varies over random samples

CONFIGS = {
    "grpo_reuse": dict(advantage="grpo", G=4, kl_coef=0.05),
    "grpo_epochs": dict(advantage="grpo", G=4, kl_coef=0.05, num_iterations=2, num_minibatches=2),
    "grpo_ptx_target_kl": dict(advantage="grpo", G=4, kl_coef=0.05, num_iterations=3, target_kl=1e-4,
                               ptx_coef=0.5),
    "dr_grpo": dict(advantage="grpo", G=4, loss_agg="dr_grpo", scale_rewards=False, num_iterations=2),
    "dapo": dict(advantage="grpo", G=4, loss_agg="dapo", clip_eps_high=0.28, filter_zero_std=True,
                 num_iterations=2),
    "ppo_gae": dict(advantage="gae", G=1, kl_coef=0.05, num_iterations=2, num_minibatches=2),
    "rloo": dict(advantage="rloo", G=4, kl_coef=0.05, num_iterations=2),
    "reinforce_pp": dict(advantage="reinforce_pp", G=2, kl_coef=0.05, num_iterations=2),
    "reinforce_baseline": dict(advantage="reinforce_baseline", G=4, kl_coef=0.05),
}


def run_one(name: str, kw: dict, tiny: str, ptx: str, steps: int) -> list[dict]:
    from rlhfkit.config import ModelConfig, TrainConfig
    from rlhfkit.train import rl

    kw = dict(kw)
    G = kw.pop("G")
    advantage = kw.pop("advantage")
    cls = rl.PPOConfig if advantage == "gae" else rl.RLConfig
    with tempfile.TemporaryDirectory() as out:
        cfg = cls(model=ModelConfig(name=tiny), task="arithmetic", task_size=16, task_eval_size=0,
                  advantage=advantage, rewards=[FORMAT],
                  train=TrainConfig(output_dir=out, max_steps=steps, batch_size=4, lr=1e-3, progress=False,
                                    tensorboard=False, seed=3))
        cfg.rollout.num_generations = G
        cfg.rollout.max_new_tokens = 8
        if kw.get("ptx_coef"):
            cfg.ptx_path = ptx
        for k, v in kw.items():
            setattr(cfg, k, v)
        rl.run(cfg, log=lambda *a: None)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            recs = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not any(s in k for s in SKIP)}
            for r in recs if "train/loss" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--only", default="", help="comma-separated config names")
    a = ap.parse_args()
    torch.set_num_threads(2)
    from rlhfkit.models.loading import load_tokenizer, tiny_model

    tok = load_tokenizer("smollm2-135m")
    names = [n for n in CONFIGS if not a.only or n in a.only.split(",")]
    with tempfile.TemporaryDirectory() as d:
        tiny = os.path.join(d, "tiny")
        tiny_model(tok, seed=0).save_pretrained(tiny)
        tok.save_pretrained(tiny)
        ptx = os.path.join(d, "ptx.jsonl")
        with open(ptx, "w") as f:
            for i in range(8):
                f.write(json.dumps({"prompt": f"Say {i}.", "completion": f" {i} {i + 1} {i + 2}"}) + "\n")
        got = {n: run_one(n, CONFIGS[n], tiny, ptx, a.steps) for n in names}
    if a.save:
        with open(a.save, "w") as f:
            json.dump(got, f, indent=1)
        print(f"saved {len(got)} configs to {a.save}")
    if a.compare:
        with open(a.compare) as f:
            ref = json.load(f)
        worst = 0.0
        for n in names:
            if n not in ref:
                print(f"{n}: not in {a.compare}")
                continue
            diffs: dict[str, float] = {}
            missing = set()
            for r0, r1 in zip(ref[n], got[n]):
                for k, v in r0.items():
                    if k not in r1:
                        missing.add(k)
                        continue
                    diffs[k] = max(diffs.get(k, 0.0), abs(float(v) - float(r1[k])))
            added = sorted({k for r in got[n] for k in r} - {k for r in ref[n] for k in r})
            big = {k: v for k, v in diffs.items() if v > a.tol}
            worst = max([worst] + list(diffs.values()))
            print(f"{n}: steps {len(ref[n])}/{len(got[n])}, max |diff| {max(diffs.values(), default=0):.2e}"
                  + (f", over tol: {big}" if big else "") + (f", missing: {sorted(missing)}" if missing else "")
                  + (f", new keys: {added}" if added else ""))
        print(f"worst |diff| {worst:.2e} (tol {a.tol})")
        sys.exit(1 if worst > a.tol else 0)


if __name__ == "__main__":
    main()

"""Multi-turn RL with a tool on the embedded model: word problems and a calculator.

    python examples/calculator_tool.py [--out runs/calculator] [--steps 30]

1. SFT on demonstrations of mixed quality: half solve the problem with calculator calls (one
   call per step, the tool's result, then the answer), half answer at once with a rounded
   mental estimate ("Roughly 984 * 514 is about 506000. The answer is 506000."), as a hurried
   person would; the estimate is wrong.
2. GRPO in the calculator environment (``env: calculator``): the policy's turns are sampled,
   tool calls run, their results are appended as tool messages (out of the loss), and the
   episode's reward is 1 for the right final answer.
3. Held-out word problems (other numbers, never trained on), sampled at temperature 1 from the
   SFT model and from the GRPO policy: the fraction of episodes that call the tool, the fraction
   whose calls all succeed, and the answer accuracy, with 95 % intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def estimate_row(r: dict, rng) -> dict:
    """A hurried answer: the first product rounded to 3 significant digits, stated as the answer."""
    from rlhfkit.envs.calculator import CALCULATOR, CALCULATOR_SYSTEM
    from rlhfkit.envs.tools import with_tools

    start = [{"role": "system", "content": CALCULATOR_SYSTEM}, {"role": "user", "content": r["prompt"]}]
    messages, _ = with_tools(start, [CALCULATOR], native=False)
    n = int(r["answer"])
    mag = 10 ** max(0, len(str(abs(n))) - 3)
    guess = round(n / mag) * mag + mag * rng.choice([-2, -1, 1, 2])
    messages.append({"role": "assistant", "content": f"Roughly, that is about {guess}. The answer is {guess}."})
    return {"messages": messages}


def wilson(k: float, n: int) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p, z = k / n, 1.96
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def held_out(model_dir: str, rows: list[dict], samples: int, max_new: int, seed: int) -> dict:
    import torch

    from rlhfkit.envs.calculator import CalculatorEnv
    from rlhfkit.envs.episodes import run_episodes
    from rlhfkit.models.loading import load_model
    from rlhfkit.rl.rollout import HFBackend, SamplingParams

    model, tok = load_model(model_dir)
    torch.manual_seed(seed)
    eps = run_episodes(HFBackend(model, tok), tok, CalculatorEnv(max_turns=4), rows,
                       SamplingParams(max_new_tokens=max_new, temperature=1.0, n=samples))
    n = len(eps)
    called = [e.info.get("tool_calls", 0) > 0 for e in eps]
    clean = [c and e.info.get("tool_errors", 0) == 0 for c, e in zip(called, eps)]
    correct = [bool(e.info.get("correct")) for e in eps]
    out = {}
    for name, v in (("tool_use", called), ("tool_success", clean), ("accuracy", correct)):
        k = sum(v)
        out[name] = (k / n, *wilson(k, n))
    out["n"] = n
    out["turns"] = sum(e.turns for e in eps) / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/calculator")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sft_rows", type=int, default=48)
    ap.add_argument("--sft_epochs", type=int, default=2)
    ap.add_argument("--eval_rows", type=int, default=48)
    ap.add_argument("--samples", type=int, default=2)
    a = ap.parse_args()
    import random

    from rlhfkit.config import DataConfig, ModelConfig, TrainConfig
    from rlhfkit.tasks.word_problems import make_word_problems, tool_demonstrations
    from rlhfkit.train import rl, sft

    t0 = time.perf_counter()
    rows = make_word_problems(a.sft_rows + 256 + a.eval_rows, seed=11)
    sft_rows, rl_rows, eval_rows = rows[:a.sft_rows], rows[a.sft_rows:a.sft_rows + 256], rows[-a.eval_rows:]
    rng = random.Random(5)
    demos = [tool_demonstrations([r])[0] if i % 2 == 0 else estimate_row(r, rng) for i, r in enumerate(sft_rows)]
    os.makedirs(a.out, exist_ok=True)
    paths = {}
    for name, data in (("sft", demos), ("prompts", [{"prompt": r["prompt"], "answer": r["answer"]} for r in rl_rows])):
        paths[name] = os.path.join(a.out, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in data)

    sft.run(sft.SFTConfig(model=ModelConfig(name="smollm2-135m"), data=DataConfig(path=paths["sft"], max_length=512),
                          train=TrainConfig(output_dir=f"{a.out}/sft", overwrite=True, epochs=a.sft_epochs, batch_size=8, lr=5e-5,
                                            warmup_ratio=0.1, progress=False)))
    t_sft = time.perf_counter() - t0
    before = held_out(f"{a.out}/sft/final", eval_rows, a.samples, 64, seed=3)
    print("[calculator] SFT model on held-out problems:", before, flush=True)

    cfg = rl.RLConfig(model=ModelConfig(name=f"{a.out}/sft/final"), data=DataConfig(path=a.out + "/prompts.jsonl"),
                      env="calculator", env_max_turns=4, kl_coef=0.0, reference="model", eval_samples=0,
                      train=TrainConfig(output_dir=f"{a.out}/grpo", overwrite=True, max_steps=a.steps, batch_size=2,
                                        lr=1e-5, lr_scheduler="constant", warmup_ratio=0.0, progress=False))
    cfg.rollout.num_generations = 4
    cfg.rollout.max_new_tokens = 64
    t1 = time.perf_counter()
    rl.run(cfg)
    t_rl = time.perf_counter() - t1
    after = held_out(f"{a.out}/grpo/final", eval_rows, a.samples, 64, seed=3)
    print("[calculator] GRPO policy on held-out problems:", after, flush=True)
    with open(f"{a.out}/grpo/metrics.jsonl") as f:
        steps = [r for r in map(json.loads, f) if "rollout/reward" in r]
    first, last = steps[:5], steps[-5:]
    mean = (lambda rs, k: sum(r.get(k, 0.0) for r in rs) / max(len(rs), 1))
    print(f"\n{'held-out (n=%d episodes, T=1)' % before['n']:<34}{'SFT':>22}{'GRPO':>22}")
    for k in ("tool_use", "tool_success", "accuracy"):
        f = (lambda v: f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}]")
        print(f"{k:<34}{f(before[k]):>22}{f(after[k]):>22}")
    print(f"{'turns per episode':<34}{before['turns']:>22.2f}{after['turns']:>22.2f}")
    print(f"training rollouts, reward (first/last 5 steps): {mean(first, 'rollout/reward'):.3f} -> "
          f"{mean(last, 'rollout/reward'):.3f}; tool calls/episode {mean(first, 'rollout/reward/tool_calls'):.2f} -> "
          f"{mean(last, 'rollout/reward/tool_calls'):.2f}")
    print(f"time: SFT {t_sft:.0f} s, GRPO {t_rl:.0f} s ({a.steps} steps), total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

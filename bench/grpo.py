"""GRPO (beta 0.04): rlhfkit vs TRL GRPOTrainer on the same prompts, side by side.

    python bench/grpo.py [--steps 3 --batch_size 2 --max_length 128 --threads 2]

Embedded SmolLM2-135M-Instruct in fp32; each step samples 4 completions (temperature 1, up
to --max_length new tokens) for each of --batch_size GSM8K prompts, scores them with a GSM8K
exact-match reward, and takes one optimizer step with k3 KL to a frozen reference (beta
0.04), token-mean ("dapo") aggregation, one iteration per rollout. Both sides generate with
their default CPU path (TRL: HF ``generate``; rlhfkit: its KV-cache decode loop). Completion
lengths are random, so the speedup compares generated tokens per second (the ratio of
seconds per step is printed too).
"""

from __future__ import annotations

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

STAGE, UNIT = "grpo", "step"
DEFAULTS = dict(steps=3, batch_size=2, max_length=128)

G = 4


def _number(text: str):
    m = re.search(r"####\s*([-\d,.]+)", text) or None
    nums = [m.group(1)] if m else re.findall(r"-?\d[\d,]*\.?\d*", text)
    if not nums:
        return None
    try:
        return float(nums[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_reward(completions, answer, **kw):
    """TRL-side reward: 1 when the completion's number equals the gold '#### n'."""
    out = []
    for c, a in zip(completions, answer):
        p, g = _number(c), _number(a)
        out.append(float(p is not None and g is not None and abs(p - g) < 1e-6))
    return out


def rlhfkit_trainer(a):
    """(rlhfkit Trainer built on the bench data, model, seconds spent building it)."""
    from rlhfkit.config import DataConfig
    from rlhfkit.models.loading import load_model
    from rlhfkit.rl.config import RolloutConfig
    from rlhfkit.train import rl

    model, tok = load_model(C.rlhfkit_model_config(a))
    cfg = rl.RLConfig(
        model=C.rlhfkit_model_config(a),
        data=DataConfig(path=a.data, max_length=512 + a.max_length, max_prompt_length=512),
        train=C.rlhfkit_train_config(a, STAGE, lr=1e-6),
        rollout=RolloutConfig(num_generations=G, max_new_tokens=a.max_length, temperature=1.0),
        rewards=["gsm8k"], kl_coef=0.04, kl_estimator="k3", loss_agg="dapo", num_iterations=1,
        eval_samples=0)
    t0 = time.perf_counter()
    trainer = rl.build(cfg, log=lambda *x: None, model=model, tokenizer=tok)
    return trainer, model, time.perf_counter() - t0


def rlhfkit_child(a) -> None:
    tokens_of = lambda rec: rec["rollout/length_mean"] * a.batch_size * G  # noqa: E731
    C.emit(**C.rlhfkit_measure(*rlhfkit_trainer(a), a.steps, tokens_of))


def trl_child(a) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype="float32")
    ds = load_dataset("json", data_files=a.data, split="train")
    args = C.trl_common_args(STAGE, a)
    args.update(per_device_train_batch_size=a.batch_size * G, learning_rate=1e-6)
    cfg = GRPOConfig(**args, num_generations=G, max_completion_length=a.max_length, beta=0.04,
                     temperature=1.0, loss_type="dapo", num_iterations=1)

    def tokens_of(trainer):
        lens = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
        return sum(lens) * a.batch_size * G

    C.emit(**C.trl_measure(lambda: GRPOTrainer(model=model, reward_funcs=gsm8k_reward, args=cfg,
                                                train_dataset=ds, processing_class=tok), tokens_of))


def bench_data(a) -> tuple[list[dict], int, int]:
    """(rows both sides train on, real tokens in them, number of steps)."""
    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in C.gsm8k_rows(a.steps * a.batch_size)]
    return rows, 0, a.steps  # generated tokens are counted by each side


if __name__ == "__main__":
    C.stage_main(sys.modules[__name__])

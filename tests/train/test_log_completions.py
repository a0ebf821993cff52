"""train.log_completions: online RL (GRPO, PPO, online DPO) writes sampled prompts, completions,
rewards per source and advantages to completions.jsonl every N steps; values checked against
numbers computed here from the logged text; a resumed run has no duplicated or stale rows."""

import json
import re
import statistics

import pytest

from rlhfkit.config import ModelConfig, TrainConfig, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.train import online_dpo, rl


def quiet(*a):
    pass


def strict_rows(path):
    def bad_constant(c):
        raise AssertionError(f"non-strict JSON constant {c} in {path}")

    with open(path, encoding="utf-8") as f:
        return [json.loads(line, parse_constant=bad_constant) for line in f]


def grpo_cfg(tiny_dir, out, length_reward, steps=4, every=2, rows=4, advantage="grpo", **train):
    cls = rl.PPOConfig if advantage == "gae" else rl.RLConfig
    cfg = cls(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=16, task_eval_size=0,
              advantage=advantage, rewards=[length_reward, "arithmetic*0.5"],
              train=TrainConfig(output_dir=str(out), max_steps=steps, batch_size=4, lr=1e-3, progress=False,
                                tensorboard=False, warmup_ratio=0.0, lr_scheduler="constant",
                                log_completions=every, log_completions_rows=rows, **train))
    cfg.rollout.num_generations = 2
    cfg.rollout.max_new_tokens = 8
    return cfg


def _last_number(text):
    nums = re.findall(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text)
    return float(nums[-1].replace(",", "").rstrip(".")) if nums else None


def check_rewards(row):
    """reward/<source> and reward recomputed from the logged prompt and completion."""
    assert row["reward/length"] == float(len(row["completion"]))
    a, b = map(int, re.findall(r"\d+", row["prompt"][0]["content"]))
    assert row["reward/arithmetic"] == (1.0 if _last_number(row["completion"]) == a + b else 0.0)
    assert row["reward"] == pytest.approx(row["reward/length"] + 0.5 * row["reward/arithmetic"], abs=1e-6)


def test_grpo_logs_every_n_steps_with_rewards_and_advantages(tiny_dir, tmp_path, length_reward):
    rl.run(grpo_cfg(tiny_dir, tmp_path, length_reward, steps=4, every=2, rows=4), log=quiet)
    rows = strict_rows(tmp_path / "completions.jsonl")
    assert [r["step"] for r in rows] == [2] * 4 + [4] * 4  # 8 samples per step, 4 kept
    for r in rows:
        assert set(r) == {"step", "prompt", "completion", "reward", "reward/length", "reward/arithmetic",
                          "advantage"}
        assert isinstance(r["completion"], str) and r["prompt"][0]["role"] == "user"
        check_rewards(r)
    for i in range(0, len(rows), 2):  # the 2 samples of a prompt are adjacent: one GRPO group
        g = rows[i:i + 2]
        assert g[0]["prompt"] == g[1]["prompt"]
        rs = [x["reward"] for x in g]
        mean, std = statistics.mean(rs), statistics.stdev(rs)
        for x in g:
            assert x["advantage"] == pytest.approx((x["reward"] - mean) / (std + 1e-4), abs=1e-5)
    # the logged rewards are those of the step's rollout record
    recs = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert {r["step"] for r in recs if "rollout/reward" in r} >= {2, 4}


def test_ppo_rows_carry_the_token_mean_advantage(tiny_dir, tmp_path, length_reward):
    rl.run(grpo_cfg(tiny_dir, tmp_path, length_reward, steps=1, every=1, rows=3, advantage="gae"), log=quiet)
    rows = strict_rows(tmp_path / "completions.jsonl")
    assert [r["step"] for r in rows] == [1, 1, 1]
    for r in rows:
        check_rewards(r)
        assert isinstance(r["advantage"], float) or (r["advantage"] is None and r["completion"] == "")


def test_off_by_default_and_validated(tiny_dir, tmp_path, length_reward):
    cfg = grpo_cfg(tiny_dir, tmp_path, length_reward, steps=1, every=0)
    rl.run(cfg, log=quiet)
    assert not (tmp_path / "completions.jsonl").exists()
    assert rl.RLConfig().train.log_completions == 0
    for key, value, msg in (("train.log_completions", "-1", ">= 0"), ("train.log_completions_rows", "0", ">= 1")):
        with pytest.raises(ConfigError, match=rf"{key} must be a finite number {msg} \(got"):
            build_config(rl.RLConfig, None, [(key, value)])


def test_resume_keeps_no_duplicated_or_stale_rows(tiny_dir, tmp_path, length_reward):
    """Uninterrupted 4 steps (A) vs 3 steps with a checkpoint at 2, resumed to 4 (B): B's step-3
    rows of the abandoned run are dropped, and B's file equals A's."""
    a, b = tmp_path / "A", tmp_path / "B"
    rl.run(grpo_cfg(tiny_dir, a, length_reward, steps=4, every=1, rows=2), log=quiet)
    rl.run(grpo_cfg(tiny_dir, b, length_reward, steps=3, every=1, rows=2, save_steps=2), log=quiet)
    assert [r["step"] for r in strict_rows(b / "completions.jsonl")] == [1, 1, 2, 2, 3, 3]
    with open(b / "completions.jsonl", "a") as f:
        f.write('{"step": 3, "prompt": "torn')  # a write interrupted by the kill
    logs = []
    rl.run(grpo_cfg(tiny_dir, b, length_reward, steps=4, every=1, rows=2, save_steps=2, resume=True,
                    resume_allow="max_steps"), log=logs.append)
    assert any("resumed from" in m and "step 2/4" in m for m in logs), logs
    rows_a, rows_b = strict_rows(a / "completions.jsonl"), strict_rows(b / "completions.jsonl")
    assert [r["step"] for r in rows_b] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert rows_b == rows_a


def test_a_fresh_run_starts_an_empty_file(tiny_dir, tmp_path, length_reward):
    rl.run(grpo_cfg(tiny_dir, tmp_path, length_reward, steps=1, every=1, rows=2), log=quiet)
    rl.run(grpo_cfg(tiny_dir, tmp_path, length_reward, steps=1, every=1, rows=2, overwrite=True), log=quiet)
    assert [r["step"] for r in strict_rows(tmp_path / "completions.jsonl")] == [1, 1]


def test_online_dpo_logs_each_round(tiny_dir, tmp_path, length_reward):
    cfg = online_dpo.OnlineDPOConfig(
        model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=8, task_eval_size=0,
        rewards=[length_reward, "arithmetic*0.5"], rounds=2, prompts_per_round=4, eval_samples=0,
        train=TrainConfig(output_dir=str(tmp_path), batch_size=4, lr=1e-3, progress=False, tensorboard=False,
                          warmup_ratio=0.0, lr_scheduler="constant", log_completions=1, log_completions_rows=5))
    cfg.rollout.num_generations, cfg.rollout.max_new_tokens = 2, 6
    online_dpo.run(cfg, log=quiet)
    rows = strict_rows(tmp_path / "completions.jsonl")
    assert [r["step"] for r in rows] == [1] * 5 + [2] * 5
    for r in rows:
        assert "advantage" not in r
        check_rewards(r)

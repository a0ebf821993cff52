"""Every recipe family (SFT, RM, DPO, KTO, DRO, GRPO, PPO, online DPO) killed with SIGKILL at a
random step and restarted with --train.resume reaches the same metrics as an uninterrupted
run, with a metrics file that has no gaps or duplicates."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import LENGTH_REWARD_SRC, write_jsonl
from rlhfkit.tasks.arithmetic import make_problems, preference_rows, sft_rows

STEPS = 10
RL = ["--task", "arithmetic", "--task_size", "24", "--task_eval_size", "4",
      "--rewards", "fn:resume_rewards:length", "--rollout.num_generations", "2",
      "--rollout.max_new_tokens", "6", "--eval_samples", "1"]


def recipe_args(recipe: str, data: dict) -> list[str]:
    if recipe == "sft":
        return ["sft", "--data.path", data["sft"], "--data.eval_path", data["sft_eval"]]
    if recipe in ("rm", "dpo", "kto", "dpo_mpo", "dro", "dro_head"):
        extra = {"rm": ["--norm_rows", "4"],  # MPO: bco_pair's running reward mean is checkpointed
                 "dpo_mpo": ["--loss_type", "sigmoid,bco_pair,sft", "--loss_weights", "0.8,0.2,1.0"],
                 # DRO: the value model (a second LM, or a head on reference features recomputed
                 # from the initial weights at restart) is checkpointed with the policy
                 "dro_head": ["--value_model", "reference_head", "--value_lr", "1e-2"]}.get(recipe, [])
        return [recipe.split("_")[0], "--data.path", data["pairs"], "--data.eval_path", data["eval"], *extra]
    if recipe == "grpo":
        return ["grpo", *RL, "--kl_coef", "0.05"]
    if recipe == "grpo_async":  # the checkpoint holds the rollout sampled ahead for the next step
        return ["grpo", *RL, "--kl_coef", "0.05", "--rollout.async", "true"]
    return ["ppo", *RL]


def cli(recipe, out, data, *extra):
    return [sys.executable, "-m", "rlhfkit.cli", *recipe_args(recipe, data), "--model.name", data["model"],
            "--data.max_length", "96", "--train.output_dir", str(out), "--train.max_steps", str(STEPS),
            "--train.save_steps", "2", "--train.batch_size", "4", "--train.lr", "1e-3",
            "--train.eval_steps", "5", "--train.progress", "false", "--train.tensorboard", "false",
            "--train.threads", "1", *extra]


def records(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


@pytest.mark.parametrize("recipe", ["sft", "rm", "dpo", "dpo_mpo", "kto", "dro", "dro_head", "grpo",
                                    "grpo_async", "ppo"])
def test_kill9_and_resume_matches_uninterrupted(recipe, tiny_dir, tmp_path):
    probs = make_problems(40, seed=3)
    data = {"model": tiny_dir,
            "pairs": write_jsonl(tmp_path / "p.jsonl", preference_rows(probs[:32], seed=0)),
            "eval": write_jsonl(tmp_path / "e.jsonl", preference_rows(probs[32:], seed=1)),
            "sft": write_jsonl(tmp_path / "s.jsonl", sft_rows(probs[:32])),
            "sft_eval": write_jsonl(tmp_path / "se.jsonl", sft_rows(probs[32:]))}
    (tmp_path / "resume_rewards.py").write_text(LENGTH_REWARD_SRC)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    a, b = tmp_path / "A", tmp_path / "B"
    r = subprocess.run(cli(recipe, a, data), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    kill_after = random.Random().randint(3, 8)  # a random step
    proc = subprocess.Popen(cli(recipe, b, data), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [r for r in records(b) if "train/loss" in r] if os.path.exists(b / "metrics.jsonl") else []
        if len(done) >= kill_after or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(b / "final")
    r = subprocess.run(cli(recipe, b, data, "--train.resume", "true"), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout + r.stderr

    ra, rb = records(a), records(b)
    train_a = [(x["step"], x["train/loss"]) for x in ra if "train/loss" in x]
    train_b = [(x["step"], x["train/loss"]) for x in rb if "train/loss" in x]
    assert [s for s, _ in train_b] == list(range(1, STEPS + 1))  # no gaps, no duplicates
    for (sa, la), (sb, lb) in zip(train_a, train_b):
        assert sa == sb and la == pytest.approx(lb, abs=1e-6)
    eval_a = [x for x in ra if any(k.startswith("eval/") for k in x)][-1]
    eval_b = [x for x in rb if any(k.startswith("eval/") for k in x)][-1]
    assert eval_a["step"] == eval_b["step"] == STEPS
    for k, v in eval_a.items():
        if isinstance(v, float):
            assert eval_b[k] == pytest.approx(v, abs=1e-6), k
    if recipe in ("grpo", "grpo_async", "ppo"):  # the same rollouts after the restart
        ya = [x["rollout/reward"] for x in ra if "rollout/reward" in x]
        yb = [x["rollout/reward"] for x in rb if "rollout/reward" in x]
        assert yb == pytest.approx(ya, abs=1e-9) and len(set(ya)) > 1


def online_cli(out, model, *extra):
    return [sys.executable, "-m", "rlhfkit.cli", "online-dpo", *RL, "--model.name", model, "--rounds", "3",
            "--prompts_per_round", "8", "--train.output_dir", str(out), "--train.epochs", "2",
            "--train.save_steps", "1", "--train.batch_size", "2", "--train.lr", "1e-3",
            "--train.progress", "false", "--train.tensorboard", "false", "--train.threads", "1", *extra]


def test_online_dpo_kill9_and_resume_matches_uninterrupted(tiny_dir, tmp_path):
    """Rounds are steps of the one loop: a SIGKILL between or inside rounds resumes from the last
    round's checkpoint and redoes the round with the same samples (the RNG is checkpointed)."""
    (tmp_path / "resume_rewards.py").write_text(LENGTH_REWARD_SRC)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    a, b = tmp_path / "A", tmp_path / "B"
    r = subprocess.run(online_cli(a, tiny_dir), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rounds_a = [x for x in records(a) if "train/loss" in x]
    assert [x["step"] for x in rounds_a] == [1, 2, 3] and all(x["train/updates"] >= 2 for x in rounds_a)

    kill_after = random.Random().randint(1, 2)  # rounds checkpointed before the kill
    extra_wait = random.Random().uniform(0.0, 1.0)  # sometimes inside the next round
    proc = subprocess.Popen(online_cli(b, tiny_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            b / "checkpoints" / f"step-{kill_after:06d}").is_dir():
        time.sleep(0.05)
    time.sleep(extra_wait)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(b / "final")
    r = subprocess.run(online_cli(b, tiny_dir, "--train.resume", "true"), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout + r.stderr

    ra, rb = records(a), records(b)
    assert [(x["step"], sorted(x)) for x in rb if "train/loss" in x or "eval/greedy/reward" in x] == \
        [(x["step"], sorted(x)) for x in ra if "train/loss" in x or "eval/greedy/reward" in x]
    for xa, xb in zip(ra, rb):
        for k, v in xa.items():
            if isinstance(v, float) and not k.endswith(("_time_s", "tokens_per_s", "peak_rss_gb", "_seconds")):
                assert xb[k] == pytest.approx(v, abs=1e-6), (xa["step"], k)
"""Token counts are global under data parallel (gloo, 2 processes): a 2-process GRPO run with
batch b logs the same train/generated token counts as 1 process with batch 2b."""

import json
import os
import subprocess
import sys

import pytest

from conftest import LENGTH_REWARD_SRC

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo launch tested on Linux")


def launch(procs, args, env):
    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    p = subprocess.run(pre + ["-m", "rlhfkit.cli"] + args, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def column(out, key):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def test_token_counts_summed_over_processes(tiny_dir, tmp_path):
    (tmp_path / "tok_rewards.py").write_text(LENGTH_REWARD_SRC)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tmp_path))
    args = ["grpo", "--task", "arithmetic", "--task_size", "16", "--task_eval_size", "0",
            "--rewards", "fn:tok_rewards:length", "--num_generations", "2", "--max_completion_length", "6",
            "--eval_samples", "0", "--model.name", str(tiny_dir), "--max_steps", "2",
            "--train.progress", "false", "--train.tensorboard", "false", "--train.threads", "1"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(1, args + ["--output_dir", one, "--train.batch_size", "4"], env)
    launch(2, args + ["--output_dir", two, "--train.batch_size", "2"], env)
    for key in ("train/train_tokens", "rollout/gen_tokens", "train/update_tokens"):
        a, b = column(one, key), column(two, key)
        assert len(a) == len(b) == 2 and all(x > 0 for x in a), key
        assert b == pytest.approx(a), key
    # 4 prompts x 2 generations x at most 6 tokens per step
    assert all(x <= 48 for x in column(one, "rollout/gen_tokens"))

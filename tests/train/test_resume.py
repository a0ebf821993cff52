"""`rlhfkit rm` killed with SIGKILL mid-run and restarted with --train.resume reaches the same
metrics as an uninterrupted run, with a metrics file that has no gaps or duplicates."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_jsonl
from rlhfkit.tasks.arithmetic import make_problems, preference_rows


def cli(out, data, *extra):
    return [sys.executable, "-m", "rlhfkit.cli", "rm", "--model.name", data["model"],
            "--data.path", data["pairs"], "--data.eval_path", data["eval"], "--data.max_length", "96",
            "--train.output_dir", str(out), "--train.max_steps", "10", "--train.save_steps", "2",
            "--train.batch_size", "4", "--train.lr", "1e-3", "--train.eval_steps", "5",
            "--train.progress", "false", "--train.tensorboard", "false", "--train.threads", "1",
            "--norm_rows", "4", *extra]


def records(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


def test_kill9_and_resume_matches_uninterrupted(tiny_dir, tmp_path):
    probs = make_problems(40, seed=3)
    data = {"model": tiny_dir,
            "pairs": write_jsonl(tmp_path / "p.jsonl", preference_rows(probs[:32], seed=0)),
            "eval": write_jsonl(tmp_path / "e.jsonl", preference_rows(probs[32:], seed=1))}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    a, b = tmp_path / "A", tmp_path / "B"
    subprocess.run(cli(a, data), check=True, env=env, capture_output=True, timeout=300)

    kill_after = random.Random().randint(3, 8)  # a random step
    proc = subprocess.Popen(cli(b, data), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    r = subprocess.run(cli(b, data, "--train.resume", "true"), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout + r.stderr

    ra, rb = records(a), records(b)
    train_a = [(x["step"], x["train/loss"]) for x in ra if "train/loss" in x]
    train_b = [(x["step"], x["train/loss"]) for x in rb if "train/loss" in x]
    assert [s for s, _ in train_b] == list(range(1, 11))  # no gaps, no duplicates
    for (sa, la), (sb, lb) in zip(train_a, train_b):
        assert sa == sb and la == pytest.approx(lb, abs=1e-6)
    eval_a = [x for x in ra if "eval/loss" in x][-1]
    eval_b = [x for x in rb if "eval/loss" in x][-1]
    for k in ("eval/loss", "eval/accuracy", "eval/margin"):
        assert eval_a[k] == pytest.approx(eval_b[k], abs=1e-6)

"""Data parallel on CPU (gloo, 2 processes launched by torch.distributed.run): 2 processes x
batch b give the same loss curve as 1 process x batch 2b, for SFT, DPO and GRPO (whose
rollouts are batch-invariant, so each process samples exactly what the single process
sampled for the same prompts); RM, KTO, DRO (either value model) and PPO too."""

import json
import os
import subprocess
import sys

import pytest

from rlhfkit.tasks.arithmetic import make_problems, preference_rows, sft_rows
from conftest import LENGTH_REWARD_SRC, write_jsonl

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo launch tested on Linux")

COMMON = ["--train.max_steps", "3", "--train.progress", "false", "--train.tensorboard", "false",
          "--train.lr", "1e-3", "--train.warmup_ratio", "0", "--train.threads", "1"]


def launch(procs: int, args: list[str], env: dict) -> None:
    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    p = subprocess.run(pre + ["-m", "rlhfkit.cli"] + args, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def kill_two_processes_after(args: list[str], out: str, env: dict, steps: int) -> None:
    """Launch ``args`` on 2 processes into ``out`` and SIGKILL the whole launch (launcher and
    workers) once ``steps`` steps are logged; it must have written a checkpoint and no final/."""
    import signal
    import time

    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rlhfkit.cli"]
    proc = subprocess.Popen(pre + args + ["--train.output_dir", out], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(os.path.join(out, "metrics.jsonl")) and len(curve(out)) >= steps:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.isdir(os.path.join(out, "final"))
    assert any(n.startswith("step-") for n in os.listdir(os.path.join(out, "checkpoints"))), "killed too early"


def curve(out, key="train/loss"):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)[key] for line in f if key in line]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp-helpers")
    (d / "ddp_rewards.py").write_text(LENGTH_REWARD_SRC)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(d)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


@pytest.mark.parametrize("recipe", ["sft", "rm", "dpo", "kto", "dro", "dro_head", "grpo", "ppo"])
def test_two_processes_match_one_with_twice_the_batch(recipe, tiny_dir, tmp_path, env):
    probs = make_problems(32, seed=3)
    if recipe == "sft":
        args = ["sft", "--data.path", write_jsonl(tmp_path / "d.jsonl", sft_rows(probs))]
    elif recipe in ("rm", "dpo", "kto", "dro", "dro_head"):
        args = [recipe.split("_")[0], "--data.path", write_jsonl(tmp_path / "d.jsonl", preference_rows(probs, seed=0))]
        args += ["--norm_rows", "8"] if recipe == "rm" else []
        args += ["--value_model", "reference_head", "--value_lr", "1e-2"] if recipe == "dro_head" else []
    else:  # a reward with spread (response length) so the updates are not all zero
        args = [recipe, "--task", "arithmetic", "--task_size", "16", "--task_eval_size", "0",
                "--rewards", "fn:ddp_rewards:length", "--rollout.num_generations", "2",
                "--rollout.max_new_tokens", "6", "--kl_coef", "0.05", "--eval_samples", "0"]
        args += ["--num_minibatches", "1"] if recipe == "ppo" else []
    args += ["--model.name", str(tiny_dir)] + COMMON
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(1, args + ["--train.output_dir", one, "--train.batch_size", "4"], env)
    launch(2, args + ["--train.output_dir", two, "--train.batch_size", "2"], env)
    a, b = curve(one), curve(two)
    assert len(a) == len(b) == 3
    # DRO's squared residuals run to ~5 on the first steps: float32 summation order differs at ~1e-5 relative
    assert b == pytest.approx(a, abs=1e-5, rel=2e-5 if recipe.startswith("dro") else 0)
    if recipe in ("grpo", "ppo"):  # the same samples were drawn: same rewards and KL on every step
        assert curve(two, "rollout/reward") == pytest.approx(curve(one, "rollout/reward"), abs=1e-9)
        assert curve(two, "rollout/kl") == pytest.approx(curve(one, "rollout/kl"), abs=1e-5)
        assert any(abs(x) > 1e-5 for x in a)  # the check compares real updates
    assert os.path.isdir(os.path.join(two, "final"))  # the main process saved the model
    if recipe == "dpo":  # each process caches its own reference log-probs (no shared temp file to race on)
        assert all(os.path.isfile(os.path.join(two, f"ref_logps_train.rank{r}.pt")) for r in (0, 1))


def test_two_process_grpo_killed_and_resumed_matches_uninterrupted(tiny_dir, tmp_path, env):
    """SIGKILL to the whole launch (launcher and both workers) after a checkpoint, then
    --train.resume under 2 processes again: the same losses and rollouts as an
    uninterrupted 2-process run, and a metrics file without gaps or duplicates."""
    args = ["grpo", "--task", "arithmetic", "--task_size", "16", "--task_eval_size", "0",
            "--rewards", "fn:ddp_rewards:length", "--rollout.num_generations", "2",
            "--rollout.max_new_tokens", "6", "--kl_coef", "0.05", "--eval_samples", "0",
            "--model.name", str(tiny_dir), "--train.batch_size", "2", "--train.save_steps", "2",
            "--train.max_steps", "6", *COMMON[2:]]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    launch(2, args + ["--train.output_dir", a], env)
    kill_two_processes_after(args, b, env, steps=3)
    launch(2, args + ["--train.output_dir", b, "--train.resume", "true"], env)
    with open(os.path.join(b, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == list(range(1, 7))
    assert curve(b) == pytest.approx(curve(a), abs=1e-6)
    assert curve(b, "rollout/reward") == pytest.approx(curve(a, "rollout/reward"), abs=1e-9)
    assert len(set(curve(a, "rollout/reward"))) > 1


@pytest.mark.parametrize("reference_update", ["fixed", "refresh"])
def test_online_dpo_two_processes_match_one_with_twice_the_batch(reference_update, tiny_dir, tmp_path, env):
    """Each process samples its half of the round's prompts (the same samples the single process
    draws for them), the pairs are gathered, and each update's pairs are split between the
    processes: the same rounds, pairs and losses as one process with twice the prompts and batch."""
    args = ["online-dpo", "--task", "arithmetic", "--task_size", "16", "--task_eval_size", "0",
            "--rewards", "fn:ddp_rewards:length", "--rollout.num_generations", "3", "--rollout.max_new_tokens", "6",
            "--rounds", "2", "--train.epochs", "2", "--reference_update", reference_update,
            "--model.name", str(tiny_dir), "--train.progress", "false", "--train.tensorboard", "false",
            "--train.lr", "1e-3", "--train.threads", "1"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(1, args + ["--train.output_dir", one, "--prompts_per_round", "8", "--train.batch_size", "4"], env)
    launch(2, args + ["--train.output_dir", two, "--prompts_per_round", "4", "--train.batch_size", "2"], env)
    for key in ("rollout/reward", "rollout/pairs", "train/updates"):
        assert curve(two, key) == pytest.approx(curve(one, key), abs=1e-9), key
    a, b = curve(one), curve(two)
    assert len(a) == 2 and b == pytest.approx(a, abs=1e-5)
    assert min(curve(one, "train/updates")) >= 2  # real updates, in both rounds
    assert os.path.isdir(os.path.join(two, "final"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("recipe", ["sft", "grpo"])
def test_two_nodes_on_loopback_match_one_process(recipe, tiny_dir, tmp_path, env):
    """Multi-node as documented: one torchrun per "node" (--nnodes 2, --node_rank 0/1, one
    process each), meeting at a rendezvous on 127.0.0.1 — the same loss curve as one process with
    the batch of both."""
    probs = make_problems(32, seed=3)
    if recipe == "sft":
        args = ["sft", "--data.path", write_jsonl(tmp_path / "d.jsonl", sft_rows(probs))]
    else:
        args = ["grpo", "--task", "arithmetic", "--task_size", "16", "--task_eval_size", "0",
                "--rewards", "fn:ddp_rewards:length", "--rollout.num_generations", "2",
                "--rollout.max_new_tokens", "6", "--kl_coef", "0.05", "--eval_samples", "0"]
    args += ["--model.name", str(tiny_dir)] + COMMON
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(1, args + ["--train.output_dir", one, "--train.batch_size", "4"], env)
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "rlhfkit.cli", *args, "--train.output_dir", two, "--train.batch_size", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in (0, 1)]
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    a, b = curve(one), curve(two)
    assert len(a) == len(b) == 3 and b == pytest.approx(a, abs=1e-5)
    if recipe == "grpo":
        assert curve(two, "rollout/reward") == pytest.approx(curve(one, "rollout/reward"), abs=1e-9)
    assert os.path.isdir(os.path.join(two, "final"))

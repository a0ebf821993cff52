"""DeepSpeed ZeRO-2 and ZeRO-3 through ``accelerate launch`` on the CPU (DeepSpeed's CPU
accelerator, ``DS_ACCELERATOR=cpu``, over gloo), with the shipped accelerate configs: 2 processes
x batch b give the same SFT loss curve and the same final weights as 1 plain process x batch 2b,
and ZeRO-2 with ``train.grad_accum`` 2 x batch b/2 the same again (the loop's accumulation marks
DeepSpeed's step boundary)."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("deepspeed")
from safetensors.torch import load_file  # noqa: E402

from rlhfkit.shipped import shipped_path  # noqa: E402
from rlhfkit.tasks.arithmetic import make_problems, sft_rows  # noqa: E402
from conftest import write_jsonl  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo launch tested on Linux")

COMMON = ["--train.max_steps", "3", "--train.progress", "false", "--train.tensorboard", "false",
          "--train.lr", "1e-3", "--train.warmup_ratio", "0", "--train.threads", "1"]


def run(cmd: list[str], env: dict) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    return p.stdout


def curve(out: str) -> list[float]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["train/loss"] for line in f if "train/loss" in line]


def weights(out: str) -> dict:
    (path,) = glob.glob(os.path.join(out, "final", "*.safetensors"))
    return load_file(path)


@pytest.fixture(scope="module")
def single(tiny_dir, tmp_path_factory):
    """The plain single-process run, batch 4: the reference curve and weights."""
    d = tmp_path_factory.mktemp("ds-single")
    data = write_jsonl(d / "d.jsonl", sft_rows(make_problems(32, seed=3)))
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    args = ["sft", "--data.path", data, "--model.name", str(tiny_dir)] + COMMON
    run([sys.executable, "-m", "rlhfkit.cli"] + args + ["--train.output_dir", str(d / "one"),
                                                         "--train.batch_size", "4"], env)
    return args, env, str(d / "one")


@pytest.mark.parametrize("stage,batch,accum", [(2, 2, 1), (2, 1, 2), (3, 2, 1)])
def test_zero_two_processes_match_one_with_twice_the_batch(single, tmp_path, stage, batch, accum):
    args, env, one = single
    two = str(tmp_path / "two")
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", shipped_path(f"accelerate/deepspeed_zero{stage}"),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(29500 + 10 * stage + accum),
           "-m", "rlhfkit.cli"] + args + ["--train.output_dir", two, "--train.batch_size", str(batch),
                                          "--train.grad_accum", str(accum)]
    out = run(cmd, env)
    assert f"DeepSpeed ZeRO stage {stage} on 2 process(es) (cpu)" in out  # not a silent fall back to DDP
    a, b = curve(one), curve(two)
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, abs=1e-5, rel=0)
    assert a[0] - a[-1] > 0.1  # the curve compares real updates
    wa, wb = weights(one), weights(two)
    assert sorted(wa) == sorted(wb)  # ZeRO-3: the whole weights, gathered for final/
    for k in wa:
        assert wb[k].shape == wa[k].shape, k
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=0, msg=k)
    with open(os.path.join(two, "run.json")) as f:  # written by the main process alone
        assert json.load(f)

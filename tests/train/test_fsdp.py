"""FSDP2 (``train.fsdp``) on CPU, gloo, 2 processes launched by torch.distributed.run:

- each offline recipe (SFT, SFT with LoRA, RM, DPO, KTO) sharded over 2 processes x batch b gives
  the loss curve and the final weights of 1 plain process x batch 2b, and really is sharded
  (every process's checkpoint shard holds half of each weight);
- SIGKILL + resume under FSDP equals the uninterrupted run;
- a checkpoint written by 2 processes resumes on 1 and one written by 1 on 2, continuing the loss
  curve of the uninterrupted run;
- the shards are put back together as FSDP2 cut them (``torch.chunk`` along dim 0), checked on
  sizes that do not divide evenly;
- what the sharded path does not cover is refused with a message.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from rlhfkit.tasks.arithmetic import make_problems, preference_rows, sft_rows
from conftest import write_jsonl
from test_ddp import curve, env, kill_two_processes_after, launch  # noqa: F401  (env: the fixture)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo launch tested on Linux")

COMMON = ["--train.progress", "false", "--train.tensorboard", "false", "--train.lr", "1e-3",
          "--train.warmup_ratio", "0", "--train.threads", "1"]


def recipe_args(recipe: str, tmp_path, tiny_dir) -> list[str]:
    probs = make_problems(32, seed=3)
    if recipe.startswith("sft"):
        args = ["sft", "--data.path", write_jsonl(tmp_path / "d.jsonl", sft_rows(probs))]
        args += ["--model.lora.r", "4", "--train.lr", "1e-2"] if recipe == "sft_lora" else []
    else:
        args = [recipe, "--data.path", write_jsonl(tmp_path / "d.jsonl", preference_rows(probs, seed=0))]
        args += ["--norm_rows", "8"] if recipe == "rm" else []
    return args + ["--model.name", str(tiny_dir)] + COMMON


def tensors(path: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, name)))
    return out


@pytest.mark.parametrize("recipe", ["sft", "sft_lora", "rm", "dpo", "kto"])
def test_two_sharded_processes_match_one_with_twice_the_batch(recipe, tiny_dir, tmp_path, env):
    args = recipe_args(recipe, tmp_path, tiny_dir) + ["--train.max_steps", "3"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(1, args + ["--train.output_dir", one, "--train.batch_size", "4"], env)
    launch(2, args + ["--train.output_dir", two, "--train.batch_size", "2", "--train.fsdp", "true",
                      "--train.save_steps", "3"], env)
    a, b = curve(one), curve(two)
    assert len(a) == len(b) == 3 and b == pytest.approx(a, abs=1e-5)
    assert any(abs(x - a[0]) > 1e-4 for x in a[1:])  # the weights changed
    # the consolidated final/ equals the single-process model
    wa, wb = tensors(os.path.join(one, "final")), tensors(os.path.join(two, "final"))
    assert sorted(wa) == sorted(wb)
    for k in wa:  # Adam divides by sqrt(v): float-order differences of near-zero gradients grow to ~1e-5
        # (2-process DDP's final DPO weights differ from the single process's by 1.09e-5 too)
        assert torch.allclose(wa[k], wb[k], atol=3e-5), k
    # sharded for real: each process's checkpoint shard holds its half (dim 0) of every trainable tensor
    ckpt = os.path.join(two, "checkpoints", "step-000003")
    with open(os.path.join(ckpt, "shards", "info.json")) as f:
        assert json.load(f) == {"world": 2}
    from safetensors import safe_open

    for rank in (0, 1):
        base = os.path.join(ckpt, "shards", f"rank-{rank:05d}-of-00002")
        with open(base + ".json") as f:
            meta = json.load(f)
        model_shapes = {k[len("/model/"):]: v for k, v in meta["shapes"].items() if k.startswith("/model/")}
        assert model_shapes, "no sharded model tensor in the checkpoint"
        with safe_open(base + ".safetensors", "pt") as f:
            for name, shape in model_shapes.items():
                local = f.get_slice(meta["states"]["model"][name]["__tensor__"]).get_shape()
                half = -(-shape[0] // 2)  # torch.chunk: the first process gets the ceiling
                assert list(local) == [half if rank == 0 else shape[0] - half] + shape[1:], name
    if recipe == "sft_lora":  # only the adapters are trained and saved as adapters
        assert os.path.isfile(os.path.join(two, "final", "adapter_config.json"))
        assert all("lora_" in k for k in model_shapes), sorted(model_shapes)[:5]


def test_fsdp_kill9_and_resume_matches_uninterrupted(tiny_dir, tmp_path, env):
    args = recipe_args("sft", tmp_path, tiny_dir) + ["--train.max_steps", "6", "--train.save_steps", "2",
                                                     "--train.batch_size", "2", "--train.fsdp", "true"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    launch(2, args + ["--train.output_dir", a], env)
    kill_two_processes_after(args, b, env, steps=3)
    launch(2, args + ["--train.output_dir", b, "--train.resume", "true"], env)
    with open(os.path.join(b, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == list(range(1, 7))
    assert curve(b) == pytest.approx(curve(a), abs=1e-6)
    wa, wb = tensors(os.path.join(a, "final")), tensors(os.path.join(b, "final"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_processes(first, second, tiny_dir, tmp_path, env):
    """4 steps uninterrupted (1 plain process, batch 4) vs 2 steps on ``first`` processes and 2 more
    on ``second``, with the same global batch: the same loss curve."""
    args = recipe_args("sft", tmp_path, tiny_dir) + ["--train.lr_scheduler", "constant",
                                                     "--train.save_optimizer", "true"]
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    launch(1, args + ["--train.output_dir", ref, "--train.batch_size", "4", "--train.max_steps", "4"], env)
    launch(first, args + ["--train.output_dir", run, "--train.batch_size", str(4 // first), "--train.max_steps", "2",
                          "--train.fsdp", "true"], env)
    launch(second, args + ["--train.output_dir", run, "--train.batch_size", str(4 // second), "--train.max_steps",
                           "4", "--train.fsdp", "true", "--train.resume", "true",
                           "--train.resume_allow", "batch_size,max_steps"], env)
    assert len(curve(run)) == 4
    assert curve(run) == pytest.approx(curve(ref), abs=1e-5)
    assert len(set(curve(ref))) == 4


def test_shards_are_reassembled_as_torch_chunk_cut_them():
    """FSDP2 gives process r the r-th ``torch.chunk`` of dim 0 (the last ones shorter or empty):
    joining the chunks in rank order is the full tensor; a shape that disagrees is refused."""
    from rlhfkit.errors import TrainingError
    from rlhfkit.train.fsdp import _join

    full = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)
    for world in (2, 3, 4, 7):
        parts = list(torch.chunk(full, world, dim=0))
        parts += [full.new_zeros(0, 3)] * (world - len(parts))  # processes past the end hold nothing
        states = [{"m": {"w": p, "step": torch.tensor(3.0)}, "lr": 0.1} for p in parts]
        out = _join(states, {"/m/w": [5, 3]})
        assert torch.equal(out["m"]["w"], full) and out["lr"] == 0.1 and float(out["m"]["step"]) == 3.0
    with pytest.raises(TrainingError, match="recorded shape"):
        _join([{"w": full[:2]}, {"w": full[2:4]}], {"/w": [5, 3]})


def test_online_recipes_and_deepspeed_are_refused_with_fsdp(tiny_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "grpo", "--task", "arithmetic", "--task_size", "8",
                        "--model.name", str(tiny_dir), "--train.fsdp", "true", "--train.max_steps", "1",
                        "--train.output_dir", str(tmp_path / "g"), *COMMON],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "train.fsdp" in p.stderr and "DDP" in p.stderr and "Traceback" not in p.stderr


def test_a_plain_checkpoint_does_not_resume_under_fsdp(tiny_dir, tmp_path, env):
    args = recipe_args("sft", tmp_path, tiny_dir) + ["--train.batch_size", "4", "--train.save_optimizer", "true",
                                                     "--train.output_dir", str(tmp_path / "r")]
    launch(1, args + ["--train.max_steps", "1"], env)
    p = subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args, "--train.max_steps", "2", "--train.resume", "true",
                        "--train.fsdp", "true", "--train.resume_allow", "max_steps,fsdp"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0 and "without train.fsdp" in p.stderr and "Traceback" not in p.stderr


def test_a_sharded_checkpoint_does_not_resume_without_fsdp(tiny_dir, tmp_path, env):
    args = recipe_args("sft", tmp_path, tiny_dir) + ["--train.batch_size", "4", "--train.save_optimizer", "true",
                                                     "--train.output_dir", str(tmp_path / "r")]
    launch(1, args + ["--train.max_steps", "1", "--train.fsdp", "true"], env)
    p = subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args, "--train.max_steps", "2", "--train.resume", "true",
                        "--train.resume_allow", "max_steps,fsdp"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0 and "is sharded" in p.stderr and "Traceback" not in p.stderr

"""Faults injected into a run, and what survives: a torn checkpoint is skipped for the
previous one, a full disk while saving is a clear error that keeps the last good checkpoint,
Ctrl-C saves a checkpoint from which the run resumes exactly."""

import errno
import os

import pytest

from conftest import train_losses as losses, write_jsonl
from rlhfkit.config import DataConfig, ModelConfig, TrainConfig
from rlhfkit.errors import TrainingError
from rlhfkit.tasks.arithmetic import make_problems, sft_rows
from rlhfkit.train import checkpoint, sft


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("faults") / "sft.jsonl", sft_rows(make_problems(32, seed=0)))


def cfg(tiny_dir, rows, out, **train):
    t = dict(output_dir=str(out), batch_size=4, lr=1e-3, progress=False, tensorboard=False,
             warmup_ratio=0.0, lr_scheduler="constant", max_steps=6, save_steps=2, threads=1)
    t.update(train)
    return sft.SFTConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=rows, max_length=96),
                         train=TrainConfig(**t))


@pytest.fixture(scope="module")
def reference_run(tiny_dir, rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    sft.run(cfg(tiny_dir, rows, out), log=lambda *a: None)
    return losses(out)


def test_torn_checkpoint_falls_back_to_the_previous_one(tiny_dir, rows, tmp_path, reference_run):
    sft.run(cfg(tiny_dir, rows, tmp_path, max_steps=4), log=lambda *a: None)  # leaves step-2, step-4
    newest = tmp_path / "checkpoints" / "step-000004" / "trainable.safetensors"
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)  # torn write
    logs = []
    sft.run(cfg(tiny_dir, rows, tmp_path, resume=True, resume_allow="max_steps"), log=logs.append)
    assert any("step-000004 is incomplete or corrupted (" in m and "trying the previous one" in m for m in logs)
    assert any("resumed from" in m and "step-000002" in m for m in logs)
    got = losses(tmp_path)
    assert [s for s, _ in got] == list(range(1, 7))
    assert [v for _, v in got] == pytest.approx([v for _, v in reference_run], abs=1e-6)


def test_disk_full_while_saving_keeps_the_last_good_checkpoint(tiny_dir, rows, tmp_path, monkeypatch):
    real, calls = checkpoint.save_file, []

    def full_disk(*a, **k):
        calls.append(1) if str(a[1]).endswith("trainable.safetensors") else None
        if len(calls) == 2:  # the second checkpoint (step 4) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(TrainingError, match=r"could not write checkpoint .*step-000004: No space left on "
                                            r"device\. Free disk space .* earlier checkpoints are kept"):
        sft.run(cfg(tiny_dir, rows, tmp_path), log=lambda *a: None)
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["step-000002"]  # no half-written directory left behind
    assert checkpoint.is_complete(str(root / "step-000002"))


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_exactly(tiny_dir, rows, tmp_path, reference_run):
    t = sft.build(cfg(tiny_dir, rows, tmp_path, save_steps=0), log=lambda *a: None)
    real_step, calls = t.recipe.step, []

    def interrupted(m, b):
        calls.append(1)
        if len(calls) == 4:  # during step 4
            raise KeyboardInterrupt
        return real_step(m, b)

    t.recipe.step = interrupted
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert os.listdir(tmp_path / "checkpoints") == ["step-000003"]  # the 3 finished steps
    sft.run(cfg(tiny_dir, rows, tmp_path, save_steps=0, resume=True), log=lambda *a: None)
    got = losses(tmp_path)
    assert [s for s, _ in got] == list(range(1, 7))
    assert [v for _, v in got] == pytest.approx([v for _, v in reference_run], abs=1e-6)

"""Run-directory reliability: code-free and hash-verified checkpoints, SIGTERM/Ctrl-C saves
labelled with the right step, fresh runs vs. existing runs, one process per run dir, resume
only of the run that was recorded, unwritable dirs, torn metrics, non-finite final weights,
atomic final/."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import train_losses as losses, write_jsonl
from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from rlhfkit.errors import TrainingError
from rlhfkit.tasks.arithmetic import make_problems, sft_rows
from rlhfkit.train import checkpoint, sft
from rlhfkit.train.loop import MetricsLog


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("rel") / "sft.jsonl", sft_rows(make_problems(32, seed=0)))


def cfg(tiny_dir, rows, out, lora=0, **train):
    t = dict(output_dir=str(out), batch_size=4, lr=1e-3, progress=False, tensorboard=False,
             warmup_ratio=0.0, lr_scheduler="constant", max_steps=4, save_steps=2, threads=1)
    t.update(train)
    return sft.SFTConfig(model=ModelConfig(name=tiny_dir, lora=LoraConfig(r=lora)),
                         data=DataConfig(path=rows, max_length=96), train=TrainConfig(**t))


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def reference_run(tiny_dir, rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    sft.run(cfg(tiny_dir, rows, out, max_steps=6), log=quiet)
    return losses(out)


def _add_to_manifest(ckpt, name):
    """What an attacker with write access does: make the manifest vouch for a planted file."""
    path = os.path.join(ckpt, checkpoint.MANIFEST)
    man = json.load(open(path))
    size = os.path.getsize(os.path.join(ckpt, name))
    if "files" in man:
        man["files"][name] = {"size": size, "sha256": checkpoint.sha256_file(os.path.join(ckpt, name))}
    else:
        man[name] = size
    json.dump(man, open(path, "w"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


# 1 ------------------------------------------------------------------------------------------
def test_malicious_states_pickle_is_refused_and_never_runs(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    sft.run(cfg(tiny_dir, rows, out), log=quiet)  # step-2, step-4
    marker = tmp_path / "pwned"
    newest = out / "checkpoints" / "step-000004"
    torch.save({"optimizer": _Exploit(str(marker))}, newest / "states.pt")  # a pickle, as torch writes it
    _add_to_manifest(str(newest), "states.pt")
    with pytest.raises(TrainingError, match="pickle that could run code"):
        checkpoint.load_state(str(newest), model=sft.load_model(ModelConfig(name=tiny_dir))[0])
    assert not marker.exists()
    logs = []
    try:
        sft.run(cfg(tiny_dir, rows, out, resume=True), log=logs.append)
    except Exception:
        pass
    assert not marker.exists(), "loading a checkpoint ran code from it"
    assert any("step-000004" in m and "states.pt" in m and "refused" in m for m in logs), logs
    assert any("resumed from" in m and "step-000002" in m for m in logs), logs


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["flipped_bytes", "corrupted_header"])
def test_corrupted_checkpoint_falls_back_to_newest_intact(tiny_dir, rows, tmp_path, reference_run, where):
    out = tmp_path / "run"
    sft.run(cfg(tiny_dir, rows, out), log=quiet)
    f = out / "checkpoints" / "step-000004" / "trainable.safetensors"
    data = bytearray(f.read_bytes())
    if where == "flipped_bytes":  # same size: a size check cannot see it
        mid = len(data) - 64
        data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
    else:
        data[8:24] = b"#" * 16  # the JSON header after its 8-byte length
    f.write_bytes(bytes(data))
    logs = []
    sft.run(cfg(tiny_dir, rows, out, resume=True), log=logs.append)
    why = [m for m in logs if "step-000004 is incomplete or corrupted" in m]
    assert len(why) == 1 and "sha256" in why[0], logs
    assert any("resumed from" in m and "step-000002" in m for m in logs)
    got = losses(out)
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [v for _, v in got] == pytest.approx([v for _, v in reference_run[:4]], abs=1e-6)


# 3 ------------------------------------------------------------------------------------------
def test_ctrl_c_checkpoint_is_labelled_with_the_finished_step(tiny_dir, rows, tmp_path, reference_run):
    out = tmp_path / "run"
    t = sft.build(cfg(tiny_dir, rows, out, max_steps=6, save_steps=0), log=quiet)

    def ctrl_c_during_step_4(step, rec):  # arrives after step 4's update
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    t.recipe.on_step_end = ctrl_c_during_step_4
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert os.listdir(out / "checkpoints") == ["step-000004"]
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]
    sft.run(cfg(tiny_dir, rows, out, max_steps=6, save_steps=0, resume=True), log=quiet)
    got = losses(out)
    assert [s for s, _ in got] == list(range(1, 7))  # no step twice
    assert [v for _, v in got] == pytest.approx([v for _, v in reference_run], abs=1e-6)


def test_sigterm_saves_a_checkpoint_and_resume_has_no_duplicate_step(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    steps = 40
    cmd = [sys.executable, "-m", "rlhfkit.cli", "sft", "--model.name", tiny_dir, "--data.path", rows,
           "--data.max_length", "96", "--train.output_dir", str(out), "--train.max_steps", str(steps),
           "--train.batch_size", "2", "--train.lr", "1e-3", "--train.progress", "false",
           "--train.tensorboard", "false", "--train.threads", "1", "--train.save_steps", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for x in open(metrics) if "train/loss" in x) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1 and "terminated by SIGTERM" in line[0] and "--train.resume true" in line[0], err[-2000:]
    ckpts = os.listdir(out / "checkpoints")
    done = [s for s, _ in losses(out)]
    assert ckpts == [f"step-{done[-1]:06d}"]  # labelled with the last step logged
    assert not (out / "final").exists()
    r = subprocess.run(cmd + ["--train.resume", "true"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [s for s, _ in losses(out)] == list(range(1, steps + 1))  # no duplicates, no gaps


# 4 ------------------------------------------------------------------------------------------
def test_fresh_run_into_a_run_dir_is_refused_unless_overwrite(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    sft.run(cfg(tiny_dir, rows, out, max_steps=4), log=quiet)
    before = (out / "final" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match=r"already holds a run .*--train.resume true.*--train.overwrite true"):
        sft.run(cfg(tiny_dir, rows, out, max_steps=2, lr=5e-3), log=quiet)
    assert (out / "final" / "model.safetensors").read_bytes() == before  # untouched
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000002", "step-000004"]
    (out / "stale.txt").write_text("old")
    logs = []
    sft.run(cfg(tiny_dir, rows, out, max_steps=2, lr=5e-3, overwrite=True), log=logs.append)
    assert any("overwrite: removed the previous run" in m for m in logs)
    assert not (out / "stale.txt").exists()
    assert os.listdir(out / "checkpoints") == ["step-000002"]
    assert [s for s, _ in losses(out)] == [1, 2]
    logs = []  # and a resume continues the new run, not the old one
    sft.run(cfg(tiny_dir, rows, out, max_steps=2, lr=5e-3, resume=True), log=logs.append)
    assert any("resumed from" in m and "step-000002" in m for m in logs)


# 5 ------------------------------------------------------------------------------------------
def test_second_process_on_the_same_run_dir_is_refused(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / ".rlhfkit.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid %d on testhost' % os.getpid()); f.flush(); print('locked', flush=True); time.sleep(120)"),
        str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=rf"is in use by another run \(pid {holder.pid} on testhost\)"):
            sft.run(cfg(tiny_dir, rows, out), log=quiet)
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    logs = []  # the holder died without cleanup: its lock file is only reported
    sft.run(cfg(tiny_dir, rows, out, max_steps=2), log=logs.append)
    assert any(f"previous run pid {holder.pid} on testhost ended without cleanup" in m for m in logs), logs
    assert not lock.exists()  # a clean end removes it


# 6 ------------------------------------------------------------------------------------------
def test_resume_with_a_changed_config_or_data_is_refused(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    sft.run(cfg(tiny_dir, rows, out, max_steps=2, save_steps=1), log=quiet)
    assert json.load(open(out / "run.json"))["config"]["train"]["lr"] == 1e-3
    with pytest.raises(TrainingError, match=r"cannot resume .*train\.lr: 0\.001 -> 0\.002.*"
                                            r"--train\.resume_allow lr"):
        sft.run(cfg(tiny_dir, rows, out, max_steps=2, save_steps=1, lr=2e-3, resume=True), log=quiet)
    other = write_jsonl(tmp_path / "other.jsonl", sft_rows(make_problems(32, seed=1)))
    with pytest.raises(TrainingError, match=r"cannot resume .*data\.path.*data_examples"):
        sft.run(sft.SFTConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=other, max_length=96),
                              train=cfg(tiny_dir, rows, out, max_steps=2, save_steps=1, resume=True).train), log=quiet)
    logs = []  # an allowed change (and the always-allowed ones: progress, threads, ...)
    sft.run(cfg(tiny_dir, rows, out, max_steps=3, save_steps=1, resume=True, threads=2,
                resume_allow="max_steps"), log=logs.append)
    assert any("allowed config changes" in m and "max_steps" in m for m in logs)
    assert [s for s, _ in losses(out)] == [1, 2, 3]


# 7 ------------------------------------------------------------------------------------------
def _deny_under(monkeypatch, sub):
    import tempfile

    for name in ("mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)

        def deny(*a, _real=real, **k):
            if str(k.get("dir", "")).rstrip("/").endswith(sub):
                raise PermissionError(13, "Permission denied")
            return _real(*a, **k)
        monkeypatch.setattr(tempfile, name, deny)


def test_unwritable_checkpoints_dir_fails_before_the_first_step(tiny_dir, rows, tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)  # e.g. left read-only by another user
    _deny_under(monkeypatch, "checkpoints")
    with pytest.raises(TrainingError, match=r"checkpoints is not writable \(Permission denied\); fix its "
                                            r"permissions"):
        sft.run(cfg(tiny_dir, rows, out), log=quiet)
    assert not (out / "metrics.jsonl").exists()  # no step was trained for nothing


def test_checkpoint_write_failure_at_the_end_still_writes_final(tiny_dir, rows, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = checkpoint.save_file

    def deny_checkpoints(tensors, path, *a, **k):
        if "/checkpoints/" in str(path):
            raise PermissionError(13, "Permission denied")
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(checkpoint, "save_file", deny_checkpoints)
    logs = []
    sft.run(cfg(tiny_dir, rows, out, save_steps=0, save_optimizer=True), log=logs.append)  # a checkpoint at the end
    assert (out / "final" / "model.safetensors").exists()
    assert any("could not write checkpoint" in m and "writing final/ anyway" in m for m in logs), logs


# 8 ------------------------------------------------------------------------------------------
def test_torn_metrics_line_is_dropped_on_resume(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    sft.run(cfg(tiny_dir, rows, out, max_steps=4), log=quiet)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # killed mid-write
    logs = []
    sft.run(cfg(tiny_dir, rows, out, max_steps=4, resume=True), log=logs.append)
    assert any("dropped a torn final line" in m for m in logs), logs
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]


def test_metrics_are_strict_json_with_nonfinite_flagged(tmp_path):
    log = MetricsLog(str(tmp_path / "metrics.jsonl"), tensorboard=False)
    log.write(1, {"train/loss": float("nan"), "eval/perplexity": float("inf"), "train/lr": 0.5})

    def reject(c):
        raise ValueError(f"non-standard JSON literal {c}")
    rec = json.loads(open(tmp_path / "metrics.jsonl").read(), parse_constant=reject)
    assert rec == {"step": 1, "train/loss": None, "eval/perplexity": None, "train/lr": 0.5,
                   "nonfinite": ["train/loss", "eval/perplexity"]}


# 9 ------------------------------------------------------------------------------------------
def test_non_finite_final_weights_are_never_saved(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    t = sft.build(cfg(tiny_dir, rows, out, max_steps=2, save_steps=1), log=quiet)
    real_step = t.recipe.step
    calls = []

    def blow_up_lr(m, b):  # step 2 is taken with lr = inf (independent of config validation)
        calls.append(1)
        if len(calls) == 2:
            for g in t.optimizer.param_groups:
                g["lr"] = float("inf")
            t.scheduler.base_lrs = [float("inf")] * len(t.scheduler.base_lrs)
        return real_step(m, b)
    t.recipe.step = blow_up_lr
    with pytest.raises(TrainingError, match=r"weights are not finite \(NaN/Inf\) after step 2.*"
                                            r"last good checkpoint is .*step-000001"):
        t.train()
    assert not (out / "final").exists()
    assert os.listdir(out / "checkpoints") == ["step-000001"]


# 10 -----------------------------------------------------------------------------------------
def test_final_is_replaced_whole_no_old_files_beside_lora_adapters(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    sft.run(cfg(tiny_dir, rows, out, lora=4, max_steps=2), log=quiet)
    assert (out / "final" / "adapter_model.safetensors").exists()
    (out / "final" / "model.safetensors").write_bytes(b"old full weights")  # of an earlier run
    sft.run(cfg(tiny_dir, rows, out, lora=4, max_steps=2, resume=True), log=quiet)
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert not (out / "final" / "model.safetensors").exists()
    assert not [n for n in os.listdir(out) if n.startswith(".final")]  # no temp dirs left


def test_failed_final_write_keeps_the_previous_final(tiny_dir, rows, tmp_path):
    out = tmp_path / "run"
    sft.run(cfg(tiny_dir, rows, out, max_steps=2), log=quiet)
    before = hashlib.sha256((out / "final" / "model.safetensors").read_bytes()).hexdigest()
    t = sft.build(cfg(tiny_dir, rows, out, max_steps=2, resume=True), log=quiet)

    def half_written(m, path):
        open(os.path.join(path, "model.safetensors"), "wb").write(b"partial")
        raise OSError(28, "No space left on device")
    t.recipe.save = half_written
    with pytest.raises(TrainingError, match=r"could not write .*final: No space left on device"):
        t.train()
    assert hashlib.sha256((out / "final" / "model.safetensors").read_bytes()).hexdigest() == before

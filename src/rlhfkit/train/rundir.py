"""The run directory: one process at a time (an OS lock), what run it holds (``run.json``: the
resolved config and fingerprints of the data), and the rules for a fresh run (refused on another
run's results unless ``train.overwrite``) and for a resume (only the recorded run, except the
keys ``train.resume_allow`` names)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile

import torch

from ..errors import TrainingError
from .checkpoint import list_checkpoints, sha256_file

RUN_RECORD = "run.json"
LOCK_FILE = ".rlhfkit.lock"
RUN_MARKERS = ("metrics.jsonl", "final", "best")
ALWAYS_ALLOWED = ("train.resume", "train.resume_allow", "train.overwrite", "train.progress", "train.threads",
                  "train.tensorboard", "train.report_to", "train.log_completions", "train.log_completions_rows",
                  "train.return_freed_memory",
                  # the engine's speed switches keep the sampled distribution (up to float summation
                  # order); runtime.sampler_dtype does not, so it is not here. The rollout.* three are
                  # the names these had before the runtime section.
                  "runtime.packed_weights", "runtime.lean_decode", "runtime.shared_prefill",
                  "runtime.return_freed_memory", "runtime.vllm_gpu_memory_utilization",
                  "rollout.packed_weights", "rollout.lean_decode", "rollout.shared_prefill")
"""Config keys a resume may change without ``train.resume_allow``: they do not change what is trained."""


def is_run_dir(path: str) -> bool:
    """Whether ``path`` holds the results of a run (metrics, checkpoints, final or best model)."""
    if any(os.path.exists(os.path.join(path, m)) for m in RUN_MARKERS):
        return True
    ck = os.path.join(path, "checkpoints")
    return os.path.isdir(ck) and bool(os.listdir(ck))


def empty_run_dir(path: str) -> list[str]:
    """``--train.overwrite``: delete what ``path`` holds, except the lock file and nested run
    directories (e.g. a DPO run's ``sft_ref``, which handle their own overwrite). Returns the names removed."""
    removed = []
    for n in sorted(os.listdir(path)):
        p = os.path.join(path, n)
        if n == LOCK_FILE or (os.path.isdir(p) and os.path.exists(os.path.join(p, RUN_RECORD))):
            continue
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
        removed.append(n)
    return removed


def check_writable(paths) -> None:
    """A file can be created in each existing directory of ``paths`` (a one-line error if not)."""
    for d in paths:
        if not os.path.isdir(d):
            continue
        try:
            fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=d)
            os.close(fd)
            os.remove(tmp)
        except OSError as e:
            raise TrainingError(f"{d} is not writable ({e.strerror or e}); fix its permissions or choose another "
                                "--train.output_dir") from e


def examples_fingerprint(examples) -> dict:
    """Count and sha256 of the training examples (their token ids and fields, in order)."""
    import dataclasses as dc

    h = hashlib.sha256()
    for e in examples:
        if isinstance(e, torch.Tensor):
            h.update(e.detach().cpu().numpy().tobytes())
        else:
            text = repr(dc.asdict(e) if dc.is_dataclass(e) and not isinstance(e, type) else e)
            h.update(re.sub(r" at 0x[0-9a-f]+", "", text).encode())  # no per-process addresses
        h.update(b"\x00")
    return {"count": len(examples), "sha256": h.hexdigest()}


def file_fingerprints(config: dict) -> dict:
    """Size and sha256 of the local data files named in ``config`` (``data.path``, ``data.eval_path``, ...)."""
    out = {}
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return out
    for key, val in sorted(data.items()):
        for p in (val if isinstance(val, (list, tuple)) else [val]):
            if isinstance(p, str) and p and os.path.isfile(p):
                out[f"data.{key}:{p}"] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
    return out


def read_record(run_dir: str) -> dict | None:
    try:
        with open(os.path.join(run_dir, RUN_RECORD)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise TrainingError(f"{os.path.join(run_dir, RUN_RECORD)} is unreadable ({e}); the run cannot be "
                            "checked for resuming; start over with --train.overwrite true") from e


def write_record(run_dir: str, record: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".json", dir=run_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, os.path.join(run_dir, RUN_RECORD))


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _allowed(key: str, allow: list[str]) -> bool:
    base = key.split(":", 1)[0]  # data_files:data.path:/x.jsonl -> data_files
    return base in ALWAYS_ALLOWED or any(
        a and (base == a or base.endswith("." + a) or base.startswith(a + ".")) for a in allow)


def compare_config(old: dict, new: dict, allow: str) -> tuple[list[str], list[str]]:
    """(forbidden, allowed) differences between two run records, each as 'key: old -> new'."""
    allow_list = [a.strip() for a in allow.split(",") if a.strip()]

    def keys(rec: dict) -> dict:
        out = _flatten(rec.get("config") or {})
        data = rec.get("data") or {}
        out.update({f"data_files:{k}": v for k, v in (data.get("files") or {}).items()})
        out["data_examples"] = data.get("examples")
        return out

    a, b = keys(old), keys(new)
    bad, ok = [], []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            (ok if _allowed(k, allow_list) else bad).append(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}")
    return bad, ok


_HELD: dict[str, list] = {}  # lock path -> [file object, holders in this process]


class RunLock:
    """An exclusive ``fcntl.flock`` on ``run_dir/.rlhfkit.lock`` for the life of a run; the file
    records the holder's pid and host. The OS releases the lock when the holder dies, so a
    lock file left behind by a dead process is only reported."""

    def __init__(self, run_dir: str, log=None):
        import fcntl

        self.path = os.path.realpath(os.path.join(run_dir, LOCK_FILE))
        self.stale = ""
        if self.path in _HELD:  # another Trainer of this process (nested or rebuilt) shares it
            _HELD[self.path][1] += 1
            return
        for _ in range(10):
            f = open(self.path, "a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise TrainingError(f"{run_dir} is in use by another run ({holder}); wait for it to end or "
                                    "choose another --train.output_dir") from None
            try:  # the file may have been unlinked by the previous holder between open and flock
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        else:
            raise TrainingError(f"could not lock {self.path}; retry")
        f.seek(0)
        previous = f.read().strip()
        if previous:
            self.stale = f"{run_dir}: previous run {previous} ended without cleanup (its lock file was left behind)"
            if log:
                log(self.stale)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        _HELD[self.path] = [f, 1]

    def release(self) -> None:
        held = _HELD.get(self.path)
        if held is None or getattr(self, "_released", False):
            return
        self._released = True
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[self.path]
        try:
            os.remove(self.path)  # a clean end leaves no lock file
        except OSError:
            pass
        held[0].close()


def prepare_run_dir(cfg, ckpt_dir: str, record: dict, name: str, log) -> "RunLock":
    """Before anything is written: the dir is writable and ours alone (the returned lock, held
    for the run's life); a fresh run does not land on another run's results unless told to
    overwrite them; a resume continues only the run it was recorded as (config and data)."""
    out = cfg.output_dir
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"cannot create the output dir {out} ({e.strerror or e}); fix its permissions "
                            "or choose another --train.output_dir") from e
    check_writable([out, ckpt_dir] + [os.path.join(out, d) for d in ("final", "best")])
    lock = RunLock(out, log)
    try:
        if cfg.resume:
            old = read_record(out)
            if old is not None and list_checkpoints(ckpt_dir):
                bad, ok = compare_config(old, record, cfg.resume_allow)
                if bad:
                    keys = list(dict.fromkeys(b.split(":", 1)[0] for b in bad))
                    allow = ",".join(k[6:] if k.startswith("train.") else k for k in keys)
                    raise TrainingError(f"cannot resume {out}: it was recorded with a different config or data "
                                        f"({'; '.join(bad)[:400]}); allow it with --train.resume_allow {allow} "
                                        "or start over with --train.overwrite true (deletes the run)")
                if ok:
                    log(f"[{name}] resume: allowed config changes: {'; '.join(ok)[:400]}")
            elif old is None and list_checkpoints(ckpt_dir):
                log(f"[{name}] resume: {out} has no recorded config ({os.path.basename(out)}/run.json); "
                    "not checked")
        elif is_run_dir(out):
            if not cfg.overwrite:
                raise TrainingError(f"{out} already holds a run (metrics, checkpoints or final/); continue it with "
                                    "--train.resume true, replace it with --train.overwrite true, or choose another "
                                    "--train.output_dir")
            removed = empty_run_dir(out)
            log(f"[{name}] overwrite: removed the previous run in {out} ({', '.join(removed)})")
        write_record(out, record)
    except BaseException:
        lock.release()
        raise
    return lock

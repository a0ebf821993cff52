"""Atomic, verifiable training checkpoints.

A checkpoint directory ``checkpoints/step-000123`` holds the model files as in final/ (so
``from_pretrained`` loads it: config + safetensors, or LoRA adapter files), the trainable
weights (``model.safetensors`` is a hard link to them when it holds exactly them), the
optimizer and scheduler states, the trainer state (step = data position), any recipe state, and every RNG state. Nothing in it
is a pickle: tensors are stored as safetensors (``trainable.safetensors``,
``states.safetensors``) and everything else as JSON (``states.json``, whose tensors are
references into ``states.safetensors``; ``trainer_state.json``), so loading a checkpoint can
never run code. A directory holding a ``states.pt`` pickle (the old format, or a planted
file) is refused without being opened.

It is written into a temporary directory that is renamed into place only when complete;
``manifest.json`` (written last) records each file's size and sha256, so a torn, truncated
or bit-flipped checkpoint is detected on resume and the previous one is used instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from ..errors import TrainingError

try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # older safetensors
    _SafetensorError = RuntimeError

MANIFEST = "manifest.json"
FORMAT = 2
LEGACY_PICKLE = "states.pt"
SHARDED_FILES = ("shards/info.json", "states.safetensors", "states.json", "trainer_state.json")
"""What a sharded (train.fsdp) checkpoint must list besides its per-process shard files."""


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])


def trainable_state(model) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- code-free states
def encode_states(obj, tensors: dict):
    """A JSON-able skeleton of ``obj``; its tensors (and numpy arrays) go into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return encode_states(obj.item(), tensors)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_states(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode_states(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_states(v, tensors) for k, v in obj.items()}
        return {"__items__": [[encode_states(k, tensors), encode_states(v, tensors)] for k, v in obj.items()]}
    raise TrainingError(f"cannot checkpoint a value of type {type(obj).__name__}; recipe state must be "
                        "tensors, numbers, strings, lists and dicts")


def decode_states(obj, tensors: dict):
    if isinstance(obj, list):
        return [decode_states(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(decode_states(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {decode_states(k, tensors): decode_states(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_states(v, tensors) for k, v in obj.items()}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yield a temporary sibling directory; when the block succeeds it replaces ``path``
    (nothing of an old ``path`` survives beside the new files); when it fails ``path`` is untouched."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=f".{name}-new-", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{name}-old-", dir=parent)
            os.replace(path, os.path.join(old, name))
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- writing
def save_checkpoint(root: str, step: int, *, model, optimizer, scheduler, state: dict,
                    extra: dict | None = None, keep: int = 2, export=None) -> str:
    """Write ``root/step-{step}`` atomically; delete all but the newest ``keep``."""
    return save_state(root, step, model=model, state=state, keep=keep, export=export, states={
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "extra": extra or {}})


def _same_tensors(path: str, tensors: dict) -> bool:
    """Whether the safetensors file ``path`` holds exactly ``tensors`` (names, dtypes, values)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            if set(f.keys()) != set(tensors):
                return False
            return all(torch.equal(f.get_tensor(k), t) and f.get_tensor(k).dtype == t.dtype
                       for k, t in tensors.items())
    except Exception:  # unreadable or another layout: not the same
        return False


def _write_trainable(tmp: str, tensors: dict) -> None:
    """``trainable.safetensors``; when the exported ``model.safetensors`` holds exactly the same
    tensors (full fine-tuning), it becomes a hard link to it: one copy of the weights on disk."""
    target, model_file = os.path.join(tmp, "trainable.safetensors"), os.path.join(tmp, "model.safetensors")
    save_file(tensors, target, metadata={"format": "pt"})  # the metadata from_pretrained expects
    if os.path.isfile(model_file) and _same_tensors(model_file, tensors):
        link = model_file + ".link"
        try:
            os.link(target, link)
            os.replace(link, model_file)
        except OSError:  # a file system without hard links: two copies
            with contextlib.suppress(OSError):
                os.remove(link)


def _write_manifest(tmp: str, **extra) -> None:
    """``manifest.json`` (size and sha256 of every file), then every file flushed to disk."""
    files = {n: {"size": os.path.getsize(os.path.join(tmp, n)), "sha256": sha256_file(os.path.join(tmp, n))}
             for n in _files(tmp)}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump({"format": FORMAT, **extra, "files": files}, f, indent=1)
    for n in _files(tmp):  # flush file contents before the rename publishes them
        with open(os.path.join(tmp, n), "rb") as fh:
            os.fsync(fh.fileno())


def _files(d: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, n), d) for r, _, ns in os.walk(d) for n in ns)


def save_state(root: str, step: int, *, model, state: dict, states: dict, keep: int = 2, export=None) -> str:
    """Atomic checkpoint of the trainable weights, ``states`` (tensors as safetensors, the rest
    as JSON, with the RNG states) and the JSON ``state``, as ``root/step-{step}``; keeps the
    newest ``keep``. ``export(dir)`` first writes the model files (as in final/), so that
    ``from_pretrained`` loads the checkpoint; the training state lies beside them."""
    final = os.path.join(root, f"step-{step:06d}")
    tmp = None
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=root)
        if export is not None:
            export(tmp)
        _write_trainable(tmp, trainable_state(model))
        tensors: dict = {}
        skeleton = encode_states(dict(states, rng=rng_state()), tensors)
        save_file(tensors, os.path.join(tmp, "states.safetensors"))
        with open(os.path.join(tmp, "states.json"), "w") as f:
            json.dump(skeleton, f, allow_nan=False)
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(dict(state, step=step), f, indent=1, allow_nan=False)
        _write_manifest(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, (OSError, RuntimeError, _SafetensorError)):  # torch: a full disk is a RuntimeError
            raise
        good = latest_checkpoint(root)
        raise TrainingError(f"could not write checkpoint {final}: {getattr(e, 'strerror', None) or e}. Free disk "
                            "space or fix permissions; earlier checkpoints are kept (last good: "
                            f"{good or 'none'})") from e
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- sharded (train.fsdp)
def _write_error(e: BaseException, final: str, root: str) -> TrainingError:
    good = latest_checkpoint(root)
    return TrainingError(f"could not write checkpoint {final}: {getattr(e, 'strerror', None) or e}. Free disk "
                         f"space or fix permissions; earlier checkpoints are kept (last good: {good or 'none'})")


def sharded_tmp(root: str, step: int) -> str:
    """The directory every process writes its part of checkpoint ``step`` into (one name for all)."""
    return os.path.join(root, f".step-{step:06d}-sharded")


def begin_sharded(root: str, step: int, export=None) -> str:
    """Main process: a fresh, empty :func:`sharded_tmp` (with the model files when ``export``)."""
    from .fsdp import SHARD_DIR

    tmp = sharded_tmp(root, step)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, SHARD_DIR))
        if export is not None:
            export(tmp)
    except (OSError, RuntimeError, _SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, os.path.join(root, f"step-{step:06d}"), root) from e
    return tmp


def write_shard(tmp: str, rank: int, world: int, states: dict, shapes: dict) -> None:
    """One process's shard (model and optimizer states, as from :func:`.fsdp.shard_states`) and its
    RNG states, as safetensors + JSON."""
    from .fsdp import shard_file

    base = os.path.join(tmp, shard_file(rank, world))
    try:
        tensors: dict = {}
        skeleton = encode_states(dict(states, rng=rng_state()), tensors)
        save_file(tensors, base + ".safetensors")
        with open(base + ".json", "w") as f:
            json.dump({"rank": rank, "world": world, "shapes": shapes, "states": skeleton}, f, allow_nan=False)
    except (OSError, RuntimeError, _SafetensorError) as e:
        raise TrainingError(f"could not write {base}.safetensors: {getattr(e, 'strerror', None) or e}; free disk "
                            "space or fix permissions") from e


def finish_sharded(root: str, step: int, world: int, *, scheduler, state: dict, extra: dict | None,
                   keep: int = 2) -> str:
    """Main process, after every shard is written: the shared states (scheduler, recipe state),
    the trainer state, the manifest over every file, then the rename into ``root/step-{step}``."""
    from .fsdp import SHARD_DIR

    tmp, final = sharded_tmp(root, step), os.path.join(root, f"step-{step:06d}")
    try:
        with open(os.path.join(tmp, SHARD_DIR, "info.json"), "w") as f:
            json.dump({"world": world}, f)
        tensors: dict = {}
        skeleton = encode_states({"scheduler": scheduler.state_dict(), "extra": extra or {}}, tensors)
        save_file(tensors, os.path.join(tmp, "states.safetensors"))
        with open(os.path.join(tmp, "states.json"), "w") as f:
            json.dump(skeleton, f, allow_nan=False)
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(dict(state, step=step), f, indent=1, allow_nan=False)
        _write_manifest(tmp, sharded=True)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, RuntimeError, _SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, final, root) from e
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _manifest(path: str) -> dict:
    if os.path.exists(os.path.join(path, LEGACY_PICKLE)):
        raise TrainingError(f"checkpoint {path} holds {LEGACY_PICKLE}, a pickle that could run code when "
                            "loaded; refused. Resume from a checkpoint written by this version, or start over")
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError("format")
    except (OSError, ValueError, AttributeError) as e:
        raise TrainingError(f"checkpoint {path} has no valid manifest; it cannot be verified") from e
    return manifest


def load_sharded_checkpoint(path: str, *, model, optimizer, scheduler, rank: int) -> tuple[dict, dict]:
    """Restore a sharded checkpoint into ``model`` (sharded over any number of processes, or one
    plain model) and its optimizer, the scheduler and this process's RNG states (the saved
    process of the same rank, else rank 0's); return (trainer state, recipe extra). Every process
    re-assembles the full states from the shard files and keeps its own shard of them. Every file
    is checked against its sha256 as it is read; no file is unpickled."""
    from . import fsdp

    manifest = _manifest(path)
    if not manifest.get("sharded"):
        raise TrainingError(f"checkpoint {path} was written without train.fsdp; resume it with --train.fsdp false "
                            "(the same setting the run was started with)")
    read = lambda name: _read_verified(path, name, manifest)  # noqa: E731
    err, full, rngs = "", {}, []
    try:
        full, rngs = fsdp.load_full_states(path, read)
        params = fsdp.trainable_names(model)
        names = set(full["model"])
        if names != params:
            err = (f"checkpoint {path} does not match this model (e.g. '{sorted(names ^ params)[0]}'); resume "
                   "with the same model and LoRA/freeze settings")
    except TrainingError as e:
        err = str(e)
    err = fsdp.agree(err)  # every process stops before the load when the main one cannot go on
    if err:
        raise TrainingError(err)
    fsdp.set_full_states(model, optimizer, full)
    del full
    rng = rngs[rank] if rank < len(rngs) else rngs[0]
    tensors = load_bytes(read("states.safetensors"))
    states = decode_states(json.loads(read("states.json")), tensors)
    try:
        scheduler.load_state_dict(states["scheduler"])
    except (KeyError, ValueError) as e:
        raise TrainingError(f"checkpoint {path}: the scheduler state does not fit this run ({e})") from e
    set_rng_state(rng)
    return json.loads(read("trainer_state.json")), states.get("extra", {})


# --------------------------------------------------------------------------- checking
def list_checkpoints(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step-") and n[5:].isdigit())
    return [os.path.join(root, n) for n in names]


def check_checkpoint(path: str) -> str:
    """Why ``path`` cannot be used ('' when it is intact): a pickle in it, a missing or
    unreadable manifest, a file missing, of the wrong size or with the wrong sha256."""
    if os.path.exists(os.path.join(path, LEGACY_PICKLE)):
        return f"it holds {LEGACY_PICKLE}, a pickle that could run code when loaded; refused, not opened"
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return "no manifest (the write did not finish)"
    except (OSError, ValueError):
        return "its manifest is unreadable"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
            manifest.get("files"), dict):
        return "its manifest is not of this checkpoint format (no sha256 per file)"
    required = SHARDED_FILES if manifest.get("sharded") else ("trainable.safetensors", "states.safetensors",
                                                             "states.json", "trainer_state.json")
    for n in required:
        if n not in manifest["files"]:
            return f"the manifest does not list {n}"
    for n, meta in manifest["files"].items():
        p = os.path.join(path, n)
        try:
            if os.path.getsize(p) != meta["size"]:
                return f"{n} has {os.path.getsize(p)} bytes, the manifest says {meta['size']} (torn write)"
            if sha256_file(p) != meta["sha256"]:
                return f"{n} does not match its sha256 in the manifest (corrupted bytes)"
        except OSError:
            return f"{n} is missing or unreadable"
        except (KeyError, TypeError):
            return "its manifest is malformed"
    return ""


def is_complete(path: str) -> bool:
    return check_checkpoint(path) == ""


def latest_checkpoint(root: str, log=None) -> str | None:
    """Newest intact checkpoint; broken ones are reported (one line each, with the reason) and skipped."""
    for path in reversed(list_checkpoints(root)):
        why = check_checkpoint(path)
        if not why:
            return path
        if log:
            log(f"checkpoint {path} is incomplete or corrupted ({why}); trying the previous one")
    return None


# --------------------------------------------------------------------------- loading
def load_checkpoint(path: str, *, model, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore weights, optimizer, scheduler and RNG; return (trainer state, recipe extra)."""
    state, states = load_state(path, model=model)
    try:
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise TrainingError(f"checkpoint {path}: the optimizer state does not fit this run ({e}); resume "
                            "with the same model, LoRA/freeze settings and optimizer groups") from e
    return state, states.get("extra", {})


def _read_verified(path: str, name: str, manifest: dict) -> bytes:
    with open(os.path.join(path, name), "rb") as f:
        data = f.read()
    meta = manifest["files"].get(name)
    if meta is None or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise TrainingError(f"checkpoint {path}: {name} does not match its sha256 in the manifest; delete "
                            "the checkpoint to resume from the previous one")
    return data


def load_state(path: str, *, model) -> tuple[dict, dict]:
    """Restore the weights and RNG states of a ``save_state`` checkpoint; return
    (its JSON state, its states). Every file is checked against its sha256 as it is read;
    no file is unpickled."""
    manifest = _manifest(path)
    if manifest.get("sharded"):
        raise TrainingError(f"checkpoint {path} is sharded (written with train.fsdp); resume it with --train.fsdp "
                            "true (the same setting the run was started with)")
    weights = load_bytes(_read_verified(path, "trainable.safetensors", manifest))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise TrainingError(f"checkpoint {path} does not match this model (e.g. '{missing[0]}'); "
                            "resume with the same model and LoRA/freeze settings")
    tensors = load_bytes(_read_verified(path, "states.safetensors", manifest))
    states = decode_states(json.loads(_read_verified(path, "states.json", manifest)), tensors)
    state = json.loads(_read_verified(path, "trainer_state.json", manifest))
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    set_rng_state(states["rng"])
    return state, states

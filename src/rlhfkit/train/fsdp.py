"""Fully sharded data parallel (FSDP2) for the training loop: sharding, full-weight views and
sharded checkpoints.

``train.fsdp: true`` under ``torchrun`` / ``accelerate launch`` (or an accelerate config with
``distributed_type: FSDP``) shards every parameter, its gradient and its optimizer state over
the processes with ``torch.distributed.fsdp.fully_shard``: one unit per transformer block (the
classes a Hugging Face model lists in ``_no_split_modules``), then one per top-level model.
``fully_shard`` is applied here directly rather than through accelerate's FSDP plugin, because
accelerate enables FSDP only for accelerator devices: on the CPU (gloo) it silently falls back
to DDP, and the sharded path must be the same code on a laptop and on GPUs.

Gradients. FSDP2 reduce-scatters each gradient as the mean over processes, exactly as DDP
all-reduces it, so the loop's loss scaling is unchanged. A trainable parameter outside every
FSDP unit (used functionally, never through a module's forward) stays replicated; its gradient
is averaged explicitly (:func:`sync_replicated_grads`).

Full weights. :class:`FullCopy` gathers the consolidated weights onto the main process into a
plain copy of the model (collective: every process enters it), which ``save_pretrained`` writes
(``final/``, ``best/`` and the model files of a checkpoint).

Sharded checkpoints. The model and optimizer states come from
``torch.distributed.checkpoint.state_dict.get_state_dict`` (keyed by parameter name, each
sharded tensor a ``DTensor``); every process writes its own shard file,
``shards/rank-R-of-W.safetensors`` + ``.json``, holding its local shards, its RNG states and the
global shape of each sharded tensor. torch.distributed.checkpoint's own file layout is not used
because its reader unpickles a ``.metadata`` file, and a checkpoint is untrusted input (see
:mod:`.checkpoint`: nothing in a checkpoint is a pickle). Loading re-shards: every process
concatenates the shards of every saved process (FSDP2 splits dim 0 as ``torch.chunk`` does) into
full tensors and ``set_state_dict(..., full_state_dict=True)`` keeps this process's part of them,
for however many processes the resumed run has (2 -> 1 and 1 -> 2 included); a run of one process with
``train.fsdp`` (nothing to shard) writes and reads the same format.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os

import torch
import torch.distributed as dist
from torch import nn

from ..errors import TrainingError

SHARD_DIR = "shards"


def fsdp_requested(cfg) -> bool:
    """``train.fsdp``, or an accelerate launch whose config asks for FSDP (``ACCELERATE_USE_FSDP``)."""
    return bool(cfg.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def block_classes(model) -> set[str]:
    """Names of the transformer-block classes of every Hugging Face model inside ``model``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard_model(model: nn.Module, world: int, device: torch.device) -> nn.Module:
    """``fully_shard`` on every transformer block, then on ``model`` itself, whose forward the recipe
    calls: its unit holds what is left (embeddings, final norm, heads), gathered from the forward to
    the backward, so the chunked LM-head pass may read the head's weight after the forward. A model
    of parts called separately (``wrap_parts``) gets one such unit per top-level Hugging Face model
    instead. In place; returns ``model``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import PreTrainedModel

    mesh = init_device_mesh(device.type, (world,))
    blocks = block_classes(model)
    if not blocks:
        raise TrainingError("train.fsdp: the model names no transformer-block classes (_no_split_modules), so "
                            "there is nothing to shard it by; train it with DDP (train.fsdp false)")
    for m in list(model.modules()):
        if type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
    tops = []
    for name, m in model.named_modules():  # outermost Hugging Face models (a peft wrapper's base included)
        if isinstance(m, PreTrainedModel) and not any(t == "" or name.startswith(t + ".") for t in tops):
            tops.append(name)
    if getattr(model, "wrap_parts", None) is None or "" in tops:
        fully_shard(model, mesh=mesh)  # the recipe calls the root: its forward gathers what is left
        return model
    for name in tops:  # parts called one by one (policy, critic): each its own root-like unit, kept
        # gathered from its forward to its backward (the chunked LM-head pass reads the weight in between)
        fully_shard(model.get_submodule(name), mesh=mesh, reshard_after_forward=False)
    return model


def sync_replicated_grads(params, world: int) -> None:
    """Average the gradients of trainable parameters that no FSDP unit manages (plain tensors)."""
    DTensor = _dtensor_type()
    for p in params:
        if p.grad is not None and not isinstance(p, DTensor):
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def agree(err: str) -> str:
    """The first process's error message among every process's, on every process ('' when none)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return err
    errs: list = [None] * dist.get_world_size()
    dist.all_gather_object(errs, err)
    return next((str(e) for e in errs if e), "")


def local(t: torch.Tensor) -> torch.Tensor:
    DTensor = _dtensor_type()
    return t.to_local() if isinstance(t, DTensor) else t


def grad_norm(params) -> torch.Tensor:
    """The global L2 norm of the gradients (sharded ones reduced over the processes)."""
    DTensor = _dtensor_type()
    sq_sharded = torch.zeros((), dtype=torch.float64)
    sq_plain = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        if isinstance(g, DTensor):
            sq_sharded += local(g).double().pow(2).sum()
        else:
            sq_plain += g.double().pow(2).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sq_sharded)
    return (sq_sharded + sq_plain).sqrt()


def clip_grad_norm(params, max_norm: float) -> float:
    """Clip every gradient by the global norm (as ``torch.nn.utils.clip_grad_norm_``); return it."""
    params = [p for p in params if p.grad is not None]
    norm = grad_norm(params)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        local(p.grad).mul_(coef.to(p.grad.dtype))
    return float(norm)


def weights_finite(params) -> bool:
    """Every process's shard of every parameter is finite (collective)."""
    ok = torch.tensor([float(all(bool(torch.isfinite(local(p)).all()) for p in params))])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


class FullCopy:
    """The consolidated model for writing it out: a copy of the model's structure kept on the
    ``meta`` device (no memory), made before sharding; :meth:`gathered` fills it on the main
    process with the full weights (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``,
    collective) for the length of a block and empties it again. ``save_pretrained`` on the sharded
    modules themselves cannot be used: their ``state_dict()`` holds DTensors, whose gathering is a
    collective that only the writing process would enter."""

    def __init__(self, model: nn.Module):
        # deepcopy with every parameter and buffer pre-mapped to a meta tensor: the structure is
        # copied, the weights never are (tied weights map to one meta tensor and stay tied)
        memo: dict = {}
        for t in list(model.parameters()) + list(model.buffers()):
            if id(t) not in memo:
                meta = torch.empty_like(t, device="meta")
                memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                    else meta
        self.skeleton = copy.deepcopy(model, memo)

    @contextlib.contextmanager
    def gathered(self, model: nn.Module, main: bool):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not main:
            del full
            yield None
            return
        sk = self.skeleton
        try:
            # the gathered tensors become the copy's own (assign): no second copy of the weights
            missing, unexpected = sk.load_state_dict(full, strict=False, assign=True)
            if unexpected or [k for k in missing if k in dict(sk.named_parameters())]:
                raise TrainingError(f"train.fsdp: the gathered weights do not fit the model (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]})")
            del full
            for m in sk.modules():  # buffers outside the state dict (e.g. rotary tables) get storage
                for name, b in list(m._buffers.items()):
                    if b is not None and b.is_meta:
                        m._buffers[name] = torch.zeros_like(b, device="cpu")
            for m in sk.modules():  # tied input/output embeddings stay one tensor
                if hasattr(m, "tie_weights") and getattr(getattr(m, "config", None), "tie_word_embeddings", False):
                    m.tie_weights()
            yield sk
        finally:
            self.skeleton = sk.to("meta")


# --------------------------------------------------------------------------- sharded checkpoints
def _strip(obj, shapes: dict, path: str = ""):
    """``obj`` with every DTensor replaced by its local shard; the global shapes go into ``shapes``."""
    DTensor = _dtensor_type()
    if isinstance(obj, DTensor):
        shapes[path] = list(obj.shape)
        return obj.to_local().detach().cpu().contiguous()
    if isinstance(obj, dict):
        return {k: _strip(v, shapes, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip(v, shapes, f"{path}/{i}") for i, v in enumerate(obj))
    return obj


def _join(objs: list, shapes: dict, path: str = ""):
    """The full state from every saved process's stripped state: sharded tensors concatenated
    along dim 0 in rank order (checked against the recorded global shape), the rest from rank 0."""
    first = objs[0]
    if path in shapes:
        full = torch.cat([o for o in objs if o.numel() or o.dim() > 0], dim=0)
        if list(full.shape) != shapes[path]:
            raise TrainingError(f"sharded checkpoint: '{path}' reassembles to {list(full.shape)}, its recorded "
                                f"shape is {shapes[path]}; the shard files do not belong together")
        return full
    if isinstance(first, dict):
        return {k: _join([o[k] for o in objs], shapes, f"{path}/{k}") for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_join([o[i] for o in objs], shapes, f"{path}/{i}") for i in range(len(first)))
    return first


def shard_states(model, optimizer) -> tuple[dict, dict]:
    """This process's shard of the model's trainable weights and of the optimizer state, keyed by
    parameter name, and the global shape of every sharded tensor (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    trainable = trainable_names(model)
    msd = {k: v for k, v in msd.items() if k in trainable}  # a frozen tied weight's second name stays out
    shapes: dict = {}
    state = {"model": _strip(msd, shapes, "/model"), "optimizer": _strip(osd, shapes, "/optimizer")}
    return state, shapes


def trainable_names(model) -> set[str]:
    """Every state-dict name of a trainable parameter (tied weights under each of their names)."""
    return {k for k, v in model.state_dict(keep_vars=True).items() if getattr(v, "requires_grad", False)}


def shard_file(rank: int, world: int) -> str:
    return os.path.join(SHARD_DIR, f"rank-{rank:05d}-of-{world:05d}")


def load_full_states(path: str, read) -> tuple[dict, list[dict]]:
    """Full (re-assembled) model and optimizer states of the sharded checkpoint ``path`` and every
    saved process's RNG states. ``read(name) -> bytes`` reads a verified file of the checkpoint."""
    from safetensors.torch import load as load_bytes

    from .checkpoint import decode_states

    try:
        info = json.loads(read(os.path.join(SHARD_DIR, "info.json")))
        world = int(info["world"])
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingError(f"checkpoint {path}: {SHARD_DIR}/info.json is malformed") from e
    states, shapes = [], None
    for r in range(world):
        base = shard_file(r, world)
        tensors = load_bytes(read(base + ".safetensors"))
        meta = json.loads(read(base + ".json"))
        states.append(decode_states(meta["states"], tensors))
        if shapes is None:
            shapes = meta["shapes"]
        elif meta["shapes"] != shapes:
            raise TrainingError(f"checkpoint {path}: the shard files record different global shapes")
    full = _join([{"model": s["model"], "optimizer": s["optimizer"]} for s in states], shapes or {})
    return full, [s["rng"] for s in states]


def set_full_states(model, optimizer, full: dict) -> None:
    """Load full model/optimizer states (the same on every process) into the possibly sharded
    ``model`` and its optimizer: each process keeps its shard of every tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(full_state_dict=True, strict=False)
    try:
        set_state_dict(model, optimizer, model_state_dict=full.get("model", {}),
                       optim_state_dict=full.get("optimizer", {}), options=opts)
    except (KeyError, ValueError, RuntimeError) as e:
        raise TrainingError(f"the checkpoint's model/optimizer state does not fit this run ({str(e)[:300]}); resume "
                            "with the same model, LoRA/freeze settings and optimizer groups") from e

"""A Hugging Face model in a form that pickles and is rebuilt in another process (the ``ray``
rollout engine's actors): its class, config and state dict.

Pickling the module itself is not reliable: transformers installs output-capturing hooks
(local closures) on a model's first forward, which the standard pickle refuses and which a
by-value copy (cloudpickle) carries over without the state they need (``output_hidden_states``
then returns None in the copy).
"""

from __future__ import annotations

import torch


def pack_model(model) -> dict:
    """``{"cls", "config", "state", "training"}`` of an HF model (tensors detached, on the CPU)."""
    return {"cls": type(model), "config": model.config, "training": model.training,
            "state": {k: v.detach().to("cpu") for k, v in model.state_dict().items()}}


def unpack_model(packed: dict):
    """The model of :func:`pack_model`: built from its config (in the dtype of its floating
    weights), then given the saved weights."""
    from .segments import register

    register()  # the attention implementation rlhfkit's models may name in their config
    model = packed["cls"](packed["config"])
    dtype = next((t.dtype for t in packed["state"].values() if t.is_floating_point()), None)
    if dtype is not None:
        model.to(dtype)
    with torch.no_grad():
        model.load_state_dict(packed["state"])
    return model.train(packed["training"])

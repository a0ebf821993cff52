"""model.gradient_checkpointing: the same log-probs, scores and gradients as keeping every
activation (packed rows with shared prompts, frozen lower layers, LoRA, scalar heads)."""

import random

import pytest
import torch

from rlhfkit.config import LoraConfig, ModelConfig
from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Example
from rlhfkit.errors import ModelError
from rlhfkit.models.forward import completion_logprobs, sequence_scores
from rlhfkit.models.loading import load_model, load_scalar_model


def examples():
    rng = random.Random(0)

    def ids(n):
        return [rng.randrange(5, 200) for _ in range(n)]

    return [Example(i, ids(rng.randint(3, 9)), [ids(rng.randint(2, 8)), ids(rng.randint(2, 8))])
            for i in range(5)]


def grads_of(model, objective):
    model.train()
    model.zero_grad()
    value = objective(model)
    value.backward()
    return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("freeze, lora, every", [(0, 0, 1), (1, 0, 1), (0, 4, 1), (0, 0, 2)])
def test_logprobs_and_gradients_unchanged(tiny_dir, freeze, lora, every):
    batch = collate(examples(), pad_id=0, pack_length=48)
    assert batch.input_ids.shape[0] < 5  # several samples share a packed row

    def objective(m):
        out = completion_logprobs(m, batch, chunk=7)
        return (out.seq_logps * torch.linspace(-1, 1, out.seq_logps.numel())).sum()

    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # same LoRA initialisation
        m, _ = load_model(ModelConfig(name=tiny_dir, freeze_layers=freeze, gradient_checkpointing=ckpt,
                                      gradient_checkpointing_every=every, lora=LoraConfig(r=lora)))
        results.append(grads_of(m, objective))
    (v0, g0), (v1, g1) = results
    assert g0.keys() == g1.keys() and len(g0) > 0
    assert torch.allclose(v0, v1, atol=1e-6)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-5), n
    m1, _ = load_model(ModelConfig(name=tiny_dir, gradient_checkpointing=True))
    assert unwrapped_flag(m1)


def unwrapped_flag(model) -> bool:
    return any(getattr(mod, "gradient_checkpointing", False) for mod in model.modules())


def test_scalar_model_gradients_unchanged(tiny_dir):
    batch = collate(examples(), pad_id=0, pack_length=48)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # same fresh score head
        m, _ = load_scalar_model(ModelConfig(name=tiny_dir, gradient_checkpointing=ckpt))
        results.append(grads_of(m, lambda m: sequence_scores(m, batch).pow(2).sum()))
    (v0, g0), (v1, g1) = results
    assert torch.allclose(v0, v1, atol=1e-6)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-5), n


def test_model_without_support_is_a_clear_error(tiny_dir, monkeypatch):
    from transformers import LlamaForCausalLM

    with pytest.raises(ModelError, match="gradient_checkpointing_every"):
        load_model(ModelConfig(name=tiny_dir, gradient_checkpointing=True, gradient_checkpointing_every=0))
    monkeypatch.setattr(LlamaForCausalLM, "supports_gradient_checkpointing", False)
    with pytest.raises(ModelError, match="gradient_checkpointing"):
        load_model(ModelConfig(name=tiny_dir, gradient_checkpointing=True))


def saved_numel(model, batch) -> int:
    """Activation elements autograd keeps for backward during one forward (weights, which
    are kept anyway, are not counted)."""
    total, weights = 0, {p.data_ptr() for p in model.parameters()}

    def pack(t):
        nonlocal total
        if t.data_ptr() not in weights:
            total += t.numel()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_logprobs(model, batch, chunk=7).seq_logps.sum()
    return total


def test_checkpointing_keeps_fewer_activations(tiny_dir):
    batch = collate(examples(), pad_id=0, pack_length=48)
    plain = saved_numel(load_model(ModelConfig(name=tiny_dir))[0], batch)
    ckpt = saved_numel(load_model(ModelConfig(name=tiny_dir, gradient_checkpointing=True))[0], batch)
    assert ckpt < 0.3 * plain, (ckpt, plain)

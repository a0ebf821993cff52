"""The glibc allocator switch in its new home, and scoped packed products that leave the
model's modules untouched."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

from rlhfkit.backends.cpu import packed
from rlhfkit.backends.cpu.memory import return_freed_memory


def test_return_freed_memory_is_re_exported():
    from rlhfkit.train import setup

    assert setup.return_freed_memory is return_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_return_freed_memory_on_glibc():
    assert return_freed_memory() is True


@pytest.mark.skipif(not packed.packed_linear_available(), reason="this torch build has no oneDNN")
def test_packed_calls_route_products_without_touching_the_module(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8, bias=False))
    x = torch.randn(6, 16)
    calls = []
    real = packed.packed_matmul
    monkeypatch.setattr(packed, "packed_matmul", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    with torch.no_grad():
        h = torch.relu(x.double() @ model[0].weight.double().T + model[0].bias.double())
        want = h @ model[2].weight.double().T
    with packed.packed_calls(model, rows=6):
        assert not any("forward" in m.__dict__ for m in model.modules())
        with torch.no_grad():
            got = model(x)
            model(x[:2])  # fewer than MIN_ROWS rows: the plain product
        y = model(x)      # grad mode: the plain product, gradients flow
        y.sum().backward()
    assert calls == [6, 6]
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert model[0].weight.grad is not None and y.requires_grad
    with torch.no_grad():
        model(x)
    assert calls == [6, 6]  # nothing routed after the block

"""WPO's pair weight min(1, exp(ℓ_w + ℓ_l)) by hand (docs/algorithms.md#wpo); the recipe-level checks
against explicit logits are in tests/train/test_dpo_wpo.py."""

import math

import torch

from rlhfkit.losses.preference import wpo_weight


def test_values_by_hand_and_the_cap():
    lw = torch.tensor([-0.5, 0.3, 0.0, -1e4, 2.0], dtype=torch.float64)
    ll = torch.tensor([-0.25, -0.1, 0.0, -1.0, 1e4], dtype=torch.float64)
    # exp(-0.75); exp(0.2) > 1 is capped; on-policy-like ℓ = 0 gives 1; huge negative → 0; huge positive → 1
    assert wpo_weight(lw, ll).tolist() == [math.exp(-0.75), 1.0, 1.0, 0.0, 1.0]


def test_no_gradient_and_empty():
    lw = torch.tensor([-0.3, -2.0], requires_grad=True)
    ll = torch.tensor([-0.1, 0.5], requires_grad=True)
    w = wpo_weight(lw, ll)
    assert not w.requires_grad and w.grad_fn is None
    assert torch.allclose(w, torch.tensor([math.exp(-0.4), math.exp(-1.5)]))
    assert wpo_weight(torch.zeros(0), torch.zeros(0)).shape == (0,)

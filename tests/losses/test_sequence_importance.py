"""Sequence-level importance ratio (RLOO as in Ahmadian et al. 2024; the importance_level
setting), against numpy."""

import numpy as np
import torch

from rlhfkit.losses.policy import sequence_clipped_surrogate


def test_rloo_sequence_level_ratio_matches_numpy():
    # two sequences: tokens 0-2 (seq 0), 3-4 (seq 1); token 5 belongs to seq 1 but is masked
    logp = np.array([-1.0, -0.5, -2.0, -0.3, -0.7, -9.0])
    old = np.array([-1.1, -0.6, -1.9, -0.2, -0.5, -1.0])
    adv = np.array([0.8, 0.8, 0.8, -0.5, -0.5, -0.5])
    mask = np.array([1, 1, 1, 1, 1, 0.0])
    seq = np.array([0, 0, 0, 1, 1, 1])
    # by hand: Σ Δ seq 0 = 0.1 + 0.1 - 0.1 = 0.1 → ρ0 = e^0.1 = 1.10517 (inside [0.8, 1.2]);
    #          Σ Δ seq 1 = -0.1 - 0.2 = -0.3 → ρ1 = e^-0.3 = 0.74082 (below 0.8, A < 0: clipped)
    rho = np.exp([0.1, -0.3])
    a = np.array([0.8, -0.5])
    want = -np.minimum(rho * a, np.clip(rho, 0.8, 1.2) * a)
    t = lambda x, **k: torch.tensor(x, dtype=torch.float64, **k)  # noqa: E731
    lp = t(logp, requires_grad=True)
    loss, ratio, clipped, live = sequence_clipped_surrogate(
        lp, t(old), t(adv), t(mask), torch.tensor(seq), 2, eps_low=0.2, eps_high=0.2)
    np.testing.assert_allclose(ratio.numpy(), rho, rtol=1e-12)
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-12)
    assert clipped.tolist() == [False, True] and live.tolist() == [True, True]
    # gradient: seq 0 unclipped → −A·ρ on each of its tokens; seq 1 clipped → 0; masked → 0
    loss.sum().backward()
    np.testing.assert_allclose(lp.grad.numpy(), [-0.8 * rho[0]] * 3 + [0.0, 0.0, 0.0], rtol=1e-12)

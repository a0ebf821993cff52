"""Tests for rlhfkit.rl.correction.mismatch_weights on hand-made mismatched log-probs.

Δ_t = old − sampler. token: w = e^Δ; sequence: w = exp(Σ_seq Δ) broadcast.
tis: min(w, cap); mis: w if w <= cap else 0; none: 1. Zero outside the mask.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.rl.correction import MISMATCH_LEVELS, MISMATCH_MODES, mismatch_weights

F64 = torch.float64
# seq 0: tokens 0-2, seq 1: tokens 3-5 with token 5 masked (its Δ = 5 must not count)
OLD = [-1.0, -2.0, -0.5, -3.0, -1.5, -0.7]
SAMPLER = [-1.2, -1.9, -1.5, -3.0, -0.5, -5.7]
MASK = [1, 1, 1, 1, 1, 0]
SEQ = [0, 0, 0, 1, 1, 1]
# Δ = 0.2, -0.1, 1.0, 0.0, -1.0, (5.0 masked); Σ seq 0 = 1.1, Σ seq 1 = -1.0
D = np.array([0.2, -0.1, 1.0, 0.0, -1.0])


def call(**kw):
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    return mismatch_weights(t(OLD), t(SAMPLER), t(MASK), torch.tensor(SEQ), 2, **kw)


def check_common(m):
    assert m["mismatch/abs_logp_diff"] == pytest.approx((0.2 + 0.1 + 1.0 + 0.0 + 1.0) / 5)
    assert m["mismatch/seq_log_ratio_max"] == pytest.approx(1.1)


@pytest.mark.parametrize("mode,want,capped", [
    # e^1 = 2.718 > 2: capped to 2 (tis) or dropped (mis); 1 of 5 tokens
    ("tis", [math.exp(0.2), math.exp(-0.1), 2.0, 1.0, math.exp(-1.0), 0.0], 1 / 5),
    ("mis", [math.exp(0.2), math.exp(-0.1), 0.0, 1.0, math.exp(-1.0), 0.0], 1 / 5),
    ("none", [1, 1, 1, 1, 1, 0], 0.0),
])
def test_token_level(mode, want, capped):
    w, m = call(mode=mode, level="token", cap=2.0)
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-12)
    assert m["mismatch/capped_frac"] == pytest.approx(capped)
    assert m["mismatch/weight_mean"] == pytest.approx(sum(want) / 5)
    check_common(m)


@pytest.mark.parametrize("mode,want,capped", [
    # seq 0: e^1.1 = 3.004 > 2 -> 2 (tis) / 0 (mis); seq 1: e^-1 kept; 1 of 2 sequences capped
    ("tis", [2.0, 2.0, 2.0, math.exp(-1.0), math.exp(-1.0), 0.0], 1 / 2),
    ("mis", [0.0, 0.0, 0.0, math.exp(-1.0), math.exp(-1.0), 0.0], 1 / 2),
    ("none", [1, 1, 1, 1, 1, 0], 0.0),
])
def test_sequence_level(mode, want, capped):
    w, m = call(mode=mode, level="sequence", cap=2.0)
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-12)
    assert m["mismatch/capped_frac"] == pytest.approx(capped)
    assert m["mismatch/weight_mean"] == pytest.approx(sum(want) / 5)
    check_common(m)


def test_larger_cap_keeps_every_weight_and_matches_numpy():
    w, m = call(mode="mis", level="token", cap=3.0)
    np.testing.assert_allclose(w.numpy()[:5], np.exp(D), rtol=1e-12)
    assert m["mismatch/capped_frac"] == 0.0
    w, m = call(mode="tis", level="sequence", cap=3.5)  # e^1.1 = 3.004 < 3.5
    np.testing.assert_allclose(w.numpy(), [math.exp(1.1)] * 3 + [math.exp(-1.0)] * 2 + [0.0], rtol=1e-12)


def test_weights_are_detached_and_finite_for_huge_mismatch():
    old = torch.tensor([0.0, -1.0, -2.0], dtype=F64, requires_grad=True)
    sampler = torch.tensor([-800.0, -1.0, -2.0], dtype=F64)  # Δ = 800: e^800 overflows
    mask, seq = torch.tensor([1.0, 1.0, 0.0], dtype=F64), torch.tensor([0, 1, 1])
    for mode, first in (("tis", 2.0), ("mis", 0.0)):
        for level in MISMATCH_LEVELS:
            w, m = mismatch_weights(old, sampler, mask, seq, 2, mode=mode, level=level, cap=2.0)
            assert not w.requires_grad and torch.isfinite(w).all()
            assert w.tolist() == [first, 1.0, 0.0]
            assert all(math.isfinite(v) for v in m.values())


def test_empty_mask_gives_zero_weights_and_metrics():
    t = torch.zeros(3, dtype=F64)
    w, m = mismatch_weights(t, t - 1, torch.zeros(3, dtype=F64), torch.tensor([0, 0, 1]), 2)
    assert w.tolist() == [0.0, 0.0, 0.0] and all(v == 0.0 for v in m.values())
    assert set(m) == {"mismatch/abs_logp_diff", "mismatch/capped_frac", "mismatch/weight_mean",
                      "mismatch/seq_log_ratio_max"}


def test_validation():
    assert MISMATCH_MODES == ("none", "tis", "mis") and MISMATCH_LEVELS == ("token", "sequence")
    with pytest.raises(ConfigError, match="did you mean 'tis'"):
        call(mode="tiss")
    with pytest.raises(ConfigError, match="token, sequence"):
        call(level="seq")
    with pytest.raises(ConfigError, match=">= 1"):
        call(cap=0.5)
    with pytest.raises(ConfigError, match="cap"):
        call(cap=float("inf"))
    call(cap=1.0)  # the bound itself is allowed

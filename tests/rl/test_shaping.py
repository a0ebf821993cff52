"""Tests for rlhfkit.rl.shaping against hand-computed values and numpy.

    overlong:  L = max_len − cache_len; 0 (len ≤ L), −p·(len − L)/cache_len (L < len ≤ max_len),
               −p beyond max_len
    spread:    a group is kept when max ≠ min
    scaling:   A = r − mean_G; / (std_G(ddof=1) + 1e-4) | / (std(A over the batch, ddof=1) + 1e-4) | as is
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.rl.advantages import ADVANTAGES, AdvantageInputs, group_normalize
from rlhfkit.rl.shaping import groups_with_spread, normalize_group_scores, overlong_penalty


# --------------------------------------------------------------------------- overlong penalty

def test_overlong_penalty_hand_values():
    # max_len 20, cache 4 -> L = 16: 10 and 16 free; 17 -> -1/4, 18 -> -2/4, 20 -> -1, beyond -> -1
    lengths = torch.tensor([10, 16, 17, 18, 20, 21, 30])
    out = overlong_penalty(lengths, max_len=20, cache_len=4)
    np.testing.assert_allclose(out.numpy(), [0, 0, -0.25, -0.5, -1.0, -1.0, -1.0], rtol=1e-6)
    assert out.dtype == torch.get_default_dtype()
    out = overlong_penalty(lengths.to(torch.float64), max_len=20, cache_len=4, penalty=0.5)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), [0, 0, -0.125, -0.25, -0.5, -0.5, -0.5], rtol=1e-12)


@pytest.mark.parametrize("max_len,cache_len,penalty", [(20, 0, 1.0), (20, 20, 1.0), (20, 25, 1.0),
                                                       (20, 4, -1.0)])
def test_overlong_penalty_validation(max_len, cache_len, penalty):
    with pytest.raises(ConfigError, match="cache_len|penalty"):
        overlong_penalty(torch.tensor([5]), max_len, cache_len, penalty)


# --------------------------------------------------------------------------- dynamic sampling

def test_groups_with_spread():
    scores = torch.tensor([1.0, 1, 1, 0, 1, 0, 2, 2, 2, 0.5, 0.5, 0.6])
    assert groups_with_spread(scores, 3).tolist() == [False, True, False, True]
    assert groups_with_spread(scores, 1).tolist() == [False] * 12  # one sample: never a spread
    with pytest.raises(ConfigError, match="divides the 12 scores"):
        groups_with_spread(scores, 5)
    with pytest.raises(ConfigError, match="group_size"):
        groups_with_spread(scores, 0)


# --------------------------------------------------------------------------- score scaling

SCORES = [1.0, 0.0, 0.5, 0.25, 2.0, 2.0, 2.0, 2.0, -1.0, 3.0, 0.0, 1.0]
G = 4


def np_scale(scale):
    r = np.array(SCORES, dtype=np.float64).reshape(-1, G)
    c = r - r.mean(axis=1, keepdims=True)
    if scale == "group":
        c = c / (r.std(axis=1, ddof=1, keepdims=True) + 1e-4)
    elif scale == "batch":
        c = c / (c.std(ddof=1) + 1e-4)
    return c.reshape(-1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_normalize_matches_numpy(scale):
    out = normalize_group_scores(torch.tensor(SCORES, dtype=torch.float64), G, scale)
    np.testing.assert_allclose(out.numpy(), np_scale(scale), rtol=1e-12, atol=1e-15)


def test_group_scale_hand_value():
    # group 0: r = 1, 0, .5, .25; mean .4375; unbiased std = sqrt(Σ(r-m)²/3) = sqrt(0.546875/3)
    out = normalize_group_scores(torch.tensor(SCORES, dtype=torch.float64), G, "group")
    std = (0.546875 / 3) ** 0.5
    assert out[0].item() == pytest.approx((1 - 0.4375) / (std + 1e-4), rel=1e-12)
    assert out[4:8].tolist() == [0.0] * 4  # a group of equal scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_and_batch_equal_the_estimators_exactly(dtype):
    scores = torch.tensor(SCORES, dtype=dtype)
    mask = torch.ones(len(SCORES), 3, dtype=dtype)
    grpo, _ = ADVANTAGES["grpo"].fn(AdvantageInputs(mask=mask, scores=scores, group_size=G))
    base, _ = ADVANTAGES["reinforce_baseline"].fn(AdvantageInputs(mask=mask, scores=scores, group_size=G))
    assert torch.equal(normalize_group_scores(scores, G, "group"), grpo[:, 0])
    assert torch.equal(normalize_group_scores(scores, G, "group"), group_normalize(scores, G))
    assert torch.equal(normalize_group_scores(scores, G, "batch"), base[:, 0])
    drgrpo, _ = ADVANTAGES["grpo"].fn(AdvantageInputs(mask=mask, scores=scores, group_size=G, scale=False))
    assert torch.equal(normalize_group_scores(scores, G, "none"), drgrpo[:, 0])


def test_normalize_validation():
    with pytest.raises(ConfigError, match="did you mean 'group'"):
        normalize_group_scores(torch.tensor(SCORES), G, "groups")
    with pytest.raises(ConfigError, match="divides"):
        normalize_group_scores(torch.tensor(SCORES), 5)

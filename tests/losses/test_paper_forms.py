"""Losses in the form their papers give, checked against values worked out by hand.

Each test here pins one formula that an earlier version of the package got wrong or could not
reach from the config (see docs/algorithms.md for every formula).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.config import DataConfig, ModelConfig, TrainConfig, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.losses.preference import PairLogps, get_preference_loss
from rlhfkit.losses.reward import bradley_terry_loss, listwise_bt_loss
from rlhfkit.train import dpo


def _softplus(x: float) -> float:  # -log σ(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def _pairs(hw, hl, lw, ll):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # reference log-probs 0, so h = policy log-prob
    return PairLogps(t(hw), t(hl), t([0.0] * len(hw)), t([0.0] * len(hw)), t(lw), t(ll))


def test_rdpo_length_term_sign_matches_paper():
    # Park et al. 2024: r(y) = β·h(y) + α|y|, loss -log σ(βΔ + α|y_w| - α|y_l|).
    # Pair 1: β = 0.5, Δ = 1.5, |y_w| = 10, |y_l| = 4, α = 0.1 → logit 0.75 + 0.6 = 1.35.
    # Pair 2: the same Δ, but the winner is shorter (4 vs 10) → logit 0.75 - 0.6 = 0.15.
    loss, _ = get_preference_loss("rdpo")(_pairs([1.0, 1.0], [-0.5, -0.5], [10.0, 4.0], [4.0, 10.0]),
                                          beta=0.5, alpha=0.1)
    assert loss[0].item() == pytest.approx(_softplus(-1.35), rel=1e-12)
    assert loss[1].item() == pytest.approx(_softplus(-0.15), rel=1e-12)
    # the longer winner gets the smaller loss (and gradient): the length bias is removed, not fed
    assert loss[0] < loss[1]


def test_robust_is_rdpo_of_chowdhury_and_cdpo_is_label_smoothing():
    # Δ = 2, β = 0.5 → z = 1, ε = 0.2
    z, eps = 1.0, 0.2
    logsig = lambda x: -_softplus(-x)  # noqa: E731
    pair = _pairs([1.0], [-1.0], [3.0], [3.0])
    robust, _ = get_preference_loss("robust")(pair, beta=0.5, label_smoothing=eps)
    cdpo, _ = get_preference_loss("cdpo")(pair, beta=0.5, label_smoothing=eps)
    want_robust = (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps)
    want_cdpo = -(1 - eps) * logsig(z) - eps * logsig(-z)
    assert robust.item() == pytest.approx(want_robust, rel=1e-12)
    assert cdpo.item() == pytest.approx(want_cdpo, rel=1e-12)
    # by hand: log σ(1) = -0.31326, log σ(-1) = -1.31326
    # robust = (0.8·0.31326 - 0.2·1.31326) / 0.6 = -0.02007 (rDPO is unbiased, so it can go below 0)
    # cdpo   =  0.8·0.31326 + 0.2·1.31326       =  0.51326
    assert want_robust == pytest.approx(-0.02007, abs=1e-4) and want_cdpo == pytest.approx(0.51326, abs=1e-4)


def test_center_rewards_penalises_pair_sum_not_squares():
    # Eisenstein et al. 2023: c·(r_w + r_l)²; with r_w = 1, r_l = -1 the pair is centred (0 penalty),
    # while c·(r_w² + r_l²) would penalise it by 2c and pull the margin in.
    rw = torch.tensor([1.0, 0.5], dtype=torch.float64)
    rl = torch.tensor([-1.0, 0.3], dtype=torch.float64)
    loss, _ = bradley_terry_loss(rw, rl, center_coef=0.1)
    assert loss[0].item() == pytest.approx(_softplus(-2.0), rel=1e-12)
    assert loss[1].item() == pytest.approx(_softplus(-0.2) + 0.1 * 0.8 ** 2, rel=1e-12)
    # K-ranked lists: each ordered pair carries its own centring term
    rewards = torch.tensor([[1.0, 0.0, -2.0]], dtype=torch.float64)
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    per_pair, _ = listwise_bt_loss(rewards, scores, center_coef=0.5)
    want = sorted([_softplus(-1.0) + 0.5 * 1.0, _softplus(-3.0) + 0.5 * 1.0, _softplus(-2.0) + 0.5 * 4.0])
    assert sorted(per_pair.tolist()) == pytest.approx(want, rel=1e-12)


def _cfg(**kw):
    return dpo.DPOConfig(model=ModelConfig(name="x"), data=DataConfig(path="x.jsonl"),
                         train=TrainConfig(output_dir="runs/x"), **kw)


def test_tdpo2_and_lipo_lambda_reachable_from_config():
    c = build_config(dpo.DPOConfig, None, [("loss_type", "tdpo"), ("tdpo_variant", "2"), ("tdpo_alpha", "0.3")])
    assert dpo.loss_params(c) == {"tdpo_variant": 2, "tdpo_alpha": 0.3}
    c = build_config(dpo.DPOConfig, None, [("loss_type", "plackett_luce"), ("lipo_lambda", "true")])
    assert dpo.loss_params(c) == {"lipo_lambda": True}
    c = _cfg(loss_type="rdpo", alpha=0.2)
    assert dpo.loss_params(c) == {"alpha": 0.2}


@pytest.mark.parametrize("loss_type,key,value", [("sigmoid", "alpha", "0.3"), ("simpo", "tdpo_variant", "2"),
                                                  ("ipo", "lipo_lambda", "true"), ("tdpo", "gamma", "1.0")])
def test_inapplicable_loss_param_is_error(loss_type, key, value):
    with pytest.raises(ConfigError, match=f"does not use {key}"):
        build_config(dpo.DPOConfig, None, [("loss_type", loss_type), (key, value)])

"""Range checks of the DPO / KTO / RM recipe keys, through the parser and the Python API."""

from __future__ import annotations

import pytest

from rlhfkit.config import DataConfig, ModelConfig, TrainConfig, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.train.dpo import DPOConfig, build as dpo_build
from rlhfkit.train.kto import KTOConfig, build as kto_build
from rlhfkit.train.reward import RMConfig


@pytest.mark.parametrize("recipe,key,value,text", [
    (DPOConfig, "beta", "inf", "beta must be a finite number > 0 (got inf)"),
    (DPOConfig, "beta", "nan", "beta must be a finite number > 0"),
    (DPOConfig, "alpha", "-0.1", "alpha must be a finite number >= 0 (got -0.1)"),
    (DPOConfig, "gamma", "-1", "gamma must be a finite number >= 0"),
    (DPOConfig, "gamma", "inf", "gamma must be a finite number >= 0"),
    (DPOConfig, "orpo_lambda", "-0.5", "orpo_lambda must be a finite number >= 0"),
    (DPOConfig, "f_alpha", "0", "f_alpha must be a finite number > 0 and < 1"),
    (DPOConfig, "tdpo_alpha", "-1", "tdpo_alpha must be a finite number >= 0"),
    (KTOConfig, "beta", "inf", "beta must be a finite number > 0"),
    (KTOConfig, "desirable_weight", "nan", "desirable_weight must be a finite number >= 0"),
    (RMConfig, "margin", "inf", "margin must be a finite number (got inf)"),
    (RMConfig, "center_rewards_coef", "nan", "center_rewards_coef must be a finite number >= 0"),
])
def test_recipe_key_out_of_range(recipe, key, value, text):
    with pytest.raises(ConfigError) as e:
        build_config(recipe, None, [(key, value)])
    assert text in str(e.value)


def test_negative_margin_is_allowed():
    assert build_config(RMConfig, None, [("margin", "-0.5")]).margin == -0.5


def test_unknown_loss_type_lists_names():
    with pytest.raises(ConfigError) as e:
        build_config(DPOConfig, None, [("loss_type", "dpo")])
    for name in ("sigmoid", "cdpo", "robust", "rdpo", "tdpo", "plackett_luce"):
        assert name in str(e.value)


def _sections(tmp_path):
    return dict(model=ModelConfig(name="no-such-model"), data=DataConfig(path=str(tmp_path / "x.jsonl")),
                train=TrainConfig(output_dir=str(tmp_path / "run")))


def test_python_api_build_validates_before_loading(tmp_path):
    # IPO with beta = 0 divides by 2β: a ConfigError before any model is loaded, not ZeroDivisionError
    with pytest.raises(ConfigError, match=r"beta must be a finite number > 0 \(got 0"):
        dpo_build(DPOConfig(**_sections(tmp_path), loss_type="ipo", beta=0.0), log=lambda *a: None)
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo_build(DPOConfig(**_sections(tmp_path), label_smoothing=0.5), log=lambda *a: None)
    with pytest.raises(ConfigError, match="undesirable_weight"):
        kto_build(KTOConfig(**_sections(tmp_path), undesirable_weight=-1.0), log=lambda *a: None)

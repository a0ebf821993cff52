"""Every config value is checked when parsed: a bad value is a ConfigError naming the key and
its allowed range, before any model or data is loaded."""

from __future__ import annotations

import pytest

from rlhfkit.config import build_config
from rlhfkit.errors import ConfigError
from rlhfkit.rl.config import GRPOConfig, PPOConfig
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.kto import KTOConfig
from rlhfkit.train.reward import RMConfig
from rlhfkit.train.sft import SFTConfig

BAD = [
    # (recipe, key, value, text the message must contain)
    (SFTConfig, "train.lr", "-1e-5", ">= 0"),
    (SFTConfig, "train.lr", "inf", "finite"),
    (SFTConfig, "train.lr", "nan", "finite"),
    (SFTConfig, "train.weight_decay", "-0.1", ">= 0"),
    (SFTConfig, "train.weight_decay", "inf", "finite"),
    (SFTConfig, "train.warmup_ratio", "1.5", "<= 1"),
    (SFTConfig, "train.batch_size", "0", ">= 1"),
    (SFTConfig, "train.lr_scheduler", "cosin", "cosine"),
    (SFTConfig, "model.lora.r", "-4", ">= 0"),
    (SFTConfig, "model.lora.dropout", "1.0", "< 1"),
    (SFTConfig, "model.dtype", "fp8", "float32"),
    (SFTConfig, "data.max_length", "1", ">= 2"),
    (SFTConfig, "data.max_prompt_length", "2048", "< 1024"),
    (SFTConfig, "data.prompt_truncation", "middle", "drop, left"),
    (SFTConfig, "data.completion_truncation", "left", "right, drop"),
    (SFTConfig, "data.chat_template", "sometimes", "auto"),
    (DPOConfig, "beta", "0", "> 0"),
    (DPOConfig, "beta", "-0.1", "> 0"),
    (DPOConfig, "label_smoothing", "0.5", "< 0.5"),
    (DPOConfig, "label_smoothing", "-0.1", ">= 0"),
    (DPOConfig, "f_alpha", "1.0", "< 1"),
    (DPOConfig, "tdpo_variant", "3", "1 or 2"),
    (KTOConfig, "beta", "0", "> 0"),
    (KTOConfig, "desirable_weight", "-1", ">= 0"),
    (KTOConfig, "undesirable_weight", "-0.5", ">= 0"),
    (RMConfig, "center_rewards_coef", "-0.01", ">= 0"),
    (GRPOConfig, "kl_coef", "-0.1", ">= 0"),
    (GRPOConfig, "clip_eps_low", "-0.2", ">= 0"),
    (GRPOConfig, "clip_eps_high", "-0.2", ">= 0"),
    (GRPOConfig, "rollout.top_p", "0", "> 0"),
    (GRPOConfig, "rollout.top_p", "1.5", "<= 1"),
    (GRPOConfig, "rollout.temperature", "-0.5", ">= 0"),
    (GRPOConfig, "rollout.temperature", "0", "greedy"),
    (GRPOConfig, "rollout.top_k", "-1", ">= 0"),
    (GRPOConfig, "gamma", "1.5", "<= 1"),
    (PPOConfig, "critic.vf_coef", "-1", ">= 0"),
    (PPOConfig, "critic.value_clip", "-0.2", ">= 0"),
]


@pytest.mark.parametrize("recipe,key,value,text", BAD, ids=[f"{r.__name__}-{k}={v}" for r, k, v, _ in BAD])
def test_bad_value_rejected_at_parse_time(recipe, key, value, text):
    with pytest.raises(ConfigError) as ei:
        build_config(recipe, None, [(key, value)])
    msg = str(ei.value)
    assert key.split(".")[-1] in msg and text in msg, msg


def test_ipo_beta_zero_is_config_error_not_zero_division():
    with pytest.raises(ConfigError, match="beta"):
        build_config(DPOConfig, None, [("loss_type", "ipo"), ("beta", "0")])


def test_defaults_of_every_recipe_are_valid():
    for recipe in (SFTConfig, DPOConfig, KTOConfig, RMConfig, GRPOConfig, PPOConfig):
        build_config(recipe)


def test_yaml_duplicate_key_is_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  lr: 1e-5\n  batch_size: 2\n  lr: 1e-3\n")
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, str(p))
    assert "duplicate key 'lr'" in str(ei.value) and "line 2" in str(ei.value)
    p.write_text("beta: 0.1\nloss_type: ipo\nbeta: 0.5\n")
    with pytest.raises(ConfigError, match="duplicate key 'beta'"):
        build_config(DPOConfig, str(p))

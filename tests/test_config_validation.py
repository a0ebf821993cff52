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
    (SFTConfig, "train.warmup_ratio", "-0.1", ">= 0"),
    (SFTConfig, "train.max_grad_norm", "-1", ">= 0"),
    (SFTConfig, "train.grad_accum", "0", ">= 1"),
    (SFTConfig, "train.save_total_limit", "0", ">= 1"),
    (SFTConfig, "train.best_mode", "maximum", "max, min"),
    (SFTConfig, "model.lora.alpha", "-16", "> 0"),
    (SFTConfig, "model.attn_implementation", "flash", "sdpa"),
    (SFTConfig, "model.freeze_layers", "-1", ">= 0"),
    (SFTConfig, "data.max_prompt_length", "-1", ">= 0"),
    (SFTConfig, "train.lr_scheduler", "cosin", "cosine"),
    (SFTConfig, "model.lora.r", "-4", ">= 0"),
    (SFTConfig, "model.lora.dropout", "1.0", "< 1"),
    (SFTConfig, "model.dtype", "fp8", "float32"),
    (SFTConfig, "data.max_length", "1", ">= 2"),
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


def test_validate_all_recurses_into_nested_dataclasses():
    import dataclasses

    from rlhfkit.config import check_range, validate_all

    calls = []

    @dataclasses.dataclass
    class Inner:
        x: float = 1.0

        def validate(self) -> None:  # the plain contract: no arguments
            calls.append("inner")
            check_range("outer.inner.x", self.x, lo=0, lo_open=True)

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        y: int = 0

        def validate(self) -> None:
            calls.append("outer")

    validate_all(Outer())
    assert calls == ["inner", "outer"]
    with pytest.raises(ConfigError, match=r"outer.inner.x must be a finite number > 0 \(got -1.0\)"):
        validate_all(Outer(inner=Inner(x=-1.0)))


def test_check_range_message():
    from rlhfkit.config import check_range

    with pytest.raises(ConfigError, match=r"^train.lr must be a finite number > 0 \(got inf\)$"):
        check_range("train.lr", float("inf"), lo=0, lo_open=True)
    check_range("x", float("inf"), lo=0, finite=False)
    with pytest.raises(ConfigError, match=r">= 0 and < 1"):
        check_range("x", 1.0, lo=0, hi=1, hi_open=True)


def test_max_prompt_length_above_max_length_is_capped(tok):
    """Lowering data.max_length alone (RL recipes default max_prompt_length to 512) stays valid:
    the prompt limit is capped at max_length - 1, leaving room for one completion token."""
    import collections

    from rlhfkit.config import DataConfig
    from rlhfkit.data.tokenize import Example, truncate
    from rlhfkit.rl.config import RLConfig

    cfg = build_config(RLConfig, None, [("data.max_length", "256")])
    assert cfg.data.max_prompt_length == 512
    ex = Example(0, list(range(300)), [[1, 2]])
    stats = collections.Counter()
    assert truncate(ex, DataConfig(max_length=256, max_prompt_length=512), stats) is None
    assert stats["dropped: prompt longer than max_prompt_length"] == 1

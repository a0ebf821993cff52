"""Every online-RL key is range-checked (ConfigError naming the key and its allowed range), from
Python (RLConfig.validate / rl.build) as from the command line, and a max_new_tokens whose KV
cache cannot fit is refused with the figure before anything is allocated."""

import math

import pytest
import torch

from rlhfkit.config import ModelConfig, TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.rl.config import CriticConfig, RLConfig, RolloutConfig, validate
from rlhfkit.rl.rollout import HFBackend, SamplingParams, check_kv_cache, kv_cache_bytes

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("key,value,message", [
    ("kl_coef", -0.1, r"kl_coef .*>= 0"), ("kl_coef", NAN, "kl_coef"), ("kl_coef", INF, "kl_coef"),
    ("clip_eps_low", -0.2, "clip_eps_low"), ("clip_eps_high", -0.2, "clip_eps_high"),
    ("clip_eps_high", INF, "clip_eps_high"), ("clip_eps_low", NAN, "clip_eps_low"),
    ("entropy_coef", -1.0, "entropy_coef"), ("entropy_coef", NAN, "entropy_coef"),
    ("gamma", 1.5, r"gamma .*<= 1"), ("gamma", -0.1, "gamma"), ("lam", 2.0, r"lam .*<= 1"), ("lam", NAN, "lam"),
    ("importance_level", "bogus", "importance_level"),
])
def test_rl_keys_out_of_range_are_config_errors(key, value, message):
    cfg = RLConfig()
    setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("vf_coef", -0.1, r"critic\.vf_coef"), ("vf_coef", NAN, r"critic\.vf_coef"),
    ("value_clip", -0.2, r"critic\.value_clip"), ("value_clip", INF, r"critic\.value_clip"),
])
def test_critic_keys_out_of_range_are_config_errors(key, value, message):
    cc = CriticConfig()
    setattr(cc, key, value)
    with pytest.raises(ConfigError, match=message):
        cc.validate()
    cfg = RLConfig(advantage="gae", critic=cc)
    with pytest.raises(ConfigError, match=message):  # the recipe's check runs the section's too
        validate(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("top_p", 0.0, r"rollout\.top_p .*> 0.*<= 1"), ("top_p", -0.5, r"rollout\.top_p"),
    ("top_p", 1.5, r"rollout\.top_p"), ("top_p", NAN, r"rollout\.top_p"),
    ("temperature", -0.7, r"rollout\.temperature"), ("temperature", NAN, r"rollout\.temperature"),
    ("top_k", -1, r"rollout\.top_k"), ("max_new_tokens", 0, r"rollout\.max_new_tokens"),
])
def test_rollout_keys_out_of_range_are_config_errors(key, value, message):
    rc = RolloutConfig()
    setattr(rc, key, value)
    with pytest.raises(ConfigError, match=message):
        rc.validate()
    with pytest.raises(ConfigError, match=message):
        validate(RLConfig(rollout=rc))


def test_temperature_zero_is_greedy_for_eval_but_refused_for_online_rl():
    RolloutConfig(temperature=0.0).validate()        # greedy decoding (rlhfkit eval's default)
    with pytest.raises(ConfigError, match=r"temperature must be > 0"):
        validate(RLConfig(rollout=RolloutConfig(temperature=0.0)))


def test_defaults_are_valid():
    validate(RLConfig())
    RolloutConfig().validate()
    CriticConfig().validate()


def test_kv_cache_bytes_by_hand():
    class C:  # a GQA model: 30 layers, 9 heads (3 kv heads) of 64
        num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size = 30, 9, 3, 576
    # 30 layers x 2 (k, v) x 3 kv heads x 64 x 1000 tokens x 8 rows x 2 bytes
    assert kv_cache_bytes(C, rows=8, tokens=1000, dtype_bytes=2) == 30 * 2 * 3 * 64 * 1000 * 8 * 2 == 184_320_000


def test_kv_cache_that_cannot_fit_is_refused_with_the_figure(tiny_dir, tok):
    from rlhfkit.models.loading import load_model

    model, tk = load_model(ModelConfig(name=tiny_dir))
    # tiny model: 2 layers, 2 kv heads, head_dim 64 / 4 = 16, fp32
    per_token_row = 2 * 2 * 2 * 16 * 4
    assert check_kv_cache(model, 4, 100, available=10**9) == per_token_row * 4 * 100
    with pytest.raises(ConfigError, match=r"rollout\.max_new_tokens.*2\.0 GB.*1\.0 GB"):
        check_kv_cache(model, 4, 2 * 10**9 // (per_token_row * 4), available=10**9)
    # the decode loop refuses before allocating: 10^9 new tokens x 2 rows would be 1024 GB
    be = HFBackend(model, tk, lean_decode=False)
    with pytest.raises(ConfigError, match=r"would take 1024\.0 GB"):
        be.generate([[1, 2, 3]], SamplingParams(max_new_tokens=10**9 - 3, n=2))


def test_rl_build_refuses_huge_max_new_tokens(tiny_dir, tmp_path):
    from rlhfkit.train import rl

    cfg = rl.RLConfig(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=4, task_eval_size=0,
                      train=TrainConfig(output_dir=str(tmp_path), max_steps=1, batch_size=2,
                                        progress=False, tensorboard=False))
    cfg.rollout.num_generations = 2
    cfg.rollout.max_new_tokens = 10**12
    with pytest.raises(ConfigError, match=r"KV cache .* GB"):
        rl.build(cfg, log=lambda *a: None)


def test_top_p_zero_no_longer_samples_a_nan_logprob():
    with pytest.raises(ConfigError, match="top_p"):
        validate(RLConfig(rollout=RolloutConfig(top_p=0.0)))

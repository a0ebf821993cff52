"""The ``rollout.ray_*`` settings are validated when parsed (key and range in the message), and
``rollout.backend: ray`` without the ray package says how to install it; neither needs Ray."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from rlhfkit.backends.ray import RayOptions, import_ray, shards
from rlhfkit.config import build_config
from rlhfkit.errors import ConfigError
from rlhfkit.rl.config import RolloutConfig, ray_options
from rlhfkit.train import rl


@pytest.mark.parametrize("key,value,match", [
    ("ray_workers", 0, r"rollout.ray_workers must be a finite number >= 1 and <= 1024 \(got 0\)"),
    ("ray_workers", 2000, r"rollout.ray_workers must be a finite number >= 1 and <= 1024 \(got 2000\)"),
    ("ray_workers", 1.5, r"rollout.ray_workers must be an integer >= 1 \(got 1.5\)"),
    ("ray_worker_cpus", 0, r"rollout.ray_worker_cpus must be a finite number >= 1 and <= 1024 \(got 0\)"),
    ("ray_worker_cpus", True, r"rollout.ray_worker_cpus must be an integer >= 1 \(got True\)"),
    ("ray_timeout", 0, r"rollout.ray_timeout must be a finite number > 0 \(got 0\)"),
    ("ray_timeout", float("inf"), r"rollout.ray_timeout must be a finite number > 0 \(got inf\)"),
    ("ray_engine", "vllm", r"rollout.ray_engine must be one of cpu, hf \(got 'vllm'\)"),
    ("ray_address", 5, r"rollout.ray_address must be a string: empty \(a local Ray\), 'auto' or HOST:PORT"),
    ("backend", "rya", r"rollout.backend must be one of auto, cpu, hf, vllm, ray \(got 'rya'\)"),
])
def test_bad_ray_settings_name_the_key_and_range(key, value, match):
    cfg = RolloutConfig(**{key: value})
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_settings_parse_from_the_command_line_and_map_to_the_options():
    cfg = build_config(rl.RLConfig, None, [("rollout.ray_workers", "3"), ("rollout.ray_address", "auto"),
                                           ("rollout.ray_engine", "hf"), ("rollout.ray_timeout", "12.5"),
                                           ("rollout.ray_worker_cpus", "2")])
    assert ray_options(cfg.rollout) == RayOptions(workers=3, address="auto", engine="hf", worker_cpus=2, timeout=12.5)
    RolloutConfig().validate()  # the defaults are valid


def test_backend_ray_without_ray_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"rollout.backend=ray needs the ray package, which is not installed: "
                                          r"pip install rlhfkit\[ray\]"):
        RolloutConfig(backend="ray").validate()
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install rlhfkit\[ray\]"):
        import_ray()


def test_async_with_ray_is_refused():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray package check comes first")
    with pytest.raises(ConfigError, match="rollout.async is not available with rollout.backend=ray"):
        RolloutConfig(backend="ray", async_=True).validate()


def test_shards_cover_every_prompt_once():
    for count in range(0, 12):
        for parts in range(1, 5):
            got = shards(count, parts)
            assert [i for a, b in got for i in range(a, b)] == list(range(count))
            sizes = [b - a for a, b in got]
            assert not sizes or max(sizes) - min(sizes) <= 1

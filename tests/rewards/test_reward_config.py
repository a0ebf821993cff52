"""Reward configs from dataclasses, dicts and command-line shorthands; validation errors."""

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.rewards import RewardConfig, build_rewards, parse_reward_list, reward_config_from
from rlhfkit.rewards.base import default_name, model_paths


@pytest.fixture
def rm_dirs(tmp_path):
    for d in ("rm1", "rm2"):
        (tmp_path / d).mkdir()
    return str(tmp_path / "rm1"), str(tmp_path / "rm2")


@pytest.mark.parametrize("name", ["arithmetic", "gsm8k", "format"])
def test_verifier_shorthands(name):
    cfg = reward_config_from(name)
    assert (cfg.type, cfg.verifier, cfg.weight) == ("verifier", name, 1.0)
    assert default_name(cfg) == name


def test_model_shorthands(rm_dirs):
    a, b = rm_dirs
    one = reward_config_from(f"model:{a}")
    assert (one.type, model_paths(one), default_name(one)) == ("model", [a], "rm")
    two = reward_config_from(f"model:{a};{b}*0.5")
    assert two.path == f"{a},{b}" and model_paths(two) == [a, b] and two.weight == 0.5
    assert reward_config_from("model:org/reward-model").path == "org/reward-model"  # hub name


def test_function_shorthand_and_weight():
    cfg = reward_config_from("fn:my_pkg.rewards:length_penalty*-0.25")
    assert (cfg.type, cfg.fn, cfg.weight) == ("function", "my_pkg.rewards:length_penalty", -0.25)
    assert default_name(cfg) == "length_penalty"
    assert reward_config_from(" gsm8k * 2 ").weight == 2.0


def test_dict_and_dataclass_inputs(rm_dirs):
    cfg = reward_config_from({"type": "model", "path": list(rm_dirs), "ensemble_k": 1,
                              "name": "rms", "normalize": False})
    assert cfg.path == ",".join(rm_dirs) and cfg.ensemble_k == 1.0 and not cfg.normalize
    original = RewardConfig(verifier="gsm8k", weight=3.0)
    copy = reward_config_from(original)
    assert copy == original and copy is not original


def test_parse_reward_list():
    cfgs = parse_reward_list("gsm8k, format*0.2")
    assert [(c.verifier, c.weight) for c in cfgs] == [("gsm8k", 1.0), ("format", 0.2)]


@pytest.mark.parametrize("value,message", [
    ("gsm9k", r"unknown reward 'gsm9k'; use 'arithmetic', 'gsm8k', 'format', 'model:PATH'"),
    ("model:", "unknown reward 'model:'"),
    ("fn:", "unknown reward 'fn:'"),
    ("gsm8k*lots", "weight after '\\*' must be a number, got 'lots'"),
    ("gsm8k*inf", "weight must be a finite number"),
    ("fn:just_a_module", "must be an importable module:function"),
    ("fn:os; os.system:x", "must be an importable module:function"),
    ("model:./no/such/rm", "reward model directory not found: ./no/such/rm"),
    ({"type": "verifier", "weigth": 2}, r"unknown config key 'reward.weigth' \(did you mean "
                                        r"'weight'\?\); valid keys here: type, name, verifier"),
    ({"weight": "heavy"}, "config key 'reward.weight' expects float"),
    ({"type": "critic"}, "unknown reward type 'critic'; use one of verifier, function, model"),
    ({"verifier": "math"}, "unknown verifier 'math'; use one of arithmetic, gsm8k, format"),
    ({"verifier": "format", "pattern": "(unclosed"}, "not a valid regex"),
    ({"type": "model"}, "a model reward needs the reward model directory"),
    ({"type": "model", "path": "org/rm", "ensemble_k": -1}, "ensemble_k must be a finite number >= 0"),
    ({"type": "function", "fn": "a:b", "timeout": 0}, "timeout must be a positive number"),
    (3, "expected a reward config, a mapping or a string"),
])
def test_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        reward_config_from(value)


def test_build_rewards_needs_at_least_one():
    with pytest.raises(ConfigError, match="no rewards configured"):
        build_rewards([])


def test_build_rewards_validates_everything_before_loading_models(rm_dirs, monkeypatch):
    from rlhfkit.rewards.model import RewardModel

    def never(*a, **k):
        raise AssertionError("a reward model was loaded before the configs were checked")

    monkeypatch.setattr(RewardModel, "load", never)
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.verifier: unknown verifier"):
        build_rewards([f"model:{rm_dirs[0]}", {"verifier": "nope"}])
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.fn: .*module 'no_such_reward_module' not found"):
        build_rewards([f"model:{rm_dirs[0]}", "fn:no_such_reward_module:f"])


def test_build_rewards_names_and_weights():
    combined = build_rewards(["gsm8k", "gsm8k*0.5", {"verifier": "format", "name": "fmt"}])
    assert combined.names == ["gsm8k", "gsm8k_2", "fmt"]
    assert combined.weights == [1.0, 0.5, 1.0]

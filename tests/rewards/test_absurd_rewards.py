"""A reward source that returns an infinite, NaN (without a row error) or absurdly large value
(|r| > RewardConfig.max_abs, 1e6 by default) is reported as such: source, row(s), value."""

import pytest

from rlhfkit.config import ModelConfig, TrainConfig
from rlhfkit.rewards import CombinedReward, RewardResult
from rlhfkit.rewards.base import RewardError, reward_config_from
from rlhfkit.errors import ConfigError


class Fixed:
    def __init__(self, name, values, errors=()):
        self.name, self.values, self.errors = name, values, list(errors)

    def score(self, prompts, completions, extras):
        return RewardResult(values=list(self.values), errors=self.errors)


@pytest.mark.parametrize("bad", [1e308, float("inf"), -float("inf"), -2e6, float("nan")])
def test_absurd_reward_names_source_row_and_value(bad):
    comb = CombinedReward([Fixed("ok", [1.0, 2.0, 3.0]), Fixed("judge", [0.5, bad, 0.1])])
    with pytest.raises(RewardError) as e:
        comb.score(["p"] * 3, ["a", "b", "c"])
    msg = str(e.value)
    assert "'judge'" in msg and "row 1" in msg and (repr(bad) in msg or str(bad) in msg)
    assert "learning rate" not in msg and "checkpoint" not in msg


def test_large_but_plausible_rewards_and_reported_failures_pass():
    comb = CombinedReward([Fixed("big", [999_999.0, -1e6]),
                           Fixed("failed", [float("nan"), 1.0], errors=[(0, "boom")])])
    res = comb.score(["p"] * 2, ["a", "b"])
    assert res.total == [999_999.0, -1e6 + 1.0]


def test_max_abs_is_configurable_and_validated():
    comb = CombinedReward([Fixed("big", [5e7])], bounds=[1e9])
    assert comb.score(["p"], ["a"]).total == [5e7]
    assert reward_config_from({"type": "verifier", "max_abs": 10.0}).max_abs == 10.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="max_abs"):
            reward_config_from({"type": "verifier", "max_abs": bad})


def test_rl_run_with_absurd_function_reward_says_what_it_is(tiny_dir, tmp_path, monkeypatch):
    d = tmp_path / "mods"
    d.mkdir()
    (d / "absurd_reward_mod.py").write_text(
        "def huge(prompts, completions, **kw):\n    return [1e308] + [0.0] * (len(completions) - 1)\n")
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PYTHONPATH", str(d))
    from rlhfkit.train import rl

    cfg = rl.RLConfig(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=8, task_eval_size=0,
                      rewards=["fn:absurd_reward_mod:huge"],
                      train=TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=2, lr=1e-4,
                                        progress=False, tensorboard=False))
    cfg.rollout.num_generations = 2
    cfg.rollout.max_new_tokens = 4
    with pytest.raises(RewardError) as e:
        rl.run(cfg, log=lambda *a: None)
    msg = str(e.value)
    assert "'huge'" in msg and "row 0" in msg and "1e+308" in msg
    assert "learning rate" not in msg

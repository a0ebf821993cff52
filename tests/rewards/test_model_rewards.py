"""Reward-model sources: an ensemble of two tiny random reward models."""

import numpy as np
import pytest

from rlhfkit.rewards import build_rewards
from rlhfkit.rewards.model import RewardModel
from rlhfkit.rewards.reward_model import ensemble_scores


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory, tok):
    from rlhfkit.models.loading import tiny_model

    dirs = []
    for seed, (mean, std) in enumerate([(0.5, 2.0), (-1.0, 0.5)]):
        d = tmp_path_factory.mktemp(f"rm{seed}")
        m = tiny_model(tok, layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64,
                       scalar_head=True, seed=seed)
        m.config.rlhfkit_reward_mean, m.config.rlhfkit_reward_std = mean, std
        m.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(str(d))
    return dirs


def test_ensemble_is_mean_minus_k_std(rm_dirs):
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], "What is 4 + 4?"]
    completions = ["2 + 3 = 5. The answer is 5.", "The answer is 9."]
    per_model = np.array([RewardModel.load(d).score(prompts, completions, normalize=True)
                          for d in rm_dirs])
    expected = per_model.mean(axis=0) - 0.5 * per_model.std(axis=0)
    with build_rewards([{"type": "model", "path": ",".join(rm_dirs), "ensemble_k": 0.5}]) as combined:
        scores = combined.score(prompts, completions, [{}, {}])
    assert scores.per_source["rm"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores.total == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores.errors == []
    assert not np.allclose(per_model[0], per_model[1])  # the models really differ


def test_single_model_and_raw_scores(rm_dirs):
    prompts, completions = ["What is 1 + 1?"], ["2"]
    raw = RewardModel.load(rm_dirs[1]).score(prompts, completions)
    with build_rewards([f"model:{rm_dirs[1]}*2"]) as combined:
        combined.sources[0].normalize = False
        scores = combined.score(prompts, completions)
    assert scores.per_source["rm"] == pytest.approx(raw, abs=1e-5)
    assert scores.total == pytest.approx([2 * raw[0]], abs=1e-5)
    assert ensemble_scores([[1.0, 3.0], [3.0, 3.0]], k=1.0) == [1.0, 3.0]

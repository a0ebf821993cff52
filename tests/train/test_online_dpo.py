"""Online DPO: pair construction by hand, and two rounds end to end on a tiny model with
both reference modes."""

import json

import pytest

from rlhfkit.config import ModelConfig, TrainConfig
from rlhfkit.data.tokenize import Example
from rlhfkit.errors import ConfigError
from rlhfkit.train import online_dpo


def test_make_pairs_best_vs_worst_and_skips_ties():
    exs = [Example(0, [1], []), Example(1, [2], []), Example(2, [3], [])]
    comps = [[10], [11], [12], [20], [21], [22], [30], [], [32]]
    scores = [0.5, 1.0, 0.0,   # prompt 0: best 11, worst 12
              2.0, 2.0, 2.0,   # prompt 1: all tie -> no pair
              1.0, 0.0, 3.0]   # prompt 2: best 32, worst is the empty response -> skipped
    pairs = online_dpo.make_pairs(exs, comps, scores, 3)
    assert [(p.row, p.prompt, p.completions) for p in pairs] == [(0, [1], [[11], [12]])]


@pytest.mark.parametrize("reference_update", ["fixed", "refresh"])
def test_two_rounds_log_each_round(tiny_dir, tmp_path, length_reward, reference_update):
    cfg = online_dpo.OnlineDPOConfig(
        model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=16, task_eval_size=4,
        rewards=[length_reward], rounds=2, prompts_per_round=8, reference_update=reference_update,
        eval_samples=2, train=TrainConfig(output_dir=str(tmp_path), batch_size=4, lr=1e-3, progress=False,
                                          tensorboard=False, warmup_ratio=0.0, lr_scheduler="constant"))
    cfg.rollout.num_generations, cfg.rollout.max_new_tokens = 3, 6
    logs = []
    online_dpo.run(cfg, log=logs.append)
    recs = [json.loads(line) for line in open(tmp_path / "rounds.jsonl")]
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert all("eval/greedy/reward" in r and "eval/sampled/reward" in r for r in recs)
    for r in recs[1:]:
        assert r["prompts"] == 8 and 0 < r["pairs"] <= 8 and "train/loss" in r
    want = "reference=model" if reference_update == "fixed" else "reference=precompute"
    assert sum(want in m for m in logs) == 2
    assert (tmp_path / "final").is_dir() and (tmp_path / "round-2" / "final").is_dir()


def test_bad_settings(tiny_dir, tmp_path):
    cfg = online_dpo.OnlineDPOConfig(model=ModelConfig(name=tiny_dir), task="arithmetic",
                                     reference_update="sometimes", train=TrainConfig(output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="reference_update must be fixed\\|refresh"):
        online_dpo.run(cfg)
    cfg.reference_update, cfg.rollout.num_generations = "fixed", 1
    with pytest.raises(ConfigError, match="num_generations >= 2"):
        online_dpo.run(cfg)

import json

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.plot import group_of, plot_run


def test_groups():
    assert group_of("rollout/kl") == "kl" and group_of("eval/sampled/kl") == "kl"
    assert group_of("rollout/length_mean") == "length"
    assert group_of("eval/reward_accuracy") == "accuracy"
    assert group_of("rollout/reward") == "reward" and group_of("eval/greedy/arithmetic") == "reward"
    assert group_of("train/value_loss") == "loss"
    assert group_of("train/lr") is None


def test_plot_run_writes_pngs(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for s in range(1, 6):
            f.write(json.dumps({"step": s, "train/loss": 1.0 / s, "rollout/reward": 0.1 * s,
                                "rollout/kl": 0.01 * s, "rollout/length_mean": 30 - s,
                                "train/lr": 1e-5, "train/bad": float("nan")}) + "\n")
    paths = plot_run(str(tmp_path), log=lambda *a: None)
    names = sorted(p.split("/")[-1] for p in paths)
    assert names == ["kl.png", "length.png", "loss.png", "reward.png"]
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_errors(tmp_path):
    with pytest.raises(ConfigError, match="no metrics file"):
        plot_run(str(tmp_path / "missing"))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "tra')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        plot_run(str(tmp_path))

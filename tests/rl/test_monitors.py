"""Reward-hacking monitors: hand-made metric streams trip (or do not trip) each alarm, and a
real GRPO run on a length-hacking reward (reward = response length) trips the length alarm."""

import json

import pytest

from rlhfkit.config import ModelConfig, TrainConfig
from rlhfkit.rl.monitors import MonitorConfig, RewardHackingMonitor
from rlhfkit.train import rl


def feed(mon, recs):
    out = []
    for i, r in enumerate(recs, 1):
        rec = dict(r)
        out.append((mon.update(i, rec), rec))
    return out


def test_length_drift_fires_once_on_moving_averages():
    logs = []
    mon = RewardHackingMonitor(MonitorConfig(window=2, length_drift=0.5), [], logs.append)
    res = feed(mon, [{"rollout/length_mean": v} for v in (10, 10, 10, 12, 20, 25, 26)])
    # baseline = mean(10, 10) = 10; current = mean of the last two
    assert [rec.get("monitor/length_ratio") for _, rec in res] == pytest.approx([None, None, 1.0, 1.1, 1.6, 2.25, 2.55])
    assert [len(new) for new, _ in res] == [0, 0, 0, 0, 1, 0, 0]  # logged once, when it starts
    assert [rec["monitor/alerts"] for _, rec in res] == [0, 0, 0, 0, 1, 1, 1]
    assert len(logs) == 1 and "1.60x its start" in logs[0] and "length hacking" in logs[0]
    assert not mon.should_stop()  # early_stop is off by default


def test_single_spike_does_not_fire_and_switch_off_works():
    spike = [{"rollout/length_mean": v} for v in (10, 10, 10, 10, 30, 10, 10, 10)]
    mon = RewardHackingMonitor(MonitorConfig(window=4, length_drift=0.5), [], lambda m: None)
    assert all(not new for new, _ in feed(mon, spike))  # (30+10+10+10)/4 = 15: 1.5x, not beyond
    mon = RewardHackingMonitor(MonitorConfig(window=1, length_drift=0.0), [], lambda m: None)
    assert all(not new for new, _ in feed(mon, spike))


def test_kl_blow_up_and_early_stop():
    mon = RewardHackingMonitor(MonitorConfig(window=2, kl_max=10.0, early_stop=True), [], lambda m: None)
    res = feed(mon, [{"rollout/kl": v} for v in (0.1, 0.2, 3.0, 9.0, 14.0)])
    assert [rec.get("monitor/kl") for _, rec in res] == pytest.approx([None, None, 1.6, 6.0, 11.5])
    assert [len(new) for new, _ in res] == [0, 0, 0, 0, 1] and "passed kl_max 10" in res[-1][0][0]
    assert mon.should_stop() and "KL" in mon.stop_reason


def test_proxy_up_gold_down_fires_but_both_up_does_not():
    def stream(gold):
        return [{"rollout/reward": p, "rollout/reward/gold": g} for p, g in zip((0.1, 0.1, 0.3, 0.5, 0.6), gold)]

    mon = RewardHackingMonitor(MonitorConfig(window=2, gold_drop=0.05), ["gold"], lambda m: None)
    res = feed(mon, stream((0.8, 0.8, 0.75, 0.7, 0.6)))
    # last step: proxy 0.55 - 0.1 = +0.45, gold 0.65 - 0.8 = -0.15
    assert res[-1][1]["monitor/proxy_delta"] == pytest.approx(0.45)
    assert res[-1][1]["monitor/gold_delta/gold"] == pytest.approx(-0.15)
    assert [len(new) for new, _ in res] == [0, 0, 0, 1, 0]  # step 4: gold 0.725 - 0.8 = -0.075
    mon = RewardHackingMonitor(MonitorConfig(window=2, gold_drop=0.05), ["gold"], lambda m: None)
    assert all(not new for new, _ in feed(mon, stream((0.8, 0.8, 0.85, 0.9, 0.95))))


def test_state_survives_a_restart():
    state: dict = {}
    mon = RewardHackingMonitor(MonitorConfig(window=2), [], lambda m: None, state=state)
    feed(mon, [{"rollout/length_mean": 10}, {"rollout/length_mean": 10}])
    mon2 = RewardHackingMonitor(MonitorConfig(window=2), [], lambda m: None, state=state)
    new, rec = feed(mon2, [{"rollout/length_mean": 40}])[0]
    assert rec["monitor/length_ratio"] == pytest.approx(2.5) and new  # baseline kept across the restart


def test_length_hacking_reward_trips_the_length_monitor(tiny_dir, tmp_path, length_reward):
    """GRPO on reward = response length (characters). Responses stop at the first 'e', so the
    random policy answers in ~2 tokens; learning to avoid 'e' makes them long, the length
    monitor fires, and with early_stop the run ends there, keeping the best checkpoint."""
    out = tmp_path / "run"
    cfg = rl.RLConfig(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=32, task_eval_size=4,
                      rewards=[length_reward],
                      train=TrainConfig(output_dir=str(out), max_steps=16, batch_size=4, lr=0.1,
                                        lr_scheduler="constant", warmup_ratio=0.0, progress=False,
                                        tensorboard=False, eval_batch_size=4, eval_steps=2,
                                        best_metric="sampled/reward"))
    cfg.rollout.num_generations, cfg.rollout.max_new_tokens, cfg.rollout.stop = 4, 16, ["e"]
    cfg.monitor = MonitorConfig(window=2, length_drift=1.0, early_stop=True)
    logs = []
    rl.run(cfg, log=logs.append)
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [r for r in recs if "rollout/length_mean" in r]
    assert any("possible length hacking" in m for m in logs)
    assert any("early stop at step" in m for m in logs)
    assert steps[-1]["monitor/alerts"] >= 1 and steps[-1]["monitor/length_ratio"] > 2.0
    assert steps[-1]["step"] < 16  # stopped before max_steps
    assert (out / "final").is_dir() and (out / "best").is_dir()
    best = json.load(open(out / "best.json"))
    evals = [r for r in recs if "eval/sampled/reward" in r]
    assert best["value"] == pytest.approx(max(r["eval/sampled/reward"] for r in evals))
    # best/ has its own model card: the step it was kept at, not the run's last
    card = (out / "best" / "README.md").read_text()
    assert f"| step | {best['step']} of " in card
    assert f"| step | {best['step']} of " not in (out / "final" / "README.md").read_text() or \
        best["step"] == steps[-1]["step"]

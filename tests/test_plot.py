import json

import matplotlib.pyplot as plt
import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.plot import ema, panel_of, plot_run, run_figures


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def write_metrics(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# keys as the recipes log them (from metrics.jsonl of tiny sft, rm, dpo, kto, grpo, ppo runs)
@pytest.mark.parametrize("key,panel", [
    ("rollout/reward", "reward"), ("eval/greedy/reward", "reward"), ("eval/sampled/reward", "reward"),
    ("rollout/reward/arithmetic", "reward-arithmetic"), ("eval/greedy/arithmetic", "reward-arithmetic"),
    ("eval/sampled/format", "reward-format"), ("eval/gold_reward", "gold"),
    ("rollout/kl", "kl"), ("rollout/kl_k3", "kl"), ("eval/sampled/kl", "kl"), ("train/kl", "kl"),
    ("train/kl_token", "kl_token"), ("train/approx_kl", "approx_kl"), ("rollout/kl_coef", "kl_coef"),
    ("rollout/length_mean", "length"), ("rollout/length_max", "length"), ("eval/greedy/length", "length"),
    ("train/entropy", "entropy"), ("train/clip_frac", "clip"), ("train/value_clip_frac", "clip"),
    ("ppo/explained_variance", "explained_variance"), ("train/value_loss", "value_loss"),
    ("train/grad_norm", "grad_norm"), ("train/lr", "lr"), ("train/loss", "loss"), ("eval/loss", "loss"),
    ("train/policy_loss", "loss"), ("train/nll", "nll"), ("eval/nll", "nll"),
    ("train/accuracy", "accuracy"), ("eval/reward_accuracy", "accuracy"), ("train/rewards/accuracy", "accuracy"),
    ("train/margin", "margin"), ("eval/reward_margin", "margin"), ("train/rewards/margin", "margin"),
    ("train/chosen", "chosen_rejected"), ("train/rewards/rejected", "chosen_rejected"),
    ("train/logps/chosen", "logps"), ("rollout/truncated_frac", "truncated"),
    ("eval/sampled/truncated_frac", "truncated"), ("train/tokens_per_s", "throughput"),
    ("train/peak_rss_gb", "memory"),
    ("eval/perplexity", None), ("train/epoch", None), ("train/updates", None), ("rollout/reward_errors", None),
    ("monitor/alerts", None), ("train/step_time_s", None), ("count/chosen", None)])
def test_panel_of(key, panel):
    spec = panel_of(key)
    assert (spec[0] if spec else None) == panel


def ppo_records(n=10):
    recs = [{"step": 0, "eval/greedy/reward": 0.1, "eval/sampled/reward": 0.2, "eval/sampled/kl": 0.0,
             "eval/greedy/length": 20.0}]
    for s in range(1, n + 1):
        recs.append({"step": s, "rollout/reward": 0.1 * s, "rollout/reward/arithmetic": 0.05 * s,
                     "rollout/kl": 0.01 * s, "rollout/kl_k3": 0.009 * s, "rollout/length_mean": 30.0 - s,
                     "train/entropy": 2.0 - 0.1 * s, "train/clip_frac": 0.0, "train/value_clip_frac": 0.1,
                     "ppo/explained_variance": -1 + 0.1 * s, "train/grad_norm": 1.0 + s % 3,
                     "train/lr": 1e-5, "train/loss": 1.0 / s, "train/policy_loss": 1.0 / s,
                     "train/epoch": s / n, "train/bad": float("nan"), "monitor/alerts": 0.0})
    recs.append({"step": n, "eval/greedy/reward": 0.5, "eval/sampled/reward": 0.4, "eval/sampled/kl": 0.3,
                 "eval/greedy/length": 18.0})
    return recs


def test_known_metrics_file_gives_the_expected_panels(tmp_path):
    run = tmp_path / "my-ppo-run"
    run.mkdir()
    write_metrics(run / "metrics.jsonl", ppo_records())
    figs = run_figures(str(run))
    names = [p.name for p, _ in figs]
    assert names == ["reward", "reward-arithmetic", "kl", "length", "entropy", "clip",
                     "explained_variance", "loss", "grad_norm", "lr"]
    expected_ylabel = {"kl": "KL (nats/response)", "length": "length (tokens)",
                       "entropy": "entropy (nats/token)", "lr": "learning rate"}
    for p, fig in figs:
        (ax,) = fig.axes
        assert ax.get_title().startswith("my-ppo-run: ")
        assert ax.get_xlabel() == "step"
        assert ax.get_ylabel()
        if p.name in expected_ylabel:
            assert ax.get_ylabel() == expected_ylabel[p.name]
    kl_ax = dict((p.name, f) for p, f in figs)["kl"].axes[0]
    labels = [ln.get_label() for ln in kl_ax.get_lines()]
    assert labels == ["rollout/kl", "rollout/kl_k3", "eval/sampled/kl"]
    ev = kl_ax.get_lines()[2]  # eval points are markers
    assert ev.get_marker() == "o" and ev.get_linestyle() == "--"
    assert list(ev.get_xdata()) == [0, 10] and list(ev.get_ydata()) == [0.0, 0.3]


def test_no_duplicated_series(tmp_path):
    # SFT logs train/loss == train/nll; GRPO logs train/loss == train/policy_loss; all-zero
    # counters in other panels are not duplicates of each other
    recs = [{"step": s, "train/loss": 3.0 - 0.1 * s, "train/nll": 3.0 - 0.1 * s, "train/lr": 1e-3,
             "train/clip_frac": 0.0, "rollout/truncated_frac": 0.0} for s in range(1, 11)]
    recs += [{"step": 10, "eval/nll": 2.5, "eval/perplexity": 12.18}]
    write_metrics(tmp_path / "metrics.jsonl", recs)
    figs = run_figures(str(tmp_path))
    drawn = [ln.get_label() for _p, f in figs for ln in f.axes[0].get_lines()
             if not ln.get_label().startswith("_")]
    assert [p.name for p, _ in figs] == ["nll", "clip", "truncated", "lr"]
    nll = [ln.get_label() for ln in figs[0][1].axes[0].get_lines()]
    assert nll == ["train/nll (= train/loss)", "eval/nll"]
    metric_names = [d.split(" ")[0] for d in drawn]
    assert len(metric_names) == len(set(metric_names)), drawn
    assert "train/loss" not in metric_names and "eval/perplexity" not in metric_names


def test_ema_matches_a_hand_worked_example():
    # s0 = 1; s1 = .5*1 + .5*3 = 2; s2 = .5*2 + .5*2 = 2; s3 = .5*2 + .5*6 = 4
    assert ema([1.0, 3.0, 2.0, 6.0], 0.5) == [1.0, 2.0, 2.0, 4.0]
    assert ema([10.0, 0.0, 0.0], 0.6) == pytest.approx([10.0, 6.0, 3.6])
    assert ema([5.0, 7.0], 0.0) == [5.0, 7.0]
    with pytest.raises(ConfigError, match=r"outside \[0, 1\)"):
        ema([1.0], 1.0)


def test_smoothed_curve_with_the_raw_series_faint_behind(tmp_path):
    ys = [0.0, 1.0, 0.0, 1.0, 4.0, 0.0, 2.0, 1.0, 3.0, 0.0]
    write_metrics(tmp_path / "metrics.jsonl", [{"step": s + 1, "train/grad_norm": y} for s, y in enumerate(ys)])
    ((panel, fig),) = run_figures(str(tmp_path), smooth=0.6)
    raw, smooth = fig.axes[0].get_lines()
    assert list(raw.get_ydata()) == ys and raw.get_alpha() < 0.5 and raw.get_label().startswith("_")
    assert raw.get_color() == smooth.get_color()
    assert smooth.get_label() == "train/grad_norm (EMA 0.6)"
    # closed form: s_t = w^t x_0 + (1 - w) * sum_{i=1..t} w^(t-i) x_i
    w = 0.6
    want = [w ** t * ys[0] + (1 - w) * sum(w ** (t - i) * ys[i] for i in range(1, t + 1)) for t in range(len(ys))]
    assert list(smooth.get_ydata()) == pytest.approx(want)


def test_short_series_are_not_smoothed(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [{"step": s, "train/loss": float(s)} for s in (1, 2, 3)])
    ((_p, fig),) = run_figures(str(tmp_path), smooth=0.6)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == [1.0, 2.0, 3.0] and line.get_label() == "train/loss"


def test_plot_run_writes_pngs(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", ppo_records())
    paths = plot_run(str(tmp_path), log=lambda *a: None, smooth=0.6)
    names = [p.split("/")[-1] for p in paths]
    assert names[:3] == ["reward.png", "reward-arithmetic.png", "kl.png"] and "lr.png" in names
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_online_dpo_rounds_use_round_on_x(tmp_path):
    write_metrics(tmp_path / "rounds.jsonl", [{"round": 0, "eval/greedy/reward": 6.0},
                                              {"round": 1, "rollout/reward": 42.0, "train/loss": 0.68},
                                              {"round": 2, "rollout/reward": 43.0, "train/loss": 0.67}])
    figs = run_figures(str(tmp_path))
    assert [p.name for p, _ in figs] == ["reward", "loss"]
    assert all(f.axes[0].get_xlabel() == "round" for _p, f in figs)


def test_plot_errors(tmp_path):
    with pytest.raises(ConfigError, match="no metrics file"):
        plot_run(str(tmp_path / "missing"))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "tra')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        plot_run(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/epoch": 1.0}\n')
    with pytest.raises(ConfigError, match="no plottable metrics"):
        plot_run(str(tmp_path))
    with pytest.raises(ConfigError, match="--smooth"):
        plot_run(str(tmp_path), smooth=-0.1)

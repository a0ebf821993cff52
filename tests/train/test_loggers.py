"""train.report_to: wandb and trackio (fake modules) get the resolved config once, every metrics
record with its step, and finish; missing trackers stop the run in one line; only the main
process logs; the deprecated train.tensorboard flag."""

import json
import sys
import types

import pytest

from conftest import write_jsonl
from rlhfkit.config import DataConfig, ModelConfig, TrainConfig, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.tasks.arithmetic import make_problems, sft_rows
from rlhfkit.train import sft
from rlhfkit.train.metrics import MetricsLog


def quiet(*a):
    pass


class FakeWandbRun:
    def __init__(self, calls, **kw):
        self.calls = calls
        calls.append(("init", kw))

    def log(self, data, step=None):
        self.calls.append(("log", step, dict(data)))

    def finish(self):
        self.calls.append(("finish",))


def fake_modules(monkeypatch):
    calls = {"wandb": [], "trackio": []}
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: FakeWandbRun(calls["wandb"], **kw)
    trackio = types.ModuleType("trackio")
    trackio.init = lambda **kw: calls["trackio"].append(("init", kw))
    trackio.log = lambda metrics, step=None: calls["trackio"].append(("log", step, dict(metrics)))
    trackio.finish = lambda: calls["trackio"].append(("finish",))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "trackio", trackio)
    return calls


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    probs = make_problems(20, seed=0)
    return write_jsonl(d / "sft.jsonl", sft_rows(probs[:12])), write_jsonl(d / "eval.jsonl", sft_rows(probs[12:16]))


def test_wandb_and_trackio_get_config_metrics_and_finish(tiny_dir, data, tmp_path, monkeypatch):
    calls = fake_modules(monkeypatch)
    out = tmp_path / "run-a"
    cfg = sft.SFTConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=data[0], eval_path=data[1],
                                                                         max_length=96),
                        train=TrainConfig(output_dir=str(out), max_steps=3, batch_size=4, lr=1e-3,
                                          progress=False, report_to=["wandb", "trackio"]))
    sft.run(cfg, log=quiet)
    with open(out / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    for name in ("wandb", "trackio"):
        c = calls[name]
        inits = [x for x in c if x[0] == "init"]
        assert len(inits) == 1 and c[0][0] == "init" and c[-1] == ("finish",), name
        kw = inits[0][1]
        assert kw["name"] == "run-a" and kw["project"] == "rlhfkit"
        assert kw["config"]["train"]["max_steps"] == 3 and kw["config"]["train"]["report_to"] == ["wandb", "trackio"]
        assert kw["config"]["data"]["path"] == data[0] and kw["config"]["model"]["name"] == tiny_dir
        logs = [x for x in c if x[0] == "log"]
        # every record of metrics.jsonl, at its step, with the same numbers
        assert [s for _, s, _ in logs] == [r["step"] for r in records]
        for (_, step, m), rec in zip(logs, records):
            for k, v in m.items():
                assert rec[k] == pytest.approx(v, rel=1e-6), (name, step, k)
            assert set(m) == {k for k, v in rec.items() if isinstance(v, float) or (
                isinstance(v, int) and k != "step")}
        assert any("train/loss" in m for _, _, m in logs) and any("eval/nll" in m for _, _, m in logs)


def test_non_main_process_starts_no_tracker(tmp_path, monkeypatch):
    calls = fake_modules(monkeypatch)
    log = MetricsLog(str(tmp_path / "metrics.jsonl"), enabled=False, report_to=["wandb", "trackio"],
                     config_fn=lambda: {"a": 1})
    log.write(1, {"train/loss": 1.0})
    log.close()
    assert calls == {"wandb": [], "trackio": []} and not (tmp_path / "metrics.jsonl").exists()


def test_nonfinite_values_are_not_sent(tmp_path, monkeypatch):
    calls = fake_modules(monkeypatch)
    log = MetricsLog(str(tmp_path / "metrics.jsonl"), report_to=["wandb"], config_fn=lambda: {"a": 1})
    log.write(2, {"x": float("nan"), "y": 0.5, "z": float("inf"), "flag": True})
    log.close()
    assert calls["wandb"][1] == ("log", 2, {"y": 0.5})
    assert calls["wandb"][0][1]["config"] == {"a": 1}


@pytest.mark.parametrize("name,extra", [("wandb", "rlhfkit[wandb]"), ("trackio", "rlhfkit[trackio]")])
def test_missing_tracker_is_one_line_before_anything_loads(name, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    from rlhfkit.train import trackers

    monkeypatch.setattr(trackers, "_installed", lambda n: n not in ("wandb", "trackio"))
    cfg = sft.SFTConfig(model=ModelConfig(name="/nonexistent/model"), data=DataConfig(path="missing.jsonl"),
                        train=TrainConfig(output_dir=str(tmp_path / "o"), report_to=["tensorboard", name]))
    with pytest.raises(ConfigError) as e:
        sft.run(cfg, log=quiet)  # fails before the (missing) model or data are looked at
    msg = str(e.value)
    assert f"train.report_to names {name}" in msg and f"pip install '{extra}'" in msg and "\n" not in msg


def test_missing_tracker_through_the_cli(tmp_path, monkeypatch, capsys):
    from rlhfkit.cli import main
    from rlhfkit.train import trackers

    monkeypatch.setattr(trackers, "_installed", lambda n: False)
    rc = main(["sft", "--data.path", "missing.jsonl", "--train.output_dir", str(tmp_path / "o"),
               "--train.report_to", "wandb"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "train.report_to names wandb, which is not installed; install it with pip install 'rlhfkit[wandb]'" in err


def test_report_to_parsing_and_the_deprecated_tensorboard_flag():
    c = build_config(sft.SFTConfig, None, [("train.report_to", "wandb,tensorboard,wandb")])
    assert c.train.report_to == ["wandb", "tensorboard"]
    c = build_config(sft.SFTConfig, None, [("train.report_to", "tensorboard,trackio"), ("train.tensorboard", "false")])
    assert c.train.report_to == ["trackio"]
    assert build_config(sft.SFTConfig, None, [("train.report_to", "none")]).train.report_to == []
    assert build_config(sft.SFTConfig, None, []).train.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match=r"train.report_to must be one of .*\(got 'wandbb'\) \(did you mean 'wandb'\?\)"):
        build_config(sft.SFTConfig, None, [("train.report_to", "wandbb")])


def test_tracker_start_failure_is_one_line(tmp_path, monkeypatch):
    from rlhfkit.errors import TrainingError

    wandb = types.ModuleType("wandb")

    def init(**kw):
        raise RuntimeError("api_key not configured (no-tty)\nlong traceback text")

    wandb.init = init
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    with pytest.raises(TrainingError) as e:
        MetricsLog(str(tmp_path / "metrics.jsonl"), report_to=["wandb"], config_fn=dict)
    assert "starting wandb failed (RuntimeError: api_key not configured (no-tty))" in str(e.value)
    assert "WANDB_MODE=offline" in str(e.value) and "\n" not in str(e.value)


def test_trackers_finish_when_the_run_fails(tiny_dir, data, tmp_path, monkeypatch):
    calls = fake_modules(monkeypatch)
    real, seen = sft.sft_step, []

    def failing_step(*a, **kw):
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("boom in step 2")
        return real(*a, **kw)

    monkeypatch.setattr(sft, "sft_step", failing_step)
    cfg = sft.SFTConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=data[0], max_length=96),
                        train=TrainConfig(output_dir=str(tmp_path / "r"), max_steps=3, batch_size=4, lr=1e-3,
                                          progress=False, report_to=["wandb", "trackio"]))
    with pytest.raises(RuntimeError, match="boom"):
        sft.run(cfg, log=quiet)
    for name in ("wandb", "trackio"):
        assert calls[name][0][0] == "init" and calls[name][-1] == ("finish",), name


def test_online_dpo_is_one_tracker_run(tiny_dir, tmp_path, monkeypatch, length_reward):
    from rlhfkit.train import online_dpo

    calls = fake_modules(monkeypatch)
    cfg = online_dpo.OnlineDPOConfig(
        model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=8, task_eval_size=2,
        rewards=[length_reward], rounds=2, prompts_per_round=4, eval_samples=0,
        train=TrainConfig(output_dir=str(tmp_path / "od"), batch_size=4, lr=1e-3, progress=False,
                          warmup_ratio=0.0, lr_scheduler="constant", report_to=["wandb"]))
    cfg.rollout.num_generations, cfg.rollout.max_new_tokens = 2, 4
    online_dpo.run(cfg, log=quiet)
    c = calls["wandb"]
    assert [x[0] for x in c].count("init") == 1 and c[-1] == ("finish",)
    assert c[0][1]["config"]["rounds"] == 2
    logs = [x for x in c if x[0] == "log"]  # the rounds' records and the evaluations, in one run
    assert [s for _, s, m in logs if "train/loss" in m] == [1, 2]
    assert [s for _, s, m in logs if "eval/greedy/reward" in m] == [0, 2]

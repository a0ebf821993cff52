"""A TRL user's config runs unchanged (DPO and GRPO, tiny model); a reward function that fails
on every row stops GRPO; in-memory datasets through the Python API."""

import json
import os
import textwrap

import pytest

from conftest import train_losses, write_jsonl
from rlhfkit.cli import main
from rlhfkit.config import DataConfig, ModelConfig, TrainConfig
from rlhfkit.tasks.arithmetic import make_problems, preference_rows, sft_rows

REWARDS = textwrap.dedent('''
    def correctness(completions, answer, **kwargs):
        # TRL style for a conversational dataset: each completion is [{"role": "assistant", ...}]
        return [1.0 if a in c[0]["content"] else 0.0 for c, a in zip(completions, answer)]

    def short(completions, **kwargs):
        return [-len(c[0]["content"]) / 10.0 for c in completions]

    def broken(completions, **kwargs):
        raise KeyError("solution")
''')


@pytest.fixture
def trl_module(tmp_path, monkeypatch):
    d = tmp_path / "mods"
    d.mkdir()
    (d / "my_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PYTHONPATH", str(d))
    return "my_rewards"


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_trl_style_dpo_config_runs(tiny_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(make_problems(12, seed=1), seed=0))
    out = tmp_path / "dpo"
    (tmp_path / "dpo.yaml").write_text(textwrap.dedent(f"""
        model_name_or_path: {tiny_dir}
        dataset_name: {data}
        learning_rate: 5.0e-4
        per_device_train_batch_size: 2
        gradient_accumulation_steps: 2
        max_steps: 3
        lr_scheduler_type: constant
        warmup_ratio: 0.0
        beta: 0.2
        loss_type: sigmoid
        max_length: 128
        logging_steps: 1
        output_dir: {out}
        seed: 3
    """))
    code = main(["dpo", "--config", str(tmp_path / "dpo.yaml"), "--train.progress", "false",
                 "--train.tensorboard", "false"])
    assert code == 0, capsys.readouterr().err
    recs = [r for r in records(out) if "train/loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(r["train/lr"] == pytest.approx(5e-4) for r in recs)
    with open(out / "run.json") as f:
        cfg = json.load(f)["config"]
    assert cfg["beta"] == 0.2 and cfg["train"]["grad_accum"] == 2 and cfg["train"]["batch_size"] == 2
    assert cfg["train"]["seed"] == 3 and cfg["data"]["max_length"] == 128
    assert (out / "final" / "config.json").exists()


def prompt_rows(n):
    return [{"prompt": p["prompt"], "answer": p["answer"]} for p in make_problems(n, seed=2)]


def test_trl_style_grpo_config_with_trl_reward_functions_runs(tiny_dir, tmp_path, trl_module, capsys):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(8))
    assert isinstance(prompt_rows(1)[0]["prompt"], list)  # conversational, as TRL's GRPO datasets
    out = tmp_path / "grpo"
    (tmp_path / "grpo.yaml").write_text(textwrap.dedent(f"""
        model_name_or_path: {tiny_dir}
        dataset_name: {data}
        learning_rate: 1.0e-4
        per_device_train_batch_size: 4
        num_generations: 2
        max_completion_length: 6
        max_prompt_length: 64
        max_steps: 2
        beta: 0.04
        epsilon: 0.2
        epsilon_high: 0.28
        temperature: 1.0
        reward_funcs:
          - {trl_module}.correctness
          - {trl_module}.short
        reward_weights: [1.0, 0.5]
        lr_scheduler_type: constant
        output_dir: {out}
    """))
    code = main(["grpo", "--config", str(tmp_path / "grpo.yaml"), "--train.progress", "false",
                 "--train.tensorboard", "false", "--eval_samples", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    recs = [r for r in records(out) if "train/loss" in r]
    assert len(recs) == 2
    for r in recs:
        assert r["rollout/kl_coef"] == pytest.approx(0.04)
        assert r["rollout/reward_errors"] == 0.0  # message-list completions reached both functions
        assert r["rollout/reward/short"] < 0  # -len/10: the function really ran
        # total = 1.0 * correctness + 0.5 * short, averaged
        assert r["rollout/reward"] == pytest.approx(r["rollout/reward/correctness"] + 0.5 * r["rollout/reward/short"],
                                                    abs=1e-5)
    with open(out / "run.json") as f:
        cfg = json.load(f)["config"]
    assert cfg["train"]["batch_size"] == 2  # 4 completions per device = 2 prompts x 2 generations
    assert (cfg["clip_eps_low"], cfg["clip_eps_high"], cfg["kl_coef"]) == (0.2, 0.28, 0.04)


def test_grpo_stops_when_the_reward_function_fails_on_every_row(tiny_dir, tmp_path, trl_module, capsys):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(8))
    out = tmp_path / "grpo"
    code = main(["grpo", "--model_name_or_path", tiny_dir, "--dataset_name", data, "--reward_funcs",
                 f"{trl_module}.broken", "--num_generations", "2", "--max_completion_length", "4",
                 "--train.batch_size", "2", "--max_steps", "3", "--output_dir", str(out),
                 "--train.progress", "false", "--train.tensorboard", "false", "--eval_samples", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert "reward 'broken' failed on rows 0-3: KeyError: 'solution'" in err[-1], err
    assert "every row of its first batch" in err[-1]
    assert not (out / "final").exists()
    assert not any("train/loss" in r for r in records(out)) if (out / "metrics.jsonl").exists() else True


# --------------------------------------------------------------------------- in-memory data

def sft_cfg(tiny_dir, out, path):
    from rlhfkit.train.sft import SFTConfig

    return SFTConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=path, max_length=64),
                     train=TrainConfig(output_dir=str(out), max_steps=2, batch_size=2, lr=1e-3, warmup_ratio=0,
                                       progress=False, tensorboard=False, seed=5))


def test_in_memory_rows_train_like_the_same_file(tiny_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    from rlhfkit.train import sft

    rows = sft_rows(make_problems(6, seed=4))
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    sft.run(sft_cfg(tiny_dir, tmp_path / "file", path), log=lambda *a: None)
    sft.run(sft_cfg(tiny_dir, tmp_path / "list", [dict(r) for r in rows]), log=lambda *a: None)
    sft.run(sft_cfg(tiny_dir, tmp_path / "ds", datasets.Dataset.from_list(rows)), log=lambda *a: None)

    def record(name):
        with open(tmp_path / name / "run.json") as f:
            return json.load(f)

    a, b, c = record("file"), record("list"), record("ds")
    assert b["data"]["examples"] == a["data"]["examples"] == c["data"]["examples"]  # same content, same sha
    assert b["config"]["data"]["path"].startswith("memory:")
    assert b["config"]["data"]["path"] == c["config"]["data"]["path"]
    assert train_losses(tmp_path / "list") == train_losses(tmp_path / "file")
    # other rows: another handle
    other = sft_cfg(tiny_dir, tmp_path / "x", rows[:5])
    assert other.data.path != b["config"]["data"]["path"]


def test_in_memory_eval_rows_and_bad_objects(tmp_path):
    from rlhfkit.config import ConfigError, validate_all
    from rlhfkit.data.loading import load_rows
    from rlhfkit.errors import DataError

    d = DataConfig(path=[{"prompt": "a", "completion": "b"}], eval_path=[{"prompt": "c", "completion": "d"}])
    assert d.eval_path.startswith("memory:") and load_rows(d.eval_path).rows == [{"prompt": "c", "completion": "d"}]
    raw = load_rows(d.path)
    raw.rows[0]["prompt"] = "changed"  # callers may rename fields in place; the registry keeps its copy
    assert load_rows(d.path).rows[0]["prompt"] == "a"
    with pytest.raises(DataError, match="row is a str"):
        DataConfig(path=["just text"])
    d = DataConfig()
    d.path = 42
    with pytest.raises(ConfigError, match="data.path must be a file path"):
        validate_all(d, "data.")

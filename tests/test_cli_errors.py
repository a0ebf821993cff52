"""Bad input to the CLI gives one clear line on stderr and exit status 2, never a traceback."""

import pytest

from conftest import write_jsonl
from rlhfkit.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


CASES = {
    "unknown key": (["--train.lrr", "1"], "unknown config key 'train.lrr'"),
    "wrong type": (["--train.batch_size", "many"], "config key 'train.batch_size' expects int"),
    "missing data file": (["--data.path", "nope/missing.jsonl"], "data file not found"),
    "missing model": (["--model.name", "./no-such-model"], "model directory not found"),
    "missing config": (["--config", "nope.yaml"], "config file not found"),
    "bad choice": (["--train.lr_scheduler", "wavy"], "train.lr_scheduler must be"),
    "negative lr": (["--train.lr", "-1"], "train.lr must be"),
    "bad warmup": (["--train.warmup_ratio", "2"], "train.warmup_ratio must be"),
}
DATA_KIND = {"sft": "sft", "rm": "pairs", "dpo": "pairs", "kto": "pairs", "grpo": "prompts", "ppo": "prompts"}


@pytest.fixture
def data(tmp_path):
    return {"sft": write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Q", "completion": " a"}]),
            "pairs": write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": " b"}]),
            "prompts": write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])}


@pytest.mark.parametrize("command", list(DATA_KIND))
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line(capsys, tiny_dir, data, tmp_path, command, name):
    extra, msg = CASES[name]
    base = ["--model.name", tiny_dir, "--data.path", data[DATA_KIND[command]], "--train.progress", "false",
            "--train.max_steps", "1", "--train.output_dir", str(tmp_path / "out")]
    code, err = run(capsys, command, *base, *extra)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"rlhfkit {command}: error: ") and msg in err[0], err
    assert "Traceback" not in "\n".join(err)


def test_empty_dataset(capsys, tiny_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run(capsys, "sft", "--model.name", tiny_dir, "--data.path", str(empty))
    assert code == 2 and "dataset is empty" in err[-1]


def test_all_rows_over_length(capsys, tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 200, "completion": " x"}] * 3)
    code, err = run(capsys, "sft", "--model.name", tiny_dir, "--data.path", path, "--data.max_length", "32")
    assert code == 2 and "no rows left after tokenization" in err[-1]


def test_wrong_kind_for_recipe(capsys, tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q", "completion": " a"}])
    code, err = run(capsys, "rm", "--model.name", tiny_dir, "--data.path", path)
    assert code == 2 and "needs preference or listwise data" in err[-1]


def test_bad_row_names_file_row_and_field(capsys, tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": " b"},
                                                {"prompt": "Q", "chosen": " a", "rejected": " a"}])
    code, err = run(capsys, "rm", "--model.name", tiny_dir, "--data.path", path)
    assert code == 2
    assert "bad.jsonl, row 1, field 'rejected': chosen and rejected are identical" in err[-1]


# The commands without a training loop of their own (eval, label) and online DPO: the same
# kinds of mistakes, with each command's own keys.
OTHER_CASES = {
    "unknown key": (["--nope", "1"], "unknown config key 'nope'"),
    "wrong type": (["--data.max_length", "long"], "config key 'data.max_length' expects int"),
    "missing data file": (["--data.path", "nope/missing.jsonl"], "data file not found"),
    "missing model": (["{model_key}", "./no-such-model"], "model directory not found"),
    "missing config": (["--config", "nope.yaml"], "config file not found"),
}


@pytest.mark.parametrize("command", ["online-dpo", "eval", "label"])
@pytest.mark.parametrize("name", list(OTHER_CASES))
def test_bad_input_one_line_other_commands(capsys, tiny_dir, data, tmp_path, command, name):
    out = str(tmp_path / "out")
    base, model_key = {
        "online-dpo": (["--data.path", data["prompts"], "--rewards", "arithmetic", "--train.output_dir", out,
                        "--train.progress", "false", "--rounds", "1"], "--model.name"),
        "eval": (["--data.path", data["prompts"], "--reference", tiny_dir, "--rewards", "arithmetic",
                  "--output_dir", out], "--model.name"),
        "label": (["--data.path", data["pairs"], "--output", out + "/pairs.jsonl"], "--judge_model.name"),
    }[command]
    extra, msg = OTHER_CASES[name]
    extra = [model_key if x == "{model_key}" else x for x in extra]
    code, err = run(capsys, command, model_key, tiny_dir, *base, *extra)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"rlhfkit {command}: error: ") and msg in err[0], err
    assert "Traceback" not in "\n".join(err)


def test_fresh_run_into_an_existing_run_is_one_line(capsys, tiny_dir, data, tmp_path):
    """A fresh run does not overwrite another run's results: one line naming resume/overwrite."""
    base = ["sft", "--model.name", tiny_dir, "--data.path", data["sft"], "--train.progress", "false",
            "--train.max_steps", "1", "--train.output_dir", str(tmp_path / "out"), "--train.tensorboard", "false"]
    assert run(capsys, *base)[0] == 0
    code, err = run(capsys, *base)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("rlhfkit sft: error: ") and "already holds a run" in err[0]
    assert "--train.overwrite true" in err[0]
    assert run(capsys, *base, "--train.overwrite", "true")[0] == 0


def test_resume_with_changed_config_is_one_line(capsys, tiny_dir, data, tmp_path):
    base = ["sft", "--model.name", tiny_dir, "--data.path", data["sft"], "--train.progress", "false",
            "--train.max_steps", "1", "--train.output_dir", str(tmp_path / "out"), "--train.tensorboard", "false",
            "--train.save_optimizer", "true"]  # keep a resumable checkpoint at the end
    assert run(capsys, *base)[0] == 0
    code, err = run(capsys, *base, "--train.resume", "true", "--train.lr", "0.5")
    assert code == 2 and len(err) == 1 and "cannot resume" in err[0] and "train.lr" in err[0], err
    assert "--train.resume_allow lr" in err[0]

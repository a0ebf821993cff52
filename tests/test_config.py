"""Tests for rlhfkit.config (YAML + dotted overrides -> typed dataclasses) and the CLI front end."""

from __future__ import annotations

import dataclasses

import pytest

from rlhfkit.config import build_config, describe
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.train.sft import SFTConfig


def write(tmp_path, text, name="recipe.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


# --------------------------------------------------------------------------- defaults / YAML


def test_defaults_without_yaml_or_overrides():
    cfg = build_config(SFTConfig)
    assert isinstance(cfg, SFTConfig)
    assert cfg.train.lr == 2e-5  # SFT's own default, not TrainConfig's 1e-5
    assert cfg.train.output_dir == "runs/sft"
    assert cfg.train.batch_size == 8
    assert cfg.data.rows == ""
    assert cfg.model.lora.r == 0


def test_defaults_are_not_shared_between_instances():
    a = build_config(SFTConfig, None, [("train.lr", "1e-3"), ("model.lora.r", "4")])
    b = build_config(SFTConfig)
    assert a.train.lr == 1e-3 and a.model.lora.r == 4
    assert b.train.lr == 2e-5 and b.model.lora.r == 0


def test_yaml_values_applied(tmp_path):
    path = write(tmp_path, """
model:
  name: my-model
  lora:
    r: 8
    dropout: 0.1
data:
  path: data.jsonl
  rows: "0:100"
  max_length: 512
train:
  lr: 5.0e-5
  batch_size: 4
  resume: true
  epochs: 2
""")
    cfg = build_config(SFTConfig, path)
    assert cfg.model.name == "my-model"
    assert cfg.model.lora.r == 8 and type(cfg.model.lora.r) is int
    assert cfg.model.lora.dropout == 0.1
    assert cfg.model.lora.alpha == 16  # untouched default
    assert cfg.data.path == "data.jsonl"
    assert cfg.data.rows == "0:100"
    assert cfg.data.max_length == 512
    assert cfg.train.lr == 5e-5
    assert cfg.train.batch_size == 4
    assert cfg.train.resume is True
    assert cfg.train.epochs == 2.0 and type(cfg.train.epochs) is float  # int in YAML -> float field
    assert cfg.train.output_dir == "runs/sft"  # untouched default


def test_yaml_lr_without_dot_is_coerced_to_float(tmp_path):
    # PyYAML (YAML 1.1) reads "3e-5" (no dot) as a string; the float field must still get 3e-5
    cfg = build_config(SFTConfig, write(tmp_path, "train:\n  lr: 3e-5\n"))
    assert cfg.train.lr == 3e-5 and type(cfg.train.lr) is float


def test_empty_yaml_file_gives_defaults(tmp_path):
    cfg = build_config(SFTConfig, write(tmp_path, "# only a comment\n"))
    assert cfg == SFTConfig()


def test_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path, "train:\n  lr: 5.0e-5\n  batch_size: 4\ndata:\n  rows: '0:100'\n")
    cfg = build_config(SFTConfig, path, [("train.lr", "3e-5"), ("data.rows", "0:10")])
    assert cfg.train.lr == 3e-5
    assert cfg.data.rows == "0:10"
    assert cfg.train.batch_size == 4  # from YAML, not overridden


def test_later_override_wins():
    cfg = build_config(SFTConfig, None, [("train.lr", "1e-4"), ("train.lr", "2e-4")])
    assert cfg.train.lr == 2e-4


# --------------------------------------------------------------------------- override typing


def test_override_float():
    cfg = build_config(SFTConfig, None, [("train.lr", "3e-5")])
    assert cfg.train.lr == 3e-5 and type(cfg.train.lr) is float
    cfg = build_config(SFTConfig, None, [("train.lr", "0.001"), ("train.warmup_ratio", "0")])
    assert cfg.train.lr == 0.001 and cfg.train.warmup_ratio == 0.0
    assert type(cfg.train.warmup_ratio) is float


def test_override_string_stays_string():
    cfg = build_config(SFTConfig, None, [("data.rows", "0:10")])
    assert cfg.data.rows == "0:10" and type(cfg.data.rows) is str
    # strings that YAML would parse as other types stay verbatim for str fields
    cfg = build_config(SFTConfig, None, [("model.name", "true"), ("data.path", "1e-5"),
                                         ("train.output_dir", "0123")])
    assert cfg.model.name == "true"
    assert cfg.data.path == "1e-5"
    assert cfg.train.output_dir == "0123"


@pytest.mark.parametrize("text,expected", [("true", True), ("false", False), ("True", True),
                                           ("FALSE", False), ("yes", True), ("no", False)])
def test_override_bool(text, expected):
    cfg = build_config(SFTConfig, None, [("train.resume", text)])
    assert cfg.train.resume is expected


@pytest.mark.parametrize("text,expected", [("1", True), ("0", False)])
def test_override_bool_numeric_text(text, expected):
    cfg = build_config(SFTConfig, None, [("train.resume", text)])
    assert cfg.train.resume is expected


def test_override_ints():
    cfg = build_config(SFTConfig, None, [("train.batch_size", "16"), ("train.max_steps", "0"),
                                         ("model.lora.r", "8"), ("train.seed", "-3")])
    assert cfg.train.batch_size == 16 and type(cfg.train.batch_size) is int
    assert cfg.train.max_steps == 0 and type(cfg.train.max_steps) is int
    assert cfg.model.lora.r == 8
    assert cfg.train.seed == -3


def test_override_int_from_integral_float_text():
    cfg = build_config(SFTConfig, None, [("train.batch_size", "4.0")])
    assert cfg.train.batch_size == 4 and type(cfg.train.batch_size) is int


# --------------------------------------------------------------------------- errors


def test_unknown_nested_key_names_full_key_and_suggests():
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, None, [("train.lrr", "1e-5")])
    msg = str(ei.value)
    assert "'train.lrr'" in msg
    assert "'lr'" in msg  # did you mean 'lr'?
    assert "did you mean" in msg


def test_unknown_deeply_nested_key():
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, None, [("model.lora.rank", "4")])
    assert "'model.lora.rank'" in str(ei.value)


def test_unknown_top_level_key():
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, None, [("trainer", "1")])
    assert "'trainer'" in str(ei.value)
    assert "'train'" in str(ei.value)  # suggestion


def test_unknown_key_in_yaml(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 1.0e-5\n")
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, path)
    assert "'train.lrr'" in str(ei.value) and "'lr'" in str(ei.value)
    path = write(tmp_path, "optim:\n  lr: 1.0e-5\n", "b.yaml")
    with pytest.raises(ConfigError, match="'optim'"):
        build_config(SFTConfig, path)


def test_config_error_is_rlhfkit_error():
    assert issubclass(ConfigError, RlhfkitError)


@pytest.mark.parametrize("key,value", [("train.batch_size", "abc"), ("train.batch_size", "2.5"),
                                       ("train.lr", "fast"), ("train.resume", "maybe"),
                                       ("train.lr", "[1, 2]")])
def test_wrong_type_names_key(key, value):
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, None, [(key, value)])
    assert f"'{key}'" in str(ei.value)


def test_wrong_type_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"'train\.batch_size'"):
        build_config(SFTConfig, write(tmp_path, "train:\n  batch_size: abc\n"))
    with pytest.raises(ConfigError, match=r"'train\.resume'"):
        build_config(SFTConfig, write(tmp_path, "train:\n  resume: 2.5\n", "b.yaml"))
    with pytest.raises(ConfigError, match=r"'data\.path'"):
        build_config(SFTConfig, write(tmp_path, "data:\n  path: [a, b]\n", "c.yaml"))


def test_section_given_a_scalar(tmp_path):
    with pytest.raises(ConfigError, match="train"):
        build_config(SFTConfig, write(tmp_path, "train: 5\n"))
    with pytest.raises(ConfigError, match=r"model\.lora"):
        build_config(SFTConfig, None, [("model.lora", "5")])


def test_yaml_top_level_list(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        build_config(SFTConfig, write(tmp_path, "- train\n- lr\n"))


def test_yaml_top_level_scalar(tmp_path):
    with pytest.raises(ConfigError):
        build_config(SFTConfig, write(tmp_path, "just a string\n"))


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, missing)
    assert "nope.yaml" in str(ei.value)


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "train:\n  lr: [1, 2\n  batch_size: 3\n")
    with pytest.raises(ConfigError) as ei:
        build_config(SFTConfig, path)
    assert "invalid YAML" in str(ei.value)


@pytest.mark.parametrize("value", ["inf", ".inf", "1e400"])
def test_int_key_infinite_value_raises_config_error(value):
    with pytest.raises(ConfigError, match=r"'train\.batch_size'"):
        build_config(SFTConfig, None, [("train.batch_size", value)])


def test_large_int_is_exact():
    cfg = build_config(SFTConfig, None, [("train.seed", "9007199254740993")])
    assert cfg.train.seed == 9007199254740993


# --------------------------------------------------------------------------- describe


def test_describe_lists_every_leaf_with_docs():
    entries = describe(SFTConfig)
    assert all(len(e) == 3 for e in entries)
    by_key = {k: (d, doc) for k, d, doc in entries}
    assert "train.lr" in by_key
    default, doc = by_key["train.lr"]
    assert isinstance(float(default), float)
    assert isinstance(doc, str) and doc.strip()
    assert "learning rate" in doc.lower()
    for key in ("model.name", "model.lora.r", "data.rows", "train.batch_size", "train.resume"):
        assert key in by_key
    # nested dataclasses are flattened, not listed themselves
    assert "model.lora" not in by_key and "train" not in by_key
    # docstrings are collapsed to one line
    assert all("\n" not in doc for _, _, doc in entries)

    def leaves(cls, prefix=""):
        out = []
        for f in dataclasses.fields(cls):
            v = getattr(cls(), f.name)
            out += leaves(type(v), prefix + f.name + ".") if dataclasses.is_dataclass(v) \
                else [prefix + f.name]
        return out

    assert sorted(by_key) == sorted(leaves(SFTConfig))
    assert len(by_key) == len(entries)  # no duplicates


def test_describe_reports_recipe_defaults():
    by_key = {k: d for k, d, _ in describe(SFTConfig)}
    assert float(by_key["train.lr"]) == 2e-5
    assert by_key["train.output_dir"] == repr("runs/sft")


# --------------------------------------------------------------------------- CLI


def test_cli_unknown_key_exit_code_and_one_line(capsys):
    from rlhfkit.cli import main

    code = main(["sft", "--train.lrr", "1"])
    assert code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "unknown config key 'train.lrr'" in lines[0]
    assert "'lr'" in lines[0]
    assert "Traceback" not in err


def test_cli_wrong_type_exit_code(capsys):
    from rlhfkit.cli import main

    assert main(["sft", "--train.batch_size=abc"]) == 2
    err = capsys.readouterr().err
    assert "'train.batch_size'" in err and len(err.strip().splitlines()) == 1


def test_cli_missing_config_file(capsys, tmp_path):
    from rlhfkit.cli import main

    assert main(["sft", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_cli_stray_positional_argument(capsys):
    from rlhfkit.cli import main

    assert main(["sft", "oops"]) == 2
    assert "unexpected argument 'oops'" in capsys.readouterr().err


def test_cli_sft_help(capsys):
    from rlhfkit.cli import main

    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--train.lr" in out
    assert "--model.lora.r" in out


def test_cli_no_args_prints_help(capsys):
    from rlhfkit.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "sft" in out and "rm" in out


# The shipped recipes (rlhfkit/configs) are tested in tests/test_shipped_configs.py.

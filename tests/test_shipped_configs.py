"""The recipes shipped inside the package: each builds with its offline override, `rlhfkit configs`
lists / shows them, ``--config NAME`` finds them, the wheel carries them, hub dataset specs."""

import fnmatch
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys
import types
import zipfile

import pytest

from conftest import SHARED_DATA
from rlhfkit.config import build_config
from rlhfkit.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_CONFIGS = os.path.join(REPO, "src", "rlhfkit", "configs")


def _recipe_files():
    return sorted(glob.glob(os.path.join(PKG_CONFIGS, "*.yaml")))


def _header(path):
    with open(path, encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.startswith("#")]


def _command(path):
    name = os.path.basename(path)[:-5]
    for line in _header(path):
        m = re.search(r"rlhfkit ([\w-]+) +--config " + re.escape(name) + r"\b", line)
        if m:
            return m.group(1)
    raise AssertionError(f"{path}: no 'rlhfkit COMMAND --config {name}' line in its header")


def _offline(path):
    """The ``# offline: --key value ...`` overrides, with ../shared/data made absolute."""
    for line in _header(path)[:4]:
        if line.startswith("# offline:"):
            toks = shlex.split(line[len("# offline:"):])
            pairs = [(toks[i][2:], toks[i + 1].replace("../shared/data", str(SHARED_DATA)))
                     for i in range(0, len(toks), 2)]
            assert all(t.startswith("--") for t in toks[::2]), line
            return pairs
    return []


def _cls(command):
    from rlhfkit.cli import COMMANDS

    mod, cls_name, _ = COMMANDS[command]
    return getattr(importlib.import_module(mod), cls_name)


def test_configs_live_in_the_package_only():
    assert not os.path.exists(os.path.join(REPO, "configs")), "configs/ belongs under src/rlhfkit/configs"
    assert len(_recipe_files()) >= 10
    assert sorted(os.listdir(os.path.join(PKG_CONFIGS, "accelerate"))) == [
        "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml", "gpu_ddp.yaml"]


@pytest.mark.parametrize("path", _recipe_files(), ids=os.path.basename)
def test_every_shipped_config_builds_with_its_offline_override(path):
    """Each recipe parses into its command's typed config (no unknown keys, valid values); one that
    reads a hub dataset names its local copy in the first lines, and that copy exists."""
    from rlhfkit.data.loading import looks_like_hub_name

    cls = _cls(_command(path))
    plain = build_config(cls, path, [])
    hub = [k for k in ("path", "eval_path") if getattr(plain.data, k, "") and
           looks_like_hub_name(getattr(plain.data, k))]
    overrides = _offline(path)
    assert {k for k, _ in overrides} >= {f"data.{k}" for k in hub}, f"{path}: hub data without an offline line"
    for _, value in overrides:
        assert os.path.isfile(value), value
    cfg = build_config(cls, path, overrides)
    assert cfg.train.output_dir.startswith("runs/")
    for key, value in overrides:
        assert getattr(cfg.data, key.split(".")[1]) == value
        assert not looks_like_hub_name(value)


def test_shipped_hub_datasets_are_the_local_copies():
    """The hub specs name the dataset and split the local copies come from."""
    from rlhfkit.data.loading import parse_hub_spec

    gsm = build_config(_cls("sft"), os.path.join(PKG_CONFIGS, "sft_gsm8k.yaml"), [])
    assert parse_hub_spec(gsm.data.path, gsm.data.split) == ("openai/gsm8k", {"split": "train", "name": "main"})
    assert parse_hub_spec(gsm.data.eval_path, gsm.data.split) == ("openai/gsm8k", {"split": "test", "name": "main"})
    for name in ("rm_hh", "dpo_hh", "kto_hh", "dro_hh", "simpo_hh"):
        cfg = build_config(_cls(_command(os.path.join(PKG_CONFIGS, name + ".yaml"))),
                           os.path.join(PKG_CONFIGS, name + ".yaml"), [])
        assert parse_hub_spec(cfg.data.path, cfg.data.split) == (
            "Anthropic/hh-rlhf", {"split": "test", "data_dir": "harmless-base"}), name
        assert (cfg.data.rows, cfg.data.eval_rows) == ("0:2000", "2000:2312")


def test_simpo_config_is_the_measured_run():
    from rlhfkit.train import dpo

    cfg = build_config(dpo.DPOConfig, os.path.join(PKG_CONFIGS, "simpo_hh.yaml"), [])
    assert (cfg.loss_type, cfg.beta, cfg.gamma, cfg.model.freeze_layers) == ("simpo", 2.5, 1.25, 0)
    assert (cfg.train.lr, cfg.train.max_steps) == (2e-4, 90)


def test_configs_list_names_every_file_with_its_first_line(capsys):
    from rlhfkit.cli import main

    assert main(["configs", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in out}
    files = {os.path.relpath(p, PKG_CONFIGS)[:-5]: p for p in
             glob.glob(os.path.join(PKG_CONFIGS, "*.yaml")) + glob.glob(os.path.join(PKG_CONFIGS, "*", "*.yaml"))}
    assert set(listed) == set(files)
    for name, path in files.items():
        with open(path) as f:
            first = f.readline()
        assert first.startswith("# ") and listed[name] == first[2:].strip(), name


def test_configs_show_and_path(capsys):
    from rlhfkit.cli import main

    assert main(["configs", "show", "sft_gsm8k"]) == 0
    with open(os.path.join(PKG_CONFIGS, "sft_gsm8k.yaml")) as f:
        assert capsys.readouterr().out == f.read()
    assert main(["configs", "path", "accelerate/fsdp"]) == 0
    assert os.path.samefile(capsys.readouterr().out.strip(), os.path.join(PKG_CONFIGS, "accelerate", "fsdp.yaml"))
    assert main(["configs", "show", "sft_gsmk"]) == 2
    err = capsys.readouterr().err
    assert "no shipped config named 'sft_gsmk'" in err and "did you mean 'sft_gsm8k'" in err
    assert len(err.strip().splitlines()) == 1


def test_config_name_resolution(tmp_path, monkeypatch):
    from rlhfkit.shipped import resolve_config

    monkeypatch.chdir(tmp_path)
    assert os.path.samefile(resolve_config("sft_gsm8k"), os.path.join(PKG_CONFIGS, "sft_gsm8k.yaml"))
    assert os.path.samefile(resolve_config("sft_gsm8k.yaml"), os.path.join(PKG_CONFIGS, "sft_gsm8k.yaml"))
    (tmp_path / "sft_gsm8k").write_text("train: {lr: 1.0e-3}\n")  # a real file wins
    assert resolve_config("sft_gsm8k") == "sft_gsm8k"
    assert resolve_config("sub/missing.yaml") == "sub/missing.yaml"  # a path: the loader reports it
    with pytest.raises(ConfigError, match="config file not found: nosuch, and no shipped config named 'nosuch'"):
        resolve_config("nosuch")


def test_cli_runs_a_shipped_config_by_name(tmp_path, monkeypatch):
    from rlhfkit.cli import main
    from rlhfkit.train import sft

    seen = {}
    monkeypatch.setattr(sft, "run", lambda cfg: seen.update(cfg=cfg))
    monkeypatch.chdir(tmp_path)
    local = str(SHARED_DATA / "gsm8k" / "train.jsonl")
    assert main(["sft", "--config", "sft_gsm8k", "--data.path", local]) == 0
    cfg = seen["cfg"]
    assert (cfg.data.path, cfg.data.rows, cfg.data.columns) == (local, "0:512", "question:prompt,answer:completion")
    assert cfg.train.output_dir == "runs/sft_gsm8k"
    (tmp_path / "sft_gsm8k").write_text("data: {path: mine.jsonl}\n")
    assert main(["sft", "--config", "sft_gsm8k"]) == 0
    assert seen["cfg"].data.path == "mine.jsonl"


def test_package_data_covers_every_shipped_file():
    """pyproject's package-data globs match every file under rlhfkit/configs (so the wheel has them)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["rlhfkit"]
    pkg = os.path.join(REPO, "src", "rlhfkit")
    for root, _, names in os.walk(PKG_CONFIGS):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), pkg).replace(os.sep, "/")
            assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel


def test_installed_package_has_the_configs():
    from importlib import resources

    root = resources.files("rlhfkit") / "configs"
    assert (root / "sft_gsm8k.yaml").is_file() and (root / "accelerate" / "fsdp.yaml").is_file()


@pytest.mark.slow
def test_wheel_contains_the_configs(tmp_path):
    import shutil

    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(os.path.join(REPO, "src"), src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for n in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, n), src / n)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                        "-w", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip()[-200:]}")
    (whl,) = glob.glob(str(tmp_path / "*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    for p in glob.glob(os.path.join(PKG_CONFIGS, "**", "*.yaml"), recursive=True):
        assert "rlhfkit/configs/" + os.path.relpath(p, PKG_CONFIGS).replace(os.sep, "/") in names


# ---------------------------------------------------------------------------- hub dataset specs

def test_hub_spec_options():
    from rlhfkit.data.loading import looks_like_hub_name, parse_hub_spec

    assert parse_hub_spec("openai/gsm8k", "train") == ("openai/gsm8k", {"split": "train"})
    assert parse_hub_spec("Anthropic/hh-rlhf?data_dir=harmless-base&split=test&revision=abc", "train") == (
        "Anthropic/hh-rlhf", {"split": "test", "data_dir": "harmless-base", "revision": "abc"})
    assert looks_like_hub_name("openai/gsm8k?name=main") and not looks_like_hub_name("data/x.jsonl?name=a")
    with pytest.raises(DataError, match="'subset=main' is not one of name=..."):
        parse_hub_spec("openai/gsm8k?subset=main", "train")


def test_hub_dataset_goes_to_load_dataset_with_its_options(monkeypatch):
    from rlhfkit.data import loading

    calls = []

    class FakeDS:
        def to_list(self):
            return [{"question": "q", "answer": "a"}] * 3

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda repo, **kw: calls.append((repo, kw)) or FakeDS()
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: True)
    raw = loading.load_rows("openai/gsm8k?name=main&split=test", rows="1:3")
    assert calls == [("openai/gsm8k", {"split": "test", "name": "main"})]
    assert raw.index == [1, 2]


def test_hub_dataset_offline_is_one_line_naming_the_local_override(monkeypatch):
    from rlhfkit.data import loading

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError) as e:
        loading.load_rows("openai/gsm8k?name=main")
    msg = str(e.value)
    assert "cannot reach the Hugging Face hub" in msg and "--data.path" in msg and "\n" not in msg

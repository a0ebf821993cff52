"""DRO end to end on a tiny model: the closed-form first step, the loss going down on a toy set,
real-valued rewards, both value models, a CLI run writing final/, and config errors."""

import json
import math
import os

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.config import DataConfig, ModelConfig, TrainConfig, build_config
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.tasks.arithmetic import make_problems, preference_rows
from rlhfkit.train import dro


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dro")
    probs = make_problems(24, seed=5)
    pairs = preference_rows(probs[:16], seed=0)
    # real-valued scores: one row per completion, some with a label too, some with only a reward
    scored = []
    for i, p in enumerate(pairs[:6]):
        scored.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True, "reward": 0.5 + i})
        scored.append({"prompt": p["prompt"], "completion": p["rejected"], "reward": -1.25 * i})
    return {"train": write_jsonl(d / "p.jsonl", pairs),
            "eval": write_jsonl(d / "e.jsonl", preference_rows(probs[16:], seed=1)),
            "scored": write_jsonl(d / "s.jsonl", scored), "scored_rows": scored}


def cfg_for(tiny_dir, path, out, eval_path="", **kw):
    train = dict(output_dir=str(out), batch_size=4, lr=5e-4, progress=False, tensorboard=False,
                 warmup_ratio=0.0, lr_scheduler="constant", max_steps=2)
    train.update(kw.pop("train", {}))
    return dro.DROConfig(model=ModelConfig(name=tiny_dir),
                         data=DataConfig(path=path, eval_path=eval_path, max_length=96),
                         train=TrainConfig(**train), **kw)


def test_first_step_closed_form_with_reference_head(tiny_dir, data, tmp_path):
    # policy == reference (h = 0) and V starts at 0: the loss is ½·mean(r²); 32 thumbs rows
    # (16 pairs split), half up (r = 2) and half down (r = -1): ½·(4 + 1)/2 = 1.25
    c = cfg_for(tiny_dir, data["train"], tmp_path, value_model="reference_head", thumbs_up=2.0,
                thumbs_down=-1.0, train={"batch_size": 32})
    logs = []
    t = dro.build(c, log=logs.append)
    assert any("32 rows, reward mean 0.5 std 1.5" in m for m in logs)
    first = t._train_step(0)
    assert first["train/loss"] == pytest.approx(1.25, abs=1e-6)
    assert first["train/value"] == 0.0 and first["train/logratio"] == pytest.approx(0.0, abs=1e-6)
    assert first["train/reward"] == pytest.approx(0.5)
    # the features are the reference's, fixed: one H-vector per example
    ex = t.recipe.examples[0]
    assert ex.extra["value_features"].shape == (64,)


def test_separate_value_model_reads_the_last_prompt_token(tiny_dir, data, tmp_path):
    c = cfg_for(tiny_dir, data["train"], tmp_path, train={"batch_size": 32})
    t = dro.build(c, log=quiet)
    value = t.recipe.model.critic
    policy = t.recipe.model.policy
    # initialised from the policy: same backbone weights, a separate copy
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(value.state_dict()[k], policy.state_dict()[k])
    assert value.state_dict()[k].data_ptr() != policy.state_dict()[k].data_ptr()
    b = t.recipe.collate(t.recipe.examples[:3])
    with torch.no_grad():
        v = dro.prompt_values(value, b, "separate")
        for s, e in enumerate(b.seq_example.tolist()):  # V of the prompt alone, without the completion
            ex = b.examples[e]
            out = value(input_ids=torch.tensor([ex.prompt]))     # pooled at the last token: (1, 1)
            assert float(v[s]) == pytest.approx(float(out.logits[0, 0]), abs=1e-5)
    # h = 0 at the first step: the loss is the untrained head's error ½·mean((r - V)²)
    first = t._train_step(0)
    assert math.isfinite(first["train/loss"]) and first["train/value"] != 0.0


@pytest.mark.parametrize("value_model,value_lr", [("reference_head", 1e-2), ("separate", 0.0)])
def test_loss_decreases_on_a_toy_set(tiny_dir, data, tmp_path, value_model, value_lr):
    c = cfg_for(tiny_dir, data["train"], tmp_path, value_model=value_model, value_lr=value_lr, tau=0.5,
                train={"batch_size": 32, "max_steps": 12, "lr": 1e-3})
    t = dro.build(c, log=quiet)
    before = {n: p.detach().clone() for n, p in t.recipe.model.critic.named_parameters()}
    losses = [t._train_step(s)["train/loss"] for s in range(12)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    # the value parameters are trained (they are in the optimizer, with their own group)
    assert any(not torch.equal(before[n], p) for n, p in t.recipe.model.critic.named_parameters())
    assert len(t.optimizer.param_groups) == 2
    assert t.optimizer.param_groups[1]["lr"] == pytest.approx(value_lr or 1e-3)


def test_real_valued_rewards(tiny_dir, data, tmp_path):
    t = dro.build(cfg_for(tiny_dir, data["scored"], tmp_path, value_model="reference_head"), log=quiet)
    got = sorted(ex.extra["dro_reward"] for ex in t.recipe.examples)
    assert got == sorted(r["reward"] for r in data["scored_rows"])
    # reward_source: label maps the labelled rows, and names the first row without a label
    with pytest.raises(DataError) as e:
        dro.build(cfg_for(tiny_dir, data["scored"], tmp_path / "b", value_model="reference_head",
                          reward_source="label"), log=quiet)
    assert "row 1" in str(e.value) and "label" in str(e.value)
    # pairs carry no reward column
    with pytest.raises(DataError, match="no numeric 'reward'"):
        dro.build(cfg_for(tiny_dir, data["train"], tmp_path / "c", reward_source="reward"), log=quiet)


def test_kto_refuses_reward_only_rows(tiny_dir, data, tmp_path):
    from rlhfkit.train import kto

    c = kto.KTOConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=data["scored"], max_length=96),
                      train=TrainConfig(output_dir=str(tmp_path), progress=False, tensorboard=False))
    with pytest.raises(DataError) as e:
        kto.build(c, log=quiet)
    assert "row 1" in str(e.value) and "rlhfkit dro" in str(e.value)


def test_bad_reward_value_names_row_and_field(tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "1+1?", "completion": " 2", "label": True, "reward": 1.0},
        {"prompt": "2+2?", "completion": " 5", "label": False, "reward": "high"}])
    with pytest.raises(DataError) as e:
        dro.build(cfg_for(tiny_dir, path, tmp_path / "o"), log=quiet)
    assert "row 1" in str(e.value) and "reward" in str(e.value) and "finite number" in str(e.value)


def test_cli_run_writes_final_and_evaluates(tiny_dir, data, tmp_path):
    from rlhfkit.cli import main

    out = tmp_path / "run"
    rc = main(["dro", "--model.name", tiny_dir, "--data.path", data["train"], "--data.eval_path", data["eval"],
               "--data.max_length", "96", "--train.output_dir", str(out), "--train.max_steps", "3",
               "--train.batch_size", "4", "--train.eval_steps", "3", "--train.progress", "false",
               "--train.tensorboard", "false", "--tau", "0.5"])
    assert rc == 0
    assert os.path.isfile(out / "final" / "config.json")
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [r["step"] for r in recs if "train/loss" in r] == [1, 2, 3]
    ev = [r for r in recs if "eval/reward_accuracy" in r]
    assert ev and 0.0 <= ev[-1]["eval/reward_accuracy"] <= 1.0
    # final/ is the policy alone, loadable as a causal LM
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None


@pytest.mark.parametrize("key,value,text", [
    ("tau", "0", "tau must be a finite number > 0 (got 0"),
    ("tau", "-1", "tau must be a finite number > 0"),
    ("tau", "inf", "tau must be a finite number > 0"),
    ("value_model", "shared", "value_model must be one of separate, reference_head"),
    ("value_lr", "-1e-4", "value_lr must be a finite number >= 0"),
    ("reward_source", "score", "reward_source must be one of auto, label, reward"),
    ("thumbs_up", "nan", "thumbs_up must be a finite number"),
    ("thumbs_down", "1", "thumbs_up must be greater than thumbs_down"),
    ("reference", "none", "reference must be one of"),
])
def test_config_errors(key, value, text):
    with pytest.raises(ConfigError) as e:
        build_config(dro.DROConfig, None, [(key, value)])
    assert text in str(e.value)


def test_value_model_name_only_with_separate(tmp_path):
    with pytest.raises(ConfigError, match="value_model_name is only read with value_model: separate"):
        dro.build(dro.DROConfig(model=ModelConfig(name="no-such-model"),
                                data=DataConfig(path=str(tmp_path / "x.jsonl")),
                                train=TrainConfig(output_dir=str(tmp_path / "run")),
                                value_model="reference_head", value_model_name="x"), log=quiet)

"""The negatives recipe (docs/algorithms.md#negatives): best-of-n against a reward with known
values, generated.jsonl against the training pairs, the three objectives end to end on a tiny
model, NPO's closed-form first loss, resume reusing / regenerating the file, and bad input."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import HH_FILE, needs_hh, write_jsonl
from rlhfkit.config import DataConfig, ModelConfig, TrainConfig, build_config
from rlhfkit.data.tokenize import Example
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.losses.preference import PairLogps, get_preference_loss, get_preference_spec
from rlhfkit.models.loading import load_model
from rlhfkit.tasks.arithmetic import make_problems, preference_rows
from rlhfkit.train import dpo, negatives


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("neg")
    rows = preference_rows(make_problems(12, seed=3), seed=0)
    return {"pairs": write_jsonl(d / "pairs.jsonl", rows[:8]), "rows": rows,
            "eval": write_jsonl(d / "eval.jsonl", rows[8:])}


def cfg_for(tiny_dir, path, out, objective="npo", **kw):
    train = dict(output_dir=str(out), batch_size=4, lr=5e-4, progress=False, tensorboard=False,
                 warmup_ratio=0.0, lr_scheduler="constant", max_steps=2)
    train.update(kw.pop("train", {}))
    data = dict(path=path, max_length=96)
    data.update(kw.pop("data", {}))
    cfg = negatives.NegativesConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(**data),
                                    train=TrainConfig(**train), objective=objective, **kw)
    if objective != "npo":
        cfg.generator.max_new_tokens = 8
    return cfg


def rows_of(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- best of n


def test_best_of_by_hand():
    assert negatives.best_of([1.0, 3.0, 2.0, 5.0, 5.0, 0.0, -1.0, -2.0, -0.5], 3) == [1, 0, 2]
    assert negatives.best_of([0.3, 0.1], 1) == [0, 0]
    assert negatives.best_of([], 4) == []


def test_best_of_n_keeps_the_highest_reward(tiny_dir, data, tmp_path, length_reward, monkeypatch):
    """Reward = response length in characters: the kept response of each prompt is its longest
    candidate, and its recorded reward is that length."""
    seen = {}
    real = negatives.rollout

    def spy(*a, **kw):
        seen["traj"] = real(*a, **kw)
        return seen["traj"]

    monkeypatch.setattr(negatives, "rollout", spy)
    cfg = cfg_for(tiny_dir, data["pairs"], tmp_path, "dpo", rewards=[length_reward])
    cfg.generator.num_candidates = 3
    negatives.validate_all(cfg)
    model, tok = load_model(cfg.model)
    negs = negatives.tokenize_negatives(negatives.load_negatives(cfg.data.path, "", cfg.data), tok, cfg.data, "t")
    gen = negatives.generate(cfg, model, tok, negs, log=quiet)
    texts = seen["traj"].texts
    assert len(texts) == 3 * len(negs) == 3 * len(gen)
    firsts = 0
    for p, g in enumerate(gen):
        cands = texts[3 * p:3 * p + 3]
        best = max(range(3), key=lambda k: (len(cands[k]), -k))
        assert g["chosen"] == cands[best]
        assert g["chosen_reward"] == float(len(cands[best]))
        assert g["chosen_ids"] == seen["traj"].completion_ids[3 * p + best]
        firsts += best == 0
    assert firsts < len(gen)  # the first sample is not always the best: the choice is exercised


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("objective", ["npo", "dpo", "kto"])
def test_objectives_train_two_steps_and_write_final(tiny_dir, data, tmp_path, objective):
    logs = []
    res = negatives.run(cfg_for(tiny_dir, data["pairs"], tmp_path, objective), log=logs.append)
    assert res is not None
    assert (tmp_path / "final" / "config.json").is_file()
    losses = [r["train/loss"] for r in rows_of(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert (tmp_path / "generated.jsonl").exists() == (objective != "npo")


def test_generated_rows_match_training_pairs(tiny_dir, data, tmp_path, tok):
    cfg = cfg_for(tiny_dir, data["pairs"], tmp_path, "dpo")
    trainer = negatives.build(cfg, log=quiet)
    pairs = trainer.recipe.examples
    rows = rows_of(tmp_path / "generated.jsonl")
    assert len(rows) == len(pairs) > 0
    src = {i: r for i, r in enumerate(data["rows"][:8])}
    for r, p in zip(rows, pairs):
        assert r["row"] == p.row
        want = src[r["row"]]
        assert r["prompt"] == want["prompt"]  # conversational rows: the rejected text as an assistant turn
        assert r["rejected"] == [{"role": "assistant", "content": want["rejected"]}]
        assert r["chosen_ids"] == p.completions[0]
        assert tok.decode(p.completions[1]) == want["rejected"] + "<|im_end|>"  # the template's end of turn
        assert tok.decode(p.completions[0], skip_special_tokens=True) == r["chosen"]
        assert "chosen_reward" not in r and len(r["fingerprint"]) == 64


def test_kto_rows_are_generated_desirable_and_rejected_undesirable(tiny_dir, data, tmp_path):
    trainer = negatives.build(cfg_for(tiny_dir, data["pairs"], tmp_path, "kto"), log=quiet)
    rows = {r["row"]: r for r in rows_of(tmp_path / "generated.jsonl")}
    exs = trainer.recipe.examples
    assert len(exs) == 2 * len(rows)
    for ex in exs:
        assert ex.label in (True, False) and len(ex.completions) == 2  # + the mismatched one for z0
        if ex.label:
            assert ex.completions[0] == rows[ex.row]["chosen_ids"]
        else:
            assert ex.completions[0] != rows[ex.row]["chosen_ids"]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_npo_first_loss_is_closed_form(tiny_dir, data, tmp_path, beta):
    """Policy == reference: h_l = 0, so each pair's loss is −(2/β)·log σ(0) = (2/β)·log 2."""
    cfg = cfg_for(tiny_dir, data["pairs"], tmp_path, "npo", beta=beta)
    t = negatives.build(cfg, log=quiet)
    assert all(len(ex.completions) == 1 for ex in t.recipe.examples)  # no placeholder chosen
    first = t._train_step(0)
    assert first["train/loss"] == pytest.approx(2 / beta * math.log(2), rel=1e-5)
    assert first["train/npo/rejected_log_ratio"] == pytest.approx(0.0, abs=1e-4)
    assert "train/rewards/chosen" not in first
    second = t._train_step(1)
    assert second["train/npo/rejected_log_ratio"] < 0  # the rejected responses lost probability


def test_npo_with_held_out_negatives(tiny_dir, data, tmp_path):
    cfg = cfg_for(tiny_dir, data["pairs"], tmp_path, "npo", data={"eval_path": data["eval"]})
    res = negatives.run(cfg, log=quiet)
    assert res["initial"]["eval/rejected_log_ratio"] == pytest.approx(0.0, abs=1e-4)
    assert res["final"]["eval/rejected_log_ratio"] < res["initial"]["eval/rejected_log_ratio"]


# --------------------------------------------------------------------------- the npo loss alone


def _np_logsig(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("hl", [[0.0, 0.0], [1.5, -2.0], [400.0, -400.0]])
def test_npo_loss_rejected_only_values_and_gradients(hl):
    beta = 0.3
    ref = torch.tensor([-5.0, -7.0], dtype=torch.float64)
    pol = (ref + torch.tensor(hl, dtype=torch.float64)).requires_grad_(True)
    b = PairLogps(None, pol, None, ref, None, torch.tensor([3.0, 4.0]))
    loss, m = get_preference_loss("npo")(b, beta=beta)
    h = np.array(hl)
    want = -(2 / beta) * _np_logsig(-beta * h)
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(pol.grad.numpy(), 2 / (1 + np.exp(-beta * h)), rtol=1e-12, atol=1e-12)
    assert m["npo/rejected_log_ratio"] == pytest.approx(h.mean())
    assert "rewards/chosen" not in m


def test_npo_loss_empty_batch_and_spec():
    e = torch.zeros(0)
    loss, m = get_preference_loss("npo")(PairLogps(None, e, None, e, None, e), beta=0.1)
    assert loss.shape == (0,) and m["npo/rejected_log_ratio"] == 0.0
    assert get_preference_spec("npo").reads_chosen is False
    assert get_preference_spec("sigmoid").reads_chosen is True


def test_dpo_refuses_rejected_only_examples_for_a_loss_reading_chosen(tiny_dir, tmp_path):
    model, tok = load_model(tiny_dir)
    exs = [Example(0, [1, 2], [[3, 4]]), Example(1, [1, 5], [[6]])]
    cfg = dpo.DPOConfig(model=ModelConfig(name=tiny_dir), train=TrainConfig(output_dir=str(tmp_path)),
                        loss_type="sigmoid")
    with pytest.raises(ConfigError, match="reads the chosen one"):
        dpo.build(cfg, log=quiet, model=model, tokenizer=tok, examples=(exs, []))
    cfg = dpo.DPOConfig(model=ModelConfig(name=tiny_dir), train=TrainConfig(output_dir=str(tmp_path)),
                        loss_type="npo", rpo_alpha=0.5)
    with pytest.raises(ConfigError, match="rpo_alpha needs the chosen"):
        dpo.build(cfg, log=quiet, model=model, tokenizer=tok, examples=(exs, []))


# --------------------------------------------------------------------------- resume


def test_resume_reuses_the_file_and_regenerates_on_change(tiny_dir, data, tmp_path, monkeypatch):
    train = {"save_steps": 1, "save_optimizer": True}
    negatives.run(cfg_for(tiny_dir, data["pairs"], tmp_path, "dpo", train=dict(train)), log=quiet)
    before = rows_of(tmp_path / "generated.jsonl")

    def no_generation(*a, **kw):
        raise AssertionError("generated again although the file fits")

    real = negatives.generate
    monkeypatch.setattr(negatives, "generate", no_generation)
    logs = []
    cfg = cfg_for(tiny_dir, data["pairs"], tmp_path, "dpo",
                  train=dict(train, max_steps=3, resume=True, resume_allow="max_steps"))
    negatives.run(cfg, log=logs.append)
    assert any("reusing the" in m for m in logs)
    assert rows_of(tmp_path / "generated.jsonl") == before
    assert any("resumed from" in m for m in logs)

    monkeypatch.setattr(negatives, "generate", real)
    logs = []
    cfg = cfg_for(tiny_dir, data["pairs"], tmp_path, "dpo",
                  train=dict(train, max_steps=3, resume=True, resume_allow="data_examples"))
    cfg.generator.max_new_tokens = 4
    negatives.run(cfg, log=logs.append)
    assert any("written for another config or data; generating again" in m for m in logs)
    after = rows_of(tmp_path / "generated.jsonl")
    assert after[0]["fingerprint"] != before[0]["fingerprint"]
    assert all(len(r["chosen_ids"]) <= 4 for r in after)


def test_fresh_run_into_a_finished_run_fails_before_generating(tiny_dir, data, tmp_path, monkeypatch):
    negatives.run(cfg_for(tiny_dir, data["pairs"], tmp_path, "npo"), log=quiet)
    monkeypatch.setattr(negatives, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(Exception, match="already holds a run"):
        negatives.run(cfg_for(tiny_dir, data["pairs"], tmp_path, "dpo"), log=quiet)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("key,value,message", [
    ("objective", "ipo", "objective must be one of npo, dpo, kto"),
    ("beta", "0", "beta must be a finite number > 0"),
    ("generator.num_candidates", "0", "generator.num_candidates must be a finite number >= 1"),
    ("generator.max_new_tokens", "0", "generator.max_new_tokens must be"),
    ("generator.top_p", "1.5", "generator.top_p must be"),
    ("generator.backend", "gpu", "generator.backend must be one of"),
    ("reference", "none", "reference must be one of"),
    ("desirable_weight", "-1", "desirable_weight must be a finite number >= 0"),
])
def test_bad_config_values(key, value, message):
    overrides = [("objective", "kto"), (key, value)] if key != "objective" else [(key, value)]
    with pytest.raises(ConfigError, match=message):
        build_config(negatives.NegativesConfig, None, overrides)


def test_settings_an_objective_would_ignore():
    with pytest.raises(ConfigError, match="objective npo generates nothing, so generator"):
        build_config(negatives.NegativesConfig, None, [("generator.num_candidates", "4")])
    with pytest.raises(ConfigError, match="objective npo generates nothing, so rewards"):
        build_config(negatives.NegativesConfig, None, [("rewards", "gsm8k")])
    with pytest.raises(ConfigError, match="undesirable_weight weighs the rows of objective kto"):
        build_config(negatives.NegativesConfig, None, [("objective", "dpo"), ("undesirable_weight", "2")])
    with pytest.raises(ConfigError, match="identical candidates"):
        build_config(negatives.NegativesConfig, None, [("objective", "dpo"), ("generator.temperature", "0"),
                                                        ("generator.num_candidates", "2")])
    with pytest.raises(ConfigError, match="objective npo only"):
        build_config(negatives.NegativesConfig, None, [("objective", "dpo"), ("data.eval_rows", "0:4")])


def test_data_without_an_undesired_response(tmp_path):
    cfg = DataConfig()
    p = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match=r"sft.jsonl, row 0, field 'rejected': needs an undesired response"):
        negatives.load_negatives(p, "", cfg)
    p = write_jsonl(tmp_path / "up.jsonl", [{"prompt": "a", "completion": "b", "label": True}] * 2)
    with pytest.raises(DataError, match=r"up.jsonl, field 'label': no row holds an undesired response"):
        negatives.load_negatives(p, "", cfg)
    p = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "rejected": "b"}, {"prompt": "a", "rejected": "  "}])
    with pytest.raises(DataError, match=r"bad.jsonl, row 1, field 'rejected': empty completion"):
        negatives.load_negatives(p, "", cfg)
    p = write_jsonl(tmp_path / "noprompt.jsonl", [{"rejected": "b", "other": 1}])
    with pytest.raises(DataError, match=r"row 0, field 'prompt': no prompt"):
        negatives.load_negatives(p, "", cfg)


def test_unpaired_rows_keep_label_false_only_and_pairs_ignore_chosen(tmp_path):
    rows = [{"prompt": "p0", "completion": "good", "label": True},
            {"prompt": "p1", "completion": "bad", "label": False},
            {"prompt": "p2", "completion": "worse", "label": 0}]
    got = negatives.load_negatives(write_jsonl(tmp_path / "u.jsonl", rows), "", DataConfig())
    assert [(r["row"], r["prompt"], r["completion"]) for r in got] == [(1, "p1", "bad"), (2, "p2", "worse")]
    # a pair whose chosen equals the rejected response is still a usable negative (chosen unused)
    got = negatives.load_negatives(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "x"},
                                                                       {"prompt": "r", "rejected": "y"}]), "", DataConfig())
    assert [(r["prompt"], r["completion"], r["label"]) for r in got] == [("q", "x", False), ("r", "y", False)]


@needs_hh
def test_hh_rows_give_the_last_rejected_assistant_turn():
    import gzip

    with gzip.open(HH_FILE, "rt") as f:
        raw = [json.loads(next(f)) for _ in range(5)]
    got = negatives.load_negatives(HH_FILE, "0:5", DataConfig())
    assert len(got) == 5
    for rec, r in zip(got, raw):
        head, _, last = r["rejected"].rpartition("\n\nAssistant:")
        assert rec["completion"] == [{"role": "assistant", "content": last.strip()}]
        assert rec["prompt"][-1]["role"] == "user" and rec["prompt"][-1]["content"] in head


def test_another_generator_model_renders_its_text_for_the_policy(tiny_dir, data, tmp_path, tok):
    """generator.name: the generator's text, rendered as the policy's tokenizer renders an
    assistant turn, is the chosen response."""
    cfg = cfg_for(tiny_dir, data["pairs"], tmp_path, "dpo")
    cfg.generator.name = tiny_dir
    logs = []
    trainer = negatives.build(cfg, log=logs.append)
    rows = rows_of(tmp_path / "generated.jsonl")
    assert rows and len(rows) == len(trainer.recipe.examples)
    for r, p in zip(rows, trainer.recipe.examples):
        assert p.completions[0] == r["chosen_ids"]
        assert tok.decode(r["chosen_ids"]) == r["chosen"] + "<|im_end|>"


def test_cli_bad_data_is_one_line(capsys, tmp_path):
    from rlhfkit.cli import main

    p = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])
    assert main(["negatives", "--data.path", p, "--train.output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlhfkit negatives: error: ") and "sft.jsonl, row 0, field 'rejected'" in err
    assert "\n" not in err

"""DPO family and KTO end to end on a tiny model: every loss type runs, reference modes agree,
and at step 0 (policy == reference) losses take their closed-form values."""

import math
import os

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.tasks.arithmetic import make_problems, preference_rows
from rlhfkit.train import dpo, kto


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    probs = make_problems(24, seed=5)
    return {"train": write_jsonl(d / "p.jsonl", preference_rows(probs[:16], seed=0)),
            "eval": write_jsonl(d / "e.jsonl", preference_rows(probs[16:], seed=1))}


def cfg_for(tiny_dir, pairs, out, loss_type="sigmoid", **kw):
    train = dict(output_dir=str(out), batch_size=4, lr=5e-4, progress=False, tensorboard=False,
                 warmup_ratio=0.0, lr_scheduler="constant", max_steps=2)
    train.update(kw.pop("train", {}))
    return dpo.DPOConfig(model=ModelConfig(name=tiny_dir),
                         data=DataConfig(path=pairs["train"], eval_path=pairs["eval"], max_length=96),
                         train=TrainConfig(**train), loss_type=loss_type, **kw)


# closed-form first-step losses when the policy equals the reference (h = 0 for every pair)
AT_START = {"sigmoid": math.log(2), "cdpo": math.log(2), "robust": math.log(2), "hinge": 1.0,
            "ipo": (1 / (2 * 0.1)) ** 2, "rdpo": None, "tdpo": math.log(2), "f_divergence": math.log(2)}


@pytest.mark.parametrize("loss_type", ["sigmoid", "cdpo", "robust", "hinge", "ipo", "rdpo", "simpo",
                                       "orpo", "tdpo", "f_divergence"])
def test_every_loss_type_trains(tiny_dir, pairs, tmp_path, loss_type):
    smooth = {"label_smoothing": 0.1} if loss_type in ("sigmoid", "cdpo", "robust") else {}
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, loss_type, **smooth), log=quiet)
    first = t._train_step(0)
    assert math.isfinite(first["train/loss"])
    if AT_START.get(loss_type) is not None:
        assert first["train/loss"] == pytest.approx(AT_START[loss_type], abs=1e-5)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"):
        assert f"train/{k}" in first
    second = t._train_step(1)
    assert math.isfinite(second["train/loss"])


def test_reference_free_losses_load_no_reference(tiny_dir, pairs, tmp_path):
    logs = []
    dpo.build(cfg_for(tiny_dir, pairs, tmp_path, "simpo"), log=logs.append)
    assert any("reference=none" in m for m in logs)


def test_reference_modes_agree(tiny_dir, pairs, tmp_path):
    """precomputed, live copy and (with LoRA) disabled adapters give the same step-0 loss;
    after one update the live and precomputed references still agree (both frozen)."""
    losses = {}
    for mode in ("precompute", "model"):
        torch.manual_seed(0)
        t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / mode, reference=mode), log=quiet)
        losses[mode] = [t._train_step(0)["train/loss"], t._train_step(1)["train/loss"]]
    assert losses["precompute"] == pytest.approx(losses["model"], abs=1e-6)
    for mode in ("precompute", "adapters"):
        c = cfg_for(tiny_dir, pairs, tmp_path / f"lora-{mode}", reference=mode)
        c.model.lora = LoraConfig(r=4, alpha=8)
        torch.manual_seed(0)
        t = dpo.build(c, log=quiet)
        losses[f"lora-{mode}"] = [t._train_step(0)["train/loss"], t._train_step(1)["train/loss"]]
    assert losses["lora-precompute"] == pytest.approx(losses["lora-adapters"], abs=1e-6)


def test_precomputed_reference_is_cached(tiny_dir, pairs, tmp_path):
    dpo.build(cfg_for(tiny_dir, pairs, tmp_path), log=quiet)
    assert os.path.isfile(tmp_path / "ref_logps_train.pt")
    logs = []
    dpo.build(cfg_for(tiny_dir, pairs, tmp_path), log=logs.append)
    assert not any("precomputed" in m for m in logs)  # loaded from the cache


def test_precompute_covers_only_the_visited_examples(tiny_dir, pairs, tmp_path):
    """max_steps=2 x batch 4 visits 8 of the 16 pairs: exactly those get reference log-probs,
    the steps find every value they need, and a full epoch covers all pairs."""
    logs = []
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / "short"), log=logs.append)
    seen = sorted({ex.row for k in range(2) for ex in t.micro_batch(k).examples})
    have = sorted(ex.row for ex in t.recipe.examples if "ref_logps" in ex.extra)
    assert len(seen) == 8 and have == seen
    assert "reference log-probs precomputed for 8 examples" in logs
    t._train_step(0), t._train_step(1)
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / "epoch", train=dict(max_steps=0, epochs=1)), log=quiet)
    assert all("ref_logps" in ex.extra for ex in t.recipe.examples)


def test_dpo_learns_held_out_direction(tiny_dir, pairs, tmp_path):
    c = cfg_for(tiny_dir, pairs, tmp_path, train=dict(max_steps=0, epochs=6))
    c.data.eval_path = pairs["train"]  # fit the training pairs: implicit reward accuracy rises
    res = dpo.run(c, log=quiet)
    assert res["initial"]["eval/reward_accuracy"] == pytest.approx(0.5)  # all ties at the start
    assert res["final"]["eval/reward_accuracy"] > 0.8
    assert res["final"]["eval/reward_margin"] > 0


def test_plackett_luce_on_ranked_lists(tiny_dir, tmp_path):
    rows = [{"prompt": f"Q{i}:", "completions": [" a", " bb", " ccc"], "ranks": [1, 2, 3]} for i in range(8)]
    path = write_jsonl(tmp_path / "lists.jsonl", rows)
    c = cfg_for(tiny_dir, {"train": path, "eval": ""}, tmp_path / "run", "plackett_luce")
    c.data.eval_path = ""
    t = dpo.build(c, log=quiet)
    first = t._train_step(0)
    # h = 0: -sum_k log(1 / (K - k)) = log 3! = log 6 per list
    assert first["train/loss"] == pytest.approx(math.log(6), abs=1e-5)


def test_unknown_loss_type_lists_valid_names(tiny_dir, pairs, tmp_path):
    with pytest.raises(ConfigError, match="sigmoid"):
        dpo.build(cfg_for(tiny_dir, pairs, tmp_path, "nope"), log=quiet)


def test_sft_first_builds_reference_from_chosen(tiny_dir, pairs, tmp_path):
    c = cfg_for(tiny_dir, pairs, tmp_path, sft_first=True, sft_epochs=1)
    t = dpo.build(c, log=quiet)
    assert os.path.isdir(tmp_path / "sft_ref" / "checkpoints")
    # the SFT model is both the starting policy and the reference: h = 0 at step 0
    assert t._train_step(0)["train/loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_kto_from_pairs(tiny_dir, pairs, tmp_path):
    c = kto.KTOConfig(model=ModelConfig(name=tiny_dir),
                      data=DataConfig(path=pairs["train"], eval_path=pairs["eval"], max_length=96),
                      train=TrainConfig(output_dir=str(tmp_path), batch_size=4, lr=5e-4, progress=False,
                                        tensorboard=False, warmup_ratio=0.0, max_steps=2))
    logs = []
    t = kto.build(c, log=logs.append)
    assert any("16 desirable / 16 undesirable" in m for m in logs)
    first = t._train_step(0)
    # h = 0 and z0 = 0: every row costs lambda * (1 - sigmoid(0)) = 0.5
    assert first["train/loss"] == pytest.approx(0.5, abs=1e-6)
    assert "train/kl" in first
    assert math.isfinite(t._train_step(1)["train/loss"])


def test_rpo_alpha_adds_the_chosen_nll(tiny_dir, tok, pairs, tmp_path):
    import json

    from rlhfkit.data.tokenize import Renderer
    from rlhfkit.models.loading import load_model

    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, rpo_alpha=0.5, train={"batch_size": 16}), log=quiet)
    first = t._train_step(0)  # all 16 pairs in one step; policy == reference, so DPO's part is log 2
    model, r = load_model(tiny_dir)[0].eval(), Renderer(tok)
    nlls = []
    for i, line in enumerate(open(pairs["train"])):
        ex = r.example({"kind": "preference", "row": i, **json.loads(line)})
        ids, p, c = ex.prompt + ex.completions[0], len(ex.prompt), ex.completions[0]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        nlls.append(-sum(float(logp[p - 1 + j, tk]) for j, tk in enumerate(c)) / len(c))
    assert first["train/loss"] == pytest.approx(math.log(2) + 0.5 * sum(nlls) / len(nlls), rel=1e-4)
    assert first["train/rpo_nll"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-4)


@pytest.mark.parametrize("loss_type", ["orpo", "plackett_luce"])
def test_rpo_alpha_refused_where_it_does_not_apply(tiny_dir, pairs, tmp_path, loss_type):
    with pytest.raises(ConfigError, match="rpo_alpha"):
        dpo.validate(cfg_for(tiny_dir, pairs, tmp_path, loss_type, rpo_alpha=1.0))
    with pytest.raises(ConfigError, match="rpo_alpha"):
        dpo.validate(cfg_for(tiny_dir, pairs, tmp_path, rpo_alpha=-1.0))

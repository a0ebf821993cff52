"""End-to-end SFT / reward-model runs on a tiny random model with the real tokenizer."""

import json
import math
import os

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from rlhfkit.errors import TrainingError
from rlhfkit.tasks.arithmetic import make_problems, preference_rows, sft_rows
from rlhfkit.train import reward, sft


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    probs = make_problems(40, seed=0)
    return {"sft": write_jsonl(d / "sft.jsonl", sft_rows(probs[:24])),
            "sft_eval": write_jsonl(d / "sft_eval.jsonl", sft_rows(probs[24:32])),
            "pairs": write_jsonl(d / "pairs.jsonl", preference_rows(probs[:24], seed=0)),
            "pairs_eval": write_jsonl(d / "pairs_eval.jsonl", preference_rows(probs[32:], seed=1))}


def sft_cfg(tiny_dir, data, out, **train):
    t = dict(output_dir=str(out), batch_size=4, lr=1e-3, progress=False, tensorboard=False,
             warmup_ratio=0.0, lr_scheduler="constant")
    t.update(train)
    return sft.SFTConfig(model=ModelConfig(name=tiny_dir),
                         data=DataConfig(path=data["sft"], eval_path=data["sft_eval"], max_length=128),
                         train=TrainConfig(**t))


def quiet(*a):
    pass


def test_sft_learns_and_saves_pretrained(tiny_dir, data, tmp_path):
    res = sft.run(sft_cfg(tiny_dir, data, tmp_path, epochs=4), log=quiet)
    assert res["final"]["eval/nll"] < res["initial"]["eval/nll"] - 1.0
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert m.config.num_hidden_layers == 2
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    steps = [r["step"] for r in lines if "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1))


def test_grad_accumulation_matches_one_big_batch(tiny_dir, data, tmp_path):
    """bs 4 x 1 and bs 2 x 2 see the same examples; with token-mean normalisation over the
    whole step the update must be identical even though micro-batches hold different token
    counts."""
    grads = []
    for bs, acc in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        t = sft.build(sft_cfg(tiny_dir, data, tmp_path / f"{bs}", batch_size=bs, grad_accum=acc,
                              max_steps=1, max_grad_norm=0.0), log=quiet)
        seen = []
        t.optimizer.step = lambda: seen.append([p.grad.clone() for p in t.model.parameters()])
        rec = t._train_step(0)
        grads.append((rec["train/loss"], seen[0]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)  # fp32 sums in another layout
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5)


def test_packing_off_gives_the_same_loss(tiny_dir, data, tmp_path):
    losses = []
    for packing in (True, False):
        t = sft.build(sft_cfg(tiny_dir, data, tmp_path / str(packing), packing=packing, max_steps=1), log=quiet)
        losses.append(t._train_step(0)["train/loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_lora_saves_adapters_or_merged(tiny_dir, data, tmp_path):
    for merge in (False, True):
        cfg = sft_cfg(tiny_dir, data, tmp_path / str(merge), max_steps=2)
        cfg.model.lora = LoraConfig(r=4, alpha=8, merge=merge)
        sft.run(cfg, log=quiet)
        files = os.listdir(tmp_path / str(merge) / "final")
        assert ("adapter_config.json" in files) != merge
        assert ("config.json" in files) == merge


def _nan_loss(m, loss):
    return loss * float("nan")


def _nan_gradient(m, loss):  # value + 0; gradient d sqrt(u)/du at u = 0, times 0: NaN
    return loss + torch.sqrt(next(p for p in m.parameters() if p.requires_grad).sum() * 0.0)


@pytest.mark.parametrize("poison, message", [(_nan_loss, "non-finite loss .* at step 2"),
                                             (_nan_gradient, "non-finite gradient norm at step 2")])
def test_non_finite_loss_or_gradient_stops_with_step_number(tiny_dir, data, tmp_path, poison, message):
    t = sft.build(sft_cfg(tiny_dir, data, tmp_path, max_steps=3, save_steps=1), log=quiet)
    real_step, calls = t.recipe.step, []

    def poisoned(m, b):
        calls.append(1)
        out = real_step(m, b)
        if len(calls) == 2:
            out.sum = poison(m, out.sum)
        return out

    t.recipe.step = poisoned
    with pytest.raises(TrainingError, match=message):
        t.train()
    assert os.listdir(tmp_path / "checkpoints") == ["step-000001"]  # the last good one survives


def rm_cfg(tiny_dir, data, out, **train):
    t = dict(output_dir=str(out), batch_size=4, lr=2e-3, progress=False, tensorboard=False,
             warmup_ratio=0.0, lr_scheduler="constant")
    t.update(train)
    return reward.RMConfig(model=ModelConfig(name=tiny_dir),
                           data=DataConfig(path=data["pairs"], eval_path=data["pairs"], max_length=128),
                           train=TrainConfig(**t), norm_rows=8)


def test_rm_learns_train_pairs_and_scores(tiny_dir, data, tmp_path):
    res = reward.run(rm_cfg(tiny_dir, data, tmp_path, epochs=6), log=quiet)
    assert res["final"]["eval/loss"] < res["initial"]["eval/loss"]
    assert res["final"]["eval/accuracy"] > 0.7
    from rlhfkit.rewards.model import RewardModel
    rm = RewardModel.load(str(tmp_path / "final"))
    assert rm.std > 0 and rm.mean != 0.0
    p = [[{"role": "user", "content": "What is 2 + 3?"}]] * 2
    raw = rm.score(p, ["2 + 3 = 5. The answer is 5.", "2 + 3 = 9. The answer is 9."])
    norm = rm.score(p, ["2 + 3 = 5. The answer is 5.", "2 + 3 = 9. The answer is 9."], normalize=True)
    assert norm == pytest.approx([(v - rm.mean) / rm.std for v in raw])


def test_rm_reads_a_per_pair_margin_column(tiny_dir, data, tmp_path):
    """One pair per batch: loss = -log sigmoid(d - m - m_row) with d = r_w - r_l (the step's margin
    metric), m the config margin, m_row the row's margin column."""
    rows = [json.loads(x) for x in open(data["pairs"])][:4]
    with_col = write_jsonl(tmp_path / "m.jsonl", [dict(r, margin=1.5) for r in rows])
    for path, m_row in ((data["pairs"], 0.0), (with_col, 1.5)):
        cfg = rm_cfg(tiny_dir, dict(data, pairs=path), tmp_path / f"run{m_row}", batch_size=1, max_steps=1)
        cfg.margin = 0.25
        torch.manual_seed(0)
        first = reward.build(cfg, log=quiet)._train_step(0)
        d = first["train/margin"]
        assert first["train/loss"] == pytest.approx(math.log1p(math.exp(-(d - 0.25 - m_row))), rel=1e-5)


def test_rm_listwise_counts_all_pairs(tiny_dir, tmp_path, tok):
    rows = [{"prompt": "Q: pick", "completions": [" a", " b", " c"], "ranks": [1, 2, 3]},
            {"prompt": "Q: other", "completions": [" x", " y"], "scores": [0.1, 0.9]}]
    path = write_jsonl(tmp_path / "lists.jsonl", rows)
    cfg = rm_cfg(tiny_dir, {"pairs": path}, tmp_path / "run", max_steps=1)
    t = reward.build(cfg, log=quiet)
    b = t.micro_batch(0)
    assert reward.num_pairs(b) == 3 + 1
    assert b.num_sequences == 5  # one forward per response, not per pair


def test_lora_reward_model_adapters_load_for_scoring(tiny_dir, data, tmp_path):
    cfg = rm_cfg(tiny_dir, data, tmp_path, max_steps=3)
    cfg.model.lora = LoraConfig(r=4, alpha=8)
    reward.run(cfg, log=quiet)
    assert "adapter_config.json" in os.listdir(tmp_path / "final")
    from rlhfkit.rewards.model import RewardModel
    rm = RewardModel.load(str(tmp_path / "final"))  # base + adapters (incl. the trained head), merged
    stored = json.load(open(tmp_path / "final" / "rlhfkit.json"))
    assert rm.mean == pytest.approx(stored["rlhfkit_reward_mean"])
    # the merged model reproduces the stored statistics of the rows they were computed on
    cfg.train.output_dir = str(tmp_path / "again")  # the first run's dir holds a run now
    t = reward.build(cfg, log=quiet)
    mean, std = reward.reward_stats(rm.model, t.recipe.examples[:cfg.norm_rows], t.recipe.collate,
                                    cfg.train.eval_batch_size)
    assert mean == pytest.approx(stored["rlhfkit_reward_mean"], abs=1e-4)
    assert std == pytest.approx(stored["rlhfkit_reward_std"], abs=1e-4)

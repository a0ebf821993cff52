"""Online DPO on the one training loop: pair construction and the update split by hand, rounds
end to end on a tiny model, the reference of each mode checked against log 2 (the sigmoid loss of
a policy equal to its reference), the sampler following every update, and bad settings."""

import json
import math

import pytest

from conftest import trace_updates_and_syncs
from rlhfkit.config import LoraConfig, ModelConfig, TrainConfig
from rlhfkit.data.tokenize import Example
from rlhfkit.errors import ConfigError
from rlhfkit.train import online_dpo


def quiet(*a, **k):
    pass


def records(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def test_make_pairs_best_vs_worst_and_skips_ties():
    exs = [Example(0, [1], []), Example(1, [2], []), Example(2, [3], [])]
    comps = [[10], [11], [12], [20], [21], [22], [30], [], [32]]
    scores = [0.5, 1.0, 0.0,   # prompt 0: best 11, worst 12
              2.0, 2.0, 2.0,   # prompt 1: all tie -> no pair
              1.0, 0.0, 3.0]   # prompt 2: best 32, worst is the empty response -> skipped
    pairs = online_dpo.make_pairs(exs, comps, scores, 3)
    assert [(p.row, p.prompt, p.completions) for p in pairs] == [(0, [1], [[11], [12]])]


def test_update_chunks_give_each_pair_to_one_process_once():
    order = [7, 3, 9, 0, 1, 8, 2, 6, 5, 4, 10]
    # batch 2 x grad_accum 2 x 2 processes = 8 pairs per update; the 3 left cannot feed 2 x 2 micro-batches
    r0 = online_dpo.update_chunks(11, 2, 2, 2, 0, order)
    r1 = online_dpo.update_chunks(11, 2, 2, 2, 1, order)
    assert r0 == [[[7, 3], [1, 8]]] and r1 == [[[9, 0], [2, 6]]]
    # one process: every pair, the tail kept
    assert online_dpo.update_chunks(10, 4, 1, 1, 0, list(range(10))) == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9]]]
    # uneven: 5 pairs, 2 processes, 1 micro-batch each -> sizes 3 and 2
    assert online_dpo.update_chunks(5, 4, 1, 2, 0, list(range(5))) == [[[0, 1, 2]]]
    assert online_dpo.update_chunks(5, 4, 1, 2, 1, list(range(5))) == [[[3, 4]]]
    assert online_dpo.update_chunks(1, 4, 1, 2, 0, [0]) == []


def cfg_for(tiny_dir, out, reward, **kw):
    train = dict(output_dir=str(out), batch_size=4, lr=1e-3, progress=False, tensorboard=False,
                 warmup_ratio=0.0, lr_scheduler="constant", eval_steps=1)
    train.update(kw.pop("train", {}))
    args = dict(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=16, task_eval_size=4,
                rewards=[reward], rounds=2, prompts_per_round=8, eval_samples=2)
    args.update(kw)
    cfg = online_dpo.OnlineDPOConfig(train=TrainConfig(**train), **args)
    cfg.rollout.num_generations, cfg.rollout.max_new_tokens = 3, 6
    return cfg


@pytest.mark.parametrize("reference_update", ["fixed", "refresh"])
def test_rounds_are_steps_of_one_run(tiny_dir, tmp_path, length_reward, reference_update):
    cfg = cfg_for(tiny_dir, tmp_path, length_reward, reference_update=reference_update)
    logs = []
    res = online_dpo.run(cfg, log=logs.append)
    recs = records(tmp_path)
    train = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert r["rollout/prompts"] == 8 and 0 < r["rollout/pairs"] <= 8 and r["train/updates"] >= 1
        assert math.isfinite(r["train/loss"])
    evals = [r for r in recs if "eval/greedy/reward" in r]
    assert [r["step"] for r in evals] == [0, 1, 2] and all("eval/sampled/reward" in r for r in evals)
    assert res["final"]["eval/greedy/reward"] == evals[-1]["eval/greedy/reward"]
    want = "reference=model" if reference_update == "fixed" else "reference=precompute"
    assert sum(want in m for m in logs) == 1
    assert (tmp_path / "final").is_dir() and not list(tmp_path.glob("round-*"))


@pytest.mark.parametrize("lora", [0, 4])
@pytest.mark.parametrize("reference_update", ["fixed", "refresh"])
def test_reference_is_the_initial_or_the_round_start_policy(tiny_dir, tmp_path, length_reward, reference_update,
                                                           lora):
    """One update per round (every pair in one batch, one epoch): the sigmoid loss of that update is
    log 2 exactly when π_ref equals the policy at the round's start — every round with refresh, only
    the first with fixed."""
    model = ModelConfig(name=tiny_dir, lora=LoraConfig(r=lora)) if lora else ModelConfig(name=tiny_dir)
    cfg = cfg_for(tiny_dir, tmp_path, length_reward, reference_update=reference_update, model=model,
                  eval_samples=0, task_eval_size=0, train=dict(batch_size=64, epochs=1, lr=5e-3, eval_steps=0))
    online_dpo.run(cfg, log=quiet)
    train = [r for r in records(tmp_path) if "train/loss" in r]
    assert [r["train/updates"] for r in train] == [1, 1]
    assert train[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    if reference_update == "refresh":
        assert train[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert abs(train[1]["train/loss"] - math.log(2)) > 1e-4


def test_sampler_follows_every_update(tiny_dir, tmp_path, length_reward):
    cfg = cfg_for(tiny_dir, tmp_path, length_reward, eval_samples=0, train=dict(batch_size=2, epochs=2,
                                                                                  eval_steps=0))
    trainer = online_dpo.build(cfg, log=quiet)
    od = trainer.recipe.iteration.__self__
    events = trace_updates_and_syncs(trainer, od.engine, trainer.model)
    trainer.train()
    trainer.close_rewards()
    train = [r for r in records(tmp_path) if "train/loss" in r]
    updates = sum(r["train/updates"] for r in train)
    # 2 epochs over each round's pairs, 2 pairs per update
    assert [r["train/updates"] for r in train] == [2 * math.ceil(r["rollout/pairs"] / 2) for r in train]
    assert updates >= 4 and events == [("update", True), ("sync", True)] * int(updates)


def test_bad_settings_fail_before_a_model_loads(tmp_path):
    def cfg(**kw):
        c = online_dpo.OnlineDPOConfig(model=ModelConfig(name="/nonexistent/model"), task="arithmetic",
                                       train=TrainConfig(output_dir=str(tmp_path)))
        for k, v in kw.items():
            setattr(c, k, v)
        return c
    with pytest.raises(ConfigError, match="reference_update must be fixed\\|refresh"):
        online_dpo.run(cfg(reference_update="sometimes"))
    c = cfg()
    c.rollout.num_generations = 1
    with pytest.raises(ConfigError, match="num_generations >= 2"):
        online_dpo.run(c)
    with pytest.raises(ConfigError, match="rounds"):
        online_dpo.run(cfg(rounds=0))
    with pytest.raises(ConfigError, match="prompts_per_round"):
        online_dpo.run(cfg(prompts_per_round=0))
    with pytest.raises(ConfigError, match="plackett_luce ranks lists"):
        online_dpo.run(cfg(loss_type="plackett_luce"))
    with pytest.raises(ConfigError, match="unknown loss_type 'sigmiod'.*sigmoid"):
        online_dpo.run(cfg(loss_type="sigmiod"))
    c = cfg()
    c.train.max_steps = 5
    with pytest.raises(ConfigError, match="train.max_steps .* not used by online DPO"):
        online_dpo.run(c)

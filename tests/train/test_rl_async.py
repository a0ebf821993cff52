"""``rollout.async``: the next step's rollout is sampled in a worker thread from a snapshot of
the weights of before the current update (one step off-policy), deterministically, and the
configuration key spelt ``async``. The SIGKILL + resume check of an async run is in
test_resume.py. The sampled log-probs are checked against the training forward of independent
copies of the weights (the old and the new)."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit.backends import make_engine
from rlhfkit.backends.base import SamplingParams
from rlhfkit.config import build_config, describe, to_dict
from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Example
from rlhfkit.errors import ConfigError
from rlhfkit.models.forward import completion_logprobs
from rlhfkit.models.loading import tiny_model
from rlhfkit.rl.async_rollout import BackgroundRollout, decode_pending, encode_pending
from rlhfkit.rl.experience import rollout
from rlhfkit.train import rl

from test_rl_objectives import cfg_for, metrics, online, quiet

SP = SamplingParams(max_new_tokens=8, n=2)


def drift(model, tok, exs, traj) -> float:
    """Mean |training-forward log-prob − sampler log-prob| over the sampled tokens."""
    G = traj.group
    b = collate([Example(i, ex.prompt, traj.completion_ids[G * i:G * i + G]) for i, ex in enumerate(exs)],
                pad_id=tok.pad_token_id)
    with torch.no_grad():
        got = completion_logprobs(model, b).token_logps
    want = torch.tensor([lp for s in range(b.num_sequences)
                         for lp in traj.sampler_logps[G * int(b.seq_example[s]) + int(b.seq_completion[s])]])
    return float((got - want).abs().mean())


def step_in_place(model, seed=0, scale=0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def exs(tok):
    return [Example(i, tok(t)["input_ids"], []) for i, t in enumerate(("What is 2 + 3?", "Hello there", "Hi"))]


@pytest.mark.parametrize("backend", ["cpu", "hf"])
def test_the_worker_samples_the_weights_of_when_it_started(tok, exs, backend):
    policy = tiny_model(tok, seed=5).eval()
    old = copy.deepcopy(policy)
    bg = BackgroundRollout(policy, lambda snap: make_engine(backend, snap, tok))
    torch.manual_seed(3)
    bg.start(1, policy, lambda engine, gen: rollout(engine, exs, SP, generator=gen))
    step_in_place(policy)  # the optimizer changes the live weights while the worker samples
    traj = bg.take(1)
    assert bg.take(1) is None  # taken once
    assert drift(old, tok, exs, traj) < 1e-5      # the snapshot's weights ...
    assert drift(policy, tok, exs, traj) > 1e-3   # ... not the live ones


def test_the_worker_is_reproducible_and_follows_the_next_snapshot(tok, exs):
    policy = tiny_model(tok, seed=5).eval()
    bg = BackgroundRollout(policy, lambda snap: make_engine("cpu", snap, tok))
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        bg.start(1, policy, lambda engine, gen: rollout(engine, exs, SP, generator=gen))
        runs.append(bg.take(1))
    assert runs[0].completion_ids == runs[1].completion_ids and runs[0].sampler_logps == runs[1].sampler_logps
    step_in_place(policy)
    torch.manual_seed(3)
    bg.start(2, policy, lambda engine, gen: rollout(engine, exs, SP, generator=gen))  # refreshed snapshot
    assert drift(policy, tok, exs, bg.take(2)) < 1e-5


def test_a_worker_error_reaches_the_main_thread(tok, exs):
    policy = tiny_model(tok, seed=5).eval()
    bg = BackgroundRollout(policy, lambda snap: make_engine("hf", snap, tok))

    def boom(engine, gen):
        raise ValueError("reward server down")

    bg.start(1, policy, boom)
    with pytest.raises(ValueError, match="reward server down"):
        bg.take(1)


def test_async_grpo_trains_each_step_on_the_previous_weights_samples(tiny_dir, tmp_path, tok):
    cfg = cfg_for(tiny_dir, tmp_path, G=2, steps=3)
    cfg.rollout.async_ = True
    cfg.train.lr = 1e-2  # weights that move visibly in one step
    trainer = rl.build(cfg, log=quiet)
    o = online(trainer)
    assert o.correction == "tis"  # auto: the samples are one step old
    weights, trajs = [copy.deepcopy(rl.policy_of(trainer.model))], []
    sample_async, on_step_end = o.sample_async, trainer.recipe.on_step_end

    def capture(policy, exs, step):
        out = sample_async(policy, exs, step)
        trajs.append(out[0])
        return out

    def after(step, rec):
        weights.append(copy.deepcopy(rl.policy_of(trainer.model)))
        on_step_end(step, rec)

    o.sample_async, trainer.recipe.on_step_end = capture, after
    trainer.train()
    recs = [r for r in metrics(tmp_path) if "train/loss" in r]
    assert [r["rollout/async"] for r in recs] == [1.0] * 3
    assert all(r["rollout/wait_seconds"] >= 0 for r in recs)
    # step 1 samples the starting weights now; step s > 1 trains on samples of the weights before
    # step s - 1's update (weights[s - 2]) while the policy holds weights[s - 1]
    assert drift(weights[0], tok, trajs[0].examples, trajs[0]) < 1e-5
    for s in (1, 2):
        assert drift(weights[s - 1], tok, trajs[s].examples, trajs[s]) < 1e-5
        assert drift(weights[s], tok, trajs[s].examples, trajs[s]) > 1e-4
    # the logged sampler/trainer difference is that one step of staleness, and none on step 1
    assert recs[0]["rollout/sampler_logp_diff"] < 1e-5 < recs[1]["rollout/sampler_logp_diff"]
    assert o.background.pending_step == -1  # nothing started past the last step


def test_async_runs_are_reproducible(tiny_dir, tmp_path):
    losses = []
    for name in ("a", "b"):
        cfg = cfg_for(tiny_dir, tmp_path / name, G=2, steps=3)
        cfg.rollout.async_ = True
        torch.manual_seed(0)
        rl.build(cfg, log=quiet).train()
        losses.append([(r["train/loss"], r["rollout/reward"]) for r in metrics(tmp_path / name) if "train/loss" in r])
    assert losses[0] == losses[1]


def test_the_pending_rollout_round_trips_through_plain_data(tiny_dir, tmp_path):
    import json

    from rlhfkit.train.checkpoint import decode_states, encode_states

    trainer = rl.build(cfg_for(tiny_dir, tmp_path, G=2), log=quiet)
    o = online(trainer)
    torch.manual_seed(0)
    traj, res, scores, m = o.sample(trainer.recipe.examples[:2], 0)
    res.per_source["broken"] = [float("nan")] * len(res.total)
    tensors: dict = {}
    skeleton = json.loads(json.dumps(encode_states(encode_pending(4, traj, res, scores, m), tensors)))
    step, (t2, r2, s2, m2) = decode_pending(decode_states(skeleton, tensors))
    assert step == 4 and t2.completion_ids == traj.completion_ids and t2.sampler_logps == traj.sampler_logps
    assert [e.prompt for e in t2.examples] == [e.prompt for e in traj.examples] and t2.texts == traj.texts
    assert r2.total == res.total and torch.equal(s2, scores) and m2 == m
    with pytest.raises(Exception, match="pending rollout of rollout.async is malformed"):
        decode_pending({"step": 1, "examples": []})


def test_the_key_is_spelt_async(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("rollout:\n  async: true\n")
    cfg = build_config(rl.RLConfig, str(y))
    assert cfg.rollout.async_ is True and to_dict(cfg)["rollout"]["async"] is True
    assert build_config(rl.RLConfig, None, [("rollout.async", "true")]).rollout.async_ is True
    assert "rollout.async" in [k for k, _, _ in describe(rl.RLConfig)]
    with pytest.raises(ConfigError, match="rollout.async"):
        build_config(rl.RLConfig, None, [("rollout.async", "maybe")])
    with pytest.raises(ConfigError, match="unknown config key 'rollout.async_'"):
        build_config(rl.RLConfig, None, [("rollout.async_", "true")])

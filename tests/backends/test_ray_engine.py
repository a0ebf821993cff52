"""The ``ray`` rollout engine on a local Ray cluster (2 CPUs, 2 actors) and a tiny random model:
the same tokens as the in-process engine for the same seed, whatever the shard boundaries; the
same change after ``update_weights``; rewards scored in the actors (picklable sources) and on
the driver (the rest) equal to scoring on the driver alone; a 2-step GRPO run equal to the
in-process run; a dead or silent actor is a clear error within a bounded time."""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from rlhfkit.backends import make_engine  # noqa: E402
from rlhfkit.backends.base import SamplingParams  # noqa: E402
from rlhfkit.backends.ray import RayOptions, shards  # noqa: E402
from rlhfkit.data.tokenize import Example  # noqa: E402
from rlhfkit.errors import TrainingError  # noqa: E402
from rlhfkit.models.loading import tiny_model  # noqa: E402
from rlhfkit.rewards.base import CombinedReward, RewardResult, build_rewards  # noqa: E402
from rlhfkit.rl.experience import rollout, rollout_scored, score  # noqa: E402

SAMPLING = SamplingParams(max_new_tokens=8, temperature=1.0, n=2)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def lm(tok):
    return tiny_model(tok, seed=5).eval()


@pytest.fixture(scope="module")
def prompts(tok):
    texts = ("What is 2 + 3?", "Hello there, how are you doing?", "Hi", "Count: 1 2 3 4", "x")
    return [tok(t)["input_ids"] for t in texts]


@pytest.fixture
def engine(lm, tok):
    """Two actors running the cpu engine; ended after the test (the cluster has 2 CPUs)."""
    eng = make_engine("ray", lm, tok, batch_size=64, ray=RayOptions(workers=2, timeout=60))
    yield eng
    eng.close()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shards_split_contiguously_and_evenly():
    assert shards(5, 2) == [(0, 3), (3, 5)]
    assert shards(4, 2) == [(0, 2), (2, 4)]
    assert shards(1, 3) == [(0, 1)]  # empty shards left out
    assert shards(0, 2) == []


def test_same_tokens_as_the_in_process_engine(engine, lm, tok, prompts):
    local = make_engine("cpu", lm, tok)
    for seed, offset in ((1, 0), (2, 6)):
        want = local.generate(prompts, SAMPLING, generator=seeded(seed), row_offset=offset)
        got = engine.generate(prompts, SAMPLING, generator=seeded(seed), row_offset=offset)
        assert got.completion_ids == want.completion_ids  # actor 0 has prompts 0-2, actor 1 prompts 3-4
        assert got.finished == want.finished and got.texts == want.texts and got.n == 2
        for a, b in zip(got.logprobs, want.logprobs):
            assert a == pytest.approx(b, abs=1e-5)  # float summation order of other batch shapes
    other = engine.generate(prompts, SAMPLING, generator=seeded(3))
    assert other.completion_ids != want.completion_ids  # the tokens are random: the check can fail
    t = engine.pop_timings()
    assert set(t) == {"rollout/ray_gen_seconds", "rollout/ray_score_seconds", "rollout/ray_wait_seconds"}
    assert t["rollout/ray_gen_seconds"] > 0 and engine.pop_timings() == {}


def test_update_weights_changes_the_samples_like_the_in_process_engine(engine, lm, tok, prompts):
    before = engine.generate(prompts, SAMPLING, generator=seeded(7))
    moved = copy.deepcopy(lm)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=seeded(11)))
    want = make_engine("cpu", moved, tok).generate(prompts, SAMPLING, generator=seeded(7))
    assert want.completion_ids != before.completion_ids  # the new weights sample other tokens
    engine.update_weights(moved)
    got = engine.generate(prompts, SAMPLING, generator=seeded(7))
    assert got.completion_ids == want.completion_ids
    for a, b in zip(got.logprobs, want.logprobs):
        assert a == pytest.approx(b, abs=1e-5)  # float summation order of other batch shapes
    assert engine.pop_timings()["rollout/ray_broadcast_seconds"] > 0
    engine.update_weights(lm)  # back: the old samples again
    assert engine.generate(prompts, SAMPLING, generator=seeded(7)).completion_ids == before.completion_ids


class LockedLength:
    """A reward source that does not pickle (it holds a lock): scored on the driver."""

    name = "locked_length"

    def __init__(self):
        self.lock = threading.Lock()

    def score(self, prompts, completions, extras):
        return RewardResult([float(len(c)) for c in completions])


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("ray-rm")
    m = tiny_model(tok, layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, scalar_head=True, seed=3)
    m.config.rlhfkit_reward_mean, m.config.rlhfkit_reward_std = 0.5, 2.0
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_rewards_in_the_actors_and_on_the_driver_equal_driver_scoring(engine, lm, tok, prompts, rm_dir):
    rm = build_rewards([f"model:{rm_dir}"]).sources[0]
    arith = build_rewards(["arithmetic"]).sources[0]
    rewards = CombinedReward([rm, arith, LockedLength()], [1.0, 0.5, 0.01])
    there, here = engine.attach_rewards(rewards)
    assert (there, here) == (["rm", "arithmetic"], ["locked_length"])
    # rows without an answer fail in the arithmetic verifier: their row numbers must be global
    exs = [Example(i, p, [], extra={"prompt": tok.decode(p)} | ({"answer": "5"} if i % 2 else {}))
           for i, p in enumerate(prompts)]
    traj, res = rollout_scored(engine, rewards, exs, SAMPLING, generator=seeded(5))
    plain = rollout(make_engine("cpu", lm, tok), exs, SAMPLING, generator=seeded(5))
    assert traj.completion_ids == plain.completion_ids
    want = score(CombinedReward([build_rewards([f"model:{rm_dir}"]).sources[0], arith, LockedLength()],
                                [1.0, 0.5, 0.01]), plain)
    assert res.per_source["rm"] == pytest.approx(want.per_source["rm"], abs=1e-5)
    assert res.per_source["locked_length"] == want.per_source["locked_length"]
    assert [x == x for x in res.per_source["arithmetic"]] == [x == x for x in want.per_source["arithmetic"]]
    assert res.total == pytest.approx(want.total, abs=1e-5)
    # prompts 0, 2, 4 lack the answer; prompt 4 is row 2-3 of actor 1's shard, 8-9 of the batch
    assert res.errors == want.errors and "failed on rows 0-1, 4-5, 8-9:" in res.errors[0]
    assert engine.pop_timings()["rollout/ray_score_seconds"] > 0


def test_a_dead_actor_is_a_clear_error_not_a_hang(engine, prompts):
    ray.kill(engine.workers[1])
    t0 = time.monotonic()
    with pytest.raises(TrainingError, match=r"rollout.backend=ray: worker 1 of 2 died \(while asked to sample"):
        engine.generate(prompts, SAMPLING, generator=seeded(1))
    assert time.monotonic() - t0 < 30


def test_a_silent_actor_times_out(engine):
    @ray.remote(num_cpus=0)
    def sleeper():
        time.sleep(30)

    engine.options.timeout = 1.0
    t0 = time.monotonic()
    with pytest.raises(TrainingError, match=r"worker 0 of 2 did not answer within rollout.ray_timeout=1 s"):
        engine._get([sleeper.remote()], "answer")
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------- GRPO end to end
def grpo_cfg(tiny_dir, out, backend: str, rewards: list):
    from rlhfkit.config import ModelConfig, TrainConfig
    from rlhfkit.train import rl

    cfg = rl.RLConfig(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=8, task_eval_size=0,
                      advantage="grpo", rewards=rewards, kl_coef=0.05, eval_samples=0,
                      train=TrainConfig(output_dir=str(out), max_steps=2, batch_size=4, lr=1e-3,
                                        progress=False, tensorboard=False))
    cfg.rollout.num_generations = 2
    cfg.rollout.max_new_tokens = 6
    cfg.rollout.backend = backend
    cfg.rollout.ray_workers = 2
    return cfg


def records(out):
    with open(out / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "train/loss" in r]


def test_grpo_with_ray_equals_the_in_process_run(tiny_dir, tmp_path, rm_dir, length_reward):
    from rlhfkit.train import rl

    rewards = [f"model:{rm_dir}", f"{length_reward}*0.01"]  # in the actors / on the driver (a function)
    logs = []
    rl.run(grpo_cfg(tiny_dir, tmp_path / "cpu", "cpu", rewards), log=lambda *a: None)
    rl.run(grpo_cfg(tiny_dir, tmp_path / "ray", "ray", rewards), log=logs.append)
    a, b = records(tmp_path / "cpu"), records(tmp_path / "ray")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], abs=1e-6)
        assert rb["rollout/reward"] == pytest.approx(ra["rollout/reward"], abs=1e-6)
        assert rb["rollout/kl"] == pytest.approx(ra["rollout/kl"], abs=1e-6)
        for key in ("gen", "broadcast", "score", "wait"):
            assert f"rollout/ray_{key}_seconds" in rb or (key == "broadcast" and rb is b[0]), key
    assert any(abs(r["train/loss"]) > 1e-4 for r in a)  # real updates are compared
    assert b[1]["rollout/ray_broadcast_seconds"] > 0  # the weights after step 1 went to the actors
    assert any("rewards scored in the workers: rm; on the driver: length" in line for line in logs)

"""The online-RL options of the training loop end to end on a tiny random model: every
registered policy loss, GSPO's sequence objective, entropy top-q, sampler correction, dynamic
sampling, the overlong penalty, score scaling and the engine's weight sync. Values are
compared with float64 recomputations from a plain (unpacked) forward, written here from the
equations in docs/algorithms.md."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import trace_updates_and_syncs
from rlhfkit.config import ModelConfig, TrainConfig, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.losses.objectives import POLICY_LOSSES
from rlhfkit.rl.config import CorrectionConfig
from rlhfkit.train import rl

VOWEL = {"type": "verifier", "verifier": "format", "pattern": "^ "}  # varies on the random model
LOSSES = ("ppo", "seq_ppo", "gspo", "cispo", "dual_clip", "clip_cov", "kl_cov", "sppo")
LOSS_METRICS = {"seq_ppo": ("seq_clip_frac", "policy_loss_seq"), "gspo": ("seq_clip_frac", "policy_loss_seq"),
                "dual_clip": ("dual_clip_frac",), "clip_cov": ("cov_selected_frac",),
                "kl_cov": ("cov_selected_frac",), "sppo": ("sppo/log_ratio", "policy_loss_seq")}


def quiet(*a):
    pass


def cfg_for(tiny_dir, out, G=4, steps=2, rewards=None, **kw):
    cfg = rl.RLConfig(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=8, task_eval_size=0,
                      advantage="grpo", rewards=list(rewards or [VOWEL]),
                      train=TrainConfig(output_dir=str(out), max_steps=steps, batch_size=4, lr=1e-4,
                                        progress=False, tensorboard=False, eval_batch_size=4))
    cfg.rollout.num_generations = G
    cfg.rollout.max_new_tokens = 6
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def online(trainer) -> rl.OnlineRL:
    return trainer.recipe.iteration.__self__


def plan(trainer, step=0):
    """One step's experience for the first 4 prompts."""
    return online(trainer).experience(trainer.model, [trainer.recipe.examples[:4]], step)


def metrics(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def perturb(model, scale, seed=0):
    """Move the weights a little: the update's ratios to the rollout policy are no longer 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def random_advantages(rb, seed=1):
    rb.advantages = torch.randn(rb.advantages.shape, generator=torch.Generator().manual_seed(seed))
    return rb.advantages


def plain_scores(policy, b, temperature):
    """Float64 log-prob and entropy of every target of packed batch ``b`` (its order), each
    sequence scored alone by a plain forward of prompt + completion, softmax(z/T) in numpy.
    Targets with the same context (the first tokens of a prompt's G responses) get the very
    same entropy, so their ties are exact."""
    logp, ent = np.zeros(b.tgt_ids.numel()), np.zeros(b.tgt_ids.numel())
    seq = b.tgt_seq.cpu().numpy()
    seen: dict = {}
    for s in range(b.num_sequences):
        ex = b.examples[int(b.seq_example[s])]
        prompt, comp = list(ex.prompt), list(ex.completions[int(b.seq_completion[s])])
        idx = np.nonzero(seq == s)[0]
        assert len(idx) == len(comp) and b.tgt_ids[idx].tolist() == comp  # targets in completion order
        with torch.no_grad():
            z = policy(input_ids=torch.tensor([prompt + comp])).logits[0].double().numpy() / temperature
        rows = z[len(prompt) - 1:len(prompt) - 1 + len(comp)]
        lsm = rows - rows.max(1, keepdims=True)
        lsm = lsm - np.log(np.exp(lsm).sum(1, keepdims=True))
        logp[idx] = lsm[np.arange(len(comp)), comp]
        for t, i in enumerate(idx):
            ent[i] = seen.setdefault(tuple(prompt + comp[:t]), -(np.exp(lsm[t]) * lsm[t]).sum())
    return logp, ent


def grpo_aggregate(tok_loss, mask, seq, S):
    """Σ over sequences with a masked token of the sequence's masked token mean."""
    total = 0.0
    for s in range(S):
        m = mask[seq == s]
        if m.sum() > 0:
            total += (tok_loss[seq == s] * m).sum() / m.sum()
    return total


def ppo_token_loss(new, old, adv, eps_low=0.2, eps_high=0.2):
    ratio = np.exp(new - old)
    return -np.minimum(ratio * adv, np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)


def as_np(t):
    return t.detach().double().cpu().numpy()


# ------------------------------------------------------------------ 1. every policy loss
def test_the_registry_holds_the_tested_losses():
    assert set(POLICY_LOSSES) == set(LOSSES)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_policy_loss_trains_end_to_end(tiny_dir, tmp_path, loss):
    cfg = cfg_for(tiny_dir, tmp_path, policy_loss=loss, num_iterations=2)
    rl.run(cfg, log=quiet)
    recs = [r for r in metrics(tmp_path) if "train/loss" in r]
    assert len(recs) == 2
    for r in recs:
        assert math.isfinite(r["train/loss"]) and math.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0
        assert r["train/updates"] == 2.0  # num_iterations 2 x 1 minibatch
        for k in ("policy_loss", "clip_frac", "ratio_mean", "approx_kl", "entropy") + LOSS_METRICS.get(loss, ()):
            assert math.isfinite(r[f"train/{k}"]), k
    others = {k for ks in LOSS_METRICS.values() for k in ks} - set(LOSS_METRICS.get(loss, ()))
    assert not [k for k in others if f"train/{k}" in recs[0]]  # the named loss ran, not another


@pytest.mark.parametrize("loss", [n for n, s in POLICY_LOSSES.items() if s.importance == "sequence"])
def test_sequence_losses_refuse_dapo_aggregation(tiny_dir, tmp_path, loss):
    assert loss in ("seq_ppo", "gspo", "sppo")
    with pytest.raises(ConfigError, match=f"policy loss '{loss}'.*loss_agg"):
        rl.build(cfg_for(tiny_dir, tmp_path, policy_loss=loss, loss_agg="dapo"), log=quiet)
    for agg in ("grpo", "dr_grpo"):
        rl.validate(cfg_for(tiny_dir, tmp_path, policy_loss=loss, loss_agg=agg))
    rl.validate(cfg_for(tiny_dir, tmp_path, policy_loss="ppo", loss_agg="dapo"))


# ------------------------------------------------------------------ 2. GSPO in the trainer
def test_gspo_loss_equals_a_float64_recomputation(tiny_dir, tmp_path):
    eps_low, eps_high = 2e-3, 3e-3  # objective.* reach the loss
    cfg = cfg_for(tiny_dir, tmp_path, policy_loss="gspo", reuse_logps=False)
    cfg.objective.gspo_eps_low, cfg.objective.gspo_eps_high = eps_low, eps_high
    cfg.rollout.temperature = 0.7
    trainer = rl.build(cfg, log=quiet)
    torch.manual_seed(0)
    exp = plan(trainer)
    assert len(exp.minibatches) == 1 and len(exp.minibatches[0]) == 1
    rb = exp.minibatches[0][0]
    policy = rl.policy_of(trainer.model)
    perturb(policy, 2e-3)
    adv = as_np(random_advantages(rb))
    out = trainer.recipe.step(trainer.model, rb)

    b = rb.batch
    new, _ = plain_scores(policy, b, 0.7)
    old, mask, seq = as_np(rb.old_logp), as_np(rb.mask), b.tgt_seq.numpy()
    want, clipped, live = 0.0, 0, 0
    for s in range(b.num_sequences):
        i = seq == s
        n = mask[i].sum()
        if n == 0:
            continue
        live += 1
        ratio = math.exp(((new[i] - old[i]) * mask[i]).sum() / n)   # length-normalised ratio
        a = (adv[i] * mask[i]).sum() / n
        clip = min(max(ratio, 1 - eps_low), 1 + eps_high)
        want += -min(ratio * a, clip * a)
        clipped += clip * a < ratio * a
    assert 0 < clipped < live  # both branches of the clip are exercised
    assert float(out.sum.detach()) == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out.metrics["seq_clip_frac"] == pytest.approx(clipped / live)
    assert out.metrics["policy_loss_seq"] == pytest.approx(want / live, rel=1e-4, abs=1e-5)


# ------------------------------------------------------------------ 3. entropy top-q
def test_entropy_top_q_trains_on_the_highest_entropy_half(tiny_dir, tmp_path):
    T = 0.7
    cfg = cfg_for(tiny_dir, tmp_path, entropy_top_q=0.5, reuse_logps=False)
    cfg.rollout.temperature = T
    trainer = rl.build(cfg, log=quiet)
    policy = rl.policy_of(trainer.model)
    with torch.no_grad():  # 8x larger logits: entropies far apart (near-uniform ones differ by ~1e-6)
        policy.model.embed_tokens.weight.mul_(8.0)
    torch.manual_seed(0)
    rb = plan(trainer).minibatches[0][0]
    perturb(policy, 2e-2)
    adv = as_np(random_advantages(rb))
    out = trainer.recipe.step(trainer.model, rb)

    b = rb.batch
    new, ent = plain_scores(policy, b, T)
    old, mask, seq = as_np(rb.old_logp), as_np(rb.mask), b.tgt_seq.numpy()
    idx = np.nonzero(mask > 0)[0]
    k = math.ceil(0.5 * len(idx))
    order = idx[np.argsort(-ent[idx], kind="stable")]
    # at the cut: an exact tie (one context; both sides take the lower index) or a clear gap
    assert ent[order[k - 1]] == ent[order[k]] or ent[order[k - 1]] - ent[order[k]] > 1e-4
    top = np.zeros_like(mask)
    top[order[:k]] = mask[order[:k]]
    pg = ppo_token_loss(new, old, adv)
    want = grpo_aggregate(pg, top, seq, b.num_sequences)
    every = grpo_aggregate(pg, mask, seq, b.num_sequences)
    assert abs(want - every) > 1e-3  # the selection changes the loss
    assert float(out.sum.detach()) == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out.metrics["entropy"] == pytest.approx(ent[order[:k]].mean(), rel=1e-5)


# ------------------------------------------------------------------ 4. rollout correction
def test_tis_correction_weights_the_token_losses(tiny_dir, tmp_path):
    cap = 2.0
    cfg = cfg_for(tiny_dir, tmp_path, reuse_logps=False, correction=CorrectionConfig(mode="tis", level="token", cap=cap))
    trainer = rl.build(cfg, log=quiet)
    o = online(trainer)
    assert o.correction == "tis" and o.loss_cfg.correction == "tis" and o.loss_cfg.correction_cap == cap
    torch.manual_seed(0)
    rb = plan(trainer).minibatches[0][0]
    assert rb.sampler_logp is not None  # the correction keeps the sampler's log-probs
    assert float((rb.sampler_logp - rb.old_logp).abs().max()) < 1e-4  # the exact engine: same numbers
    delta = torch.empty(rb.old_logp.shape).uniform_(-1.0, 1.5, generator=torch.Generator().manual_seed(3))
    rb.sampler_logp = rb.old_logp - delta  # Δ = log π_old − log π_sampler
    policy = rl.policy_of(trainer.model)
    perturb(policy, 2e-2)
    adv = as_np(random_advantages(rb))
    out = trainer.recipe.step(trainer.model, rb)

    b = rb.batch
    new, _ = plain_scores(policy, b, 1.0)
    old, mask, seq, d = as_np(rb.old_logp), as_np(rb.mask), b.tgt_seq.numpy(), as_np(delta)
    w = np.minimum(np.exp(d), cap)
    keep = mask > 0
    over = (np.exp(d) > cap) & keep
    assert 0 < over.sum() < keep.sum()
    want = grpo_aggregate(w * ppo_token_loss(new, old, adv), mask, seq, b.num_sequences)
    assert float(out.sum.detach()) == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out.metrics["mismatch/abs_logp_diff"] == pytest.approx(np.abs(d[keep]).mean(), rel=1e-5)
    assert out.metrics["mismatch/capped_frac"] == pytest.approx(over.sum() / keep.sum())
    assert out.metrics["mismatch/weight_mean"] == pytest.approx(w[keep].mean(), rel=1e-5)


def test_correction_auto_is_none_with_the_exact_engine(tiny_dir, tmp_path):
    trainer = rl.build(cfg_for(tiny_dir, tmp_path, reuse_logps=False), log=quiet)
    o = online(trainer)
    assert o.cfg.correction.mode == "auto"
    assert o.correction == "none" and o.loss_cfg.correction == "none"
    torch.manual_seed(0)
    assert plan(trainer).minibatches[0][0].sampler_logp is None  # nothing to correct: not kept


def test_correction_auto_is_tis_with_a_bf16_sampling_engine(tiny_dir, tmp_path):
    """A sampler with its own lower-precision weights does not sample the trainer's exact
    distribution: ``auto`` turns the correction on."""
    cfg = cfg_for(tiny_dir, tmp_path, reuse_logps=False)
    cfg.runtime.sampler_dtype = "bf16"
    trainer = rl.build(cfg, log=quiet)
    o = online(trainer)
    assert o.engine.name == "cpu" and not o.engine.shares_weights
    assert o.correction == "tis" and o.loss_cfg.correction == "tis"
    torch.manual_seed(0)
    rb = plan(trainer).minibatches[0][0]
    assert rb.sampler_logp is not None  # kept for the correction
    # the bf16 sampler's log-probs differ from the trainer's fp32 ones, but not by much
    d = ((rb.sampler_logp - rb.old_logp).abs() * rb.mask).sum() / rb.mask.sum()
    assert 0 < float(d) < 0.2


# ------------------------------------------------------------------ reward functions
PARITY_SRC = '''
def parity(prompts, completions, answer=None, **kw):
    """Length parity of the text for prompts with an even answer; 0 (a tie) otherwise."""
    return [float(len(c) % 2) if int(a) % 2 == 0 else 0.0 for c, a in zip(completions, answer)]


def zero(prompts, completions, **kw):
    return [0.0 for _ in completions]
'''


def parity(text, answer):
    return float(len(text) % 2) if int(answer) % 2 == 0 else 0.0


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """``fn:rl_objective_rewards:parity`` / ``:zero``, importable in the reward worker."""
    d = tmp_path / "reward_module"
    d.mkdir()
    (d / "rl_objective_rewards.py").write_text(PARITY_SRC)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(d)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p]))
    return "fn:rl_objective_rewards:"


def spread(values, G):
    g = np.asarray(values, dtype=np.float64).reshape(-1, G)
    return (g.max(1) > g.min(1)).tolist()


def record_sampling(o):
    """Wrap the rollouts and the step's sampling of ``o``: (rollout calls per step, sample results)."""
    calls, steps = [], []
    rollout_scores, sample = o._rollout_scores, o.sample

    def rec_rollout(exs, offset, *args):
        traj, res = rollout_scores(exs, offset, *args)
        calls[-1].append((traj, list(res.total)))
        return traj, res

    def rec_sample(exs, step, *args):
        calls.append([])
        out = sample(exs, step, *args)
        steps.append(out)
        return out

    o._rollout_scores, o.sample = rec_rollout, rec_sample
    return calls, steps


# ------------------------------------------------------------------ 5. dynamic sampling
def test_dynamic_sampling_replaces_groups_without_spread(tiny_dir, tmp_path, reward_module):
    G, P, rounds = 4, 4, 3
    cfg = cfg_for(tiny_dir, tmp_path, G=G, rewards=[reward_module + "parity"], dynamic_sampling=True,
                  dynamic_sampling_rounds=rounds)
    trainer = rl.build(cfg, log=quiet)
    assert int(trainer.recipe.examples[0].extra["answer"]) % 2 == 1  # the first prompt's group always ties
    calls, steps = record_sampling(online(trainer))
    trainer.train()
    recs = [r for r in metrics(tmp_path) if "train/loss" in r]
    assert len(recs) == len(calls) == len(steps) == 2
    filled = 0
    for rec, rolls, (traj, res, scores, m) in zip(recs, calls, steps):
        # every rollout's rewards, recomputed here from its texts and prompts
        for t, total in rolls:
            mine = [parity(t.texts[i], t.examples[i // G].extra["answer"]) for i in range(len(t.texts))]
            assert total == mine
        have = np.cumsum([sum(spread(total, G)) for _, total in rolls])
        want_rounds = next((r for r, h in enumerate(have) if h >= P), rounds)
        assert rec["rollout/dynamic_rounds"] == m["rollout/dynamic_rounds"] == len(rolls) - 1 == want_rounds
        assert 1 <= want_rounds <= rounds
        # the kept groups: the first P with spread in rollout order, then the others in order
        groups = [(j, p) for j, (_, total) in enumerate(rolls) for p, ok in enumerate(spread(total, G))]
        good = [(j, p) for j, p in groups if spread(rolls[j][1], G)[p]]
        rest = [(j, p) for j, p in groups if not spread(rolls[j][1], G)[p]]
        chosen = (good + rest)[:P]
        assert len(traj.examples) == P
        for q, (j, p) in enumerate(chosen):
            t = rolls[j][0]
            assert traj.examples[q] is t.examples[p]
            assert traj.completion_ids[q * G:(q + 1) * G] == t.completion_ids[p * G:(p + 1) * G]
            assert res.total[q * G:(q + 1) * G] == rolls[j][1][p * G:(p + 1) * G]
        if have[-1] >= P:
            assert all(spread(res.total, G)) and rec["rollout/groups_with_spread"] == P
            filled += 1
        assert scores.tolist() == pytest.approx(res.total)
    assert filled  # at least one step found enough groups with spread


def test_dynamic_sampling_stops_after_its_rounds(tiny_dir, tmp_path, reward_module):
    cfg = cfg_for(tiny_dir, tmp_path, G=2, steps=1, rewards=[reward_module + "zero"], dynamic_sampling=True,
                  dynamic_sampling_rounds=2)
    trainer = rl.build(cfg, log=quiet)
    o = online(trainer)
    calls, steps = record_sampling(o)
    torch.manual_seed(0)
    traj, res, scores, m = o.sample(trainer.recipe.examples[:4], 0)
    assert len(calls[0]) == 3 and m["rollout/dynamic_rounds"] == 2.0  # 1 + 2 extra, never more
    assert m["rollout/groups_with_spread"] == 0.0 and len(traj.examples) == 4
    assert traj.examples == calls[0][0][0].examples  # no spread anywhere: the first rollout's groups


# ------------------------------------------------------------------ 6. overlong penalty
def capture_scores(monkeypatch):
    """The rewards' own totals (before any shaping) and the trajectories they scored."""
    from rlhfkit.rl import experience

    seen = []
    score = experience.score

    def rec(rewards, traj, log=print, precomputed=None):
        res = score(rewards, traj, log, precomputed=precomputed)
        seen.append((traj, list(res.total)))
        return res

    monkeypatch.setattr(experience, "score", rec)  # what rollout_scored calls
    return seen


def group_norm(r, G):
    g = r.reshape(-1, G)
    return ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)


def test_overlong_penalty_enters_the_score(tiny_dir, tmp_path, monkeypatch):
    G, max_len, cache = 4, 6, 3
    cfg = cfg_for(tiny_dir, tmp_path, G=G, overlong_cache=cache)
    cfg.rollout.stop = ["s"]  # responses of several lengths
    trainer = rl.build(cfg, log=quiet)
    seen = capture_scores(monkeypatch)
    torch.manual_seed(0)
    exp = plan(trainer)
    (traj, base), = seen
    lengths = np.array([len(c) for c in traj.completion_ids], dtype=np.float64)
    start = max_len - cache
    pen = np.where(lengths > start, -(lengths - start) / cache, 0.0)
    pen = np.where(lengths > max_len, -1.0, pen)
    assert len(set(pen.tolist())) >= 3 and any(len(set(g)) > 1 for g in pen.reshape(-1, G).tolist())
    m = exp.metrics
    assert m["rollout/reward/overlong"] == pytest.approx(pen.mean(), abs=1e-6)
    total = np.asarray(base) + pen
    assert m["rollout/reward"] == pytest.approx(total.mean(), abs=1e-6)
    mask = (np.arange(exp.advantages.shape[1])[None, :] < lengths[:, None]).astype(np.float64)
    want = group_norm(total, G)[:, None] * mask
    assert not np.allclose(want, group_norm(np.asarray(base, dtype=np.float64), G)[:, None] * mask)
    np.testing.assert_allclose(as_np(exp.advantages), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ 7. score scaling
@pytest.mark.parametrize("given,want", [(True, "group"), (False, "none"), ("group", "group"), ("batch", "batch"),
                                        ("none", "none"), ("true", "group"), ("false", "none")])
def test_scale_rewards_values(tiny_dir, tmp_path, given, want):
    cfg = cfg_for(tiny_dir, tmp_path, scale_rewards=given)
    rl.validate(cfg)
    assert cfg.scale_rewards == want
    if isinstance(given, str):
        assert build_config(rl.RLConfig, None, [("scale_rewards", given)]).scale_rewards == want


@pytest.mark.parametrize("value", ["true", "false", "batch"])
def test_scale_rewards_from_yaml(tmp_path, value):
    p = tmp_path / "c.yaml"
    p.write_text(f"scale_rewards: {value}\n")
    assert build_config(rl.RLConfig, str(p)).scale_rewards == {"true": "group", "false": "none"}.get(value, value)


def test_scale_rewards_invalid_lists_the_choices(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="scale_rewards") as e:
        rl.validate(cfg_for(tiny_dir, tmp_path, scale_rewards="sometimes"))
    assert all(c in str(e.value) for c in ("group", "batch", "none"))
    with pytest.raises(ConfigError, match="overlong_cache"):
        rl.validate(cfg_for(tiny_dir, tmp_path, overlong_cache=6))  # must stay below max_new_tokens


def test_batch_scaling_divides_by_the_std_of_the_batch(tiny_dir, tmp_path, monkeypatch):
    G = 4
    trainer = rl.build(cfg_for(tiny_dir, tmp_path, G=G, scale_rewards="batch"), log=quiet)
    seen = capture_scores(monkeypatch)
    torch.manual_seed(0)
    exp = plan(trainer)
    (traj, base), = seen
    r = np.asarray(base, dtype=np.float64).reshape(-1, G)
    centred = (r - r.mean(1, keepdims=True)).reshape(-1)
    want = centred / (centred.std(ddof=1) + 1e-4)
    assert centred.std() > 0 and not np.allclose(want, group_norm(r.reshape(-1), G))
    lengths = np.array([len(c) for c in traj.completion_ids])
    mask = (np.arange(exp.advantages.shape[1])[None, :] < lengths[:, None]).astype(np.float64)
    np.testing.assert_allclose(as_np(exp.advantages), want[:, None] * mask, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ 8. weight sync
def test_engine_weights_follow_every_optimizer_update(tiny_dir, tmp_path):
    cfg = cfg_for(tiny_dir, tmp_path, G=2, num_iterations=2, num_minibatches=2)
    trainer = rl.build(cfg, log=quiet)
    o = online(trainer)
    events = trace_updates_and_syncs(trainer, o.engine, rl.policy_of(trainer.model))
    trainer.train()
    recs = [r for r in metrics(tmp_path) if "train/loss" in r]
    updates = sum(r["train/updates"] for r in recs)
    assert updates == 2 * 2 * 2  # steps x epochs x minibatches
    assert events == [("update", True), ("sync", True)] * int(updates)

"""Online RL end to end on a tiny random model: every estimator runs, on-policy ratios are
exactly 1, PPO-ptx / early stop / filtering work, bad settings fail clearly."""

import json

import pytest
import torch

from rlhfkit.config import ModelConfig, TrainConfig, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.models.forward import completion_logprobs
from rlhfkit.rl.loss import onpolicy_metrics
from rlhfkit.tasks.arithmetic import make_problems, sft_rows
from rlhfkit.train import rl
from conftest import write_jsonl


def quiet(*a):
    pass


def cfg_for(tiny_dir, out, advantage="grpo", G=2, steps=2, **kw):
    cls = rl.PPOConfig if advantage == "gae" else rl.RLConfig
    cfg = cls(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=8, task_eval_size=4,
              advantage=advantage, rewards=["arithmetic", "format*0.5"],
              train=TrainConfig(output_dir=str(out), max_steps=steps, batch_size=4, lr=1e-4,
                                progress=False, tensorboard=False, eval_batch_size=4))
    cfg.rollout.num_generations = G
    cfg.rollout.max_new_tokens = 6
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def plan(trainer, step=0):
    """One step's experience: (minibatches of RLBatch, rollout metrics)."""
    exp = trainer.recipe.iteration.__self__.experience(trainer.model, [trainer.recipe.examples[:4]], step)
    return exp.minibatches, exp.metrics


def metrics(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("advantage,G,extra", [
    ("grpo", 2, {}), ("grpo", 2, {"loss_agg": "dr_grpo", "scale_rewards": False}),
    ("grpo", 2, {"loss_agg": "dapo", "clip_eps_high": 0.28}), ("rloo", 2, {}),
    ("reinforce_pp", 1, {}), ("reinforce_baseline", 2, {}), ("gae", 1, {})])
def test_every_estimator_runs_and_logs(tiny_dir, tmp_path, advantage, G, extra):
    cfg = cfg_for(tiny_dir, tmp_path, advantage, G, kl_coef=0.05, **extra)
    res = rl.run(cfg, log=quiet)
    recs = [r for r in metrics(tmp_path) if "train/loss" in r]
    assert len(recs) == 2
    for key in ("rollout/reward", "rollout/kl", "train/entropy", "train/clip_frac", "train/approx_kl",
                "rollout/length_mean", "rollout/truncated_frac", "rollout/gen_tokens_per_s",
                "train/tokens_per_s",
                "rollout/reward/arithmetic", "rollout/reward/format", "rollout/zero_std_frac"):
        assert key in recs[0], key
    if advantage == "gae":
        assert "ppo/explained_variance" in recs[0] and "train/value_loss" in recs[0]
        assert (tmp_path / "critic" / "config.json").exists()
    assert "eval/sampled/arithmetic" in res["final"] and "eval/sampled/kl" in res["final"]
    assert (tmp_path / "final" / "config.json").exists()


def test_critic_save_false_exports_only_the_policy(tiny_dir, tmp_path):
    cfg = cfg_for(tiny_dir, tmp_path, "gae", 1, steps=1)
    cfg.critic.save = False
    rl.run(cfg, log=quiet)
    assert (tmp_path / "final" / "config.json").exists() and not (tmp_path / "critic").exists()


def test_on_policy_ratio_is_exactly_one(tiny_dir, tmp_path):
    """One epoch, one minibatch, a rollout from the current policy: ρ == 1 exactly, no clipping."""
    for advantage, G in (("gae", 2), ("grpo", 4)):
        cfg = cfg_for(tiny_dir, tmp_path / advantage, advantage, G, num_iterations=1, num_minibatches=1,
                      kl_coef=0.05, reuse_logps=False)
        trainer = rl.build(cfg, log=quiet)
        torch.manual_seed(0)
        updates, m = plan(trainer)
        updates = list(updates)
        assert len(updates) == 1 and len(updates[0]) == 1
        rb = updates[0][0]
        policy = rl.policy_of(trainer.model)
        new = completion_logprobs(policy, rb.batch).token_logps
        ratio = torch.exp(new.detach() - rb.old_logp)
        assert torch.equal(ratio, torch.ones_like(ratio))
        out = trainer.recipe.step(trainer.model, rb)
        loss, met = out.sum, out.metrics
        assert met["clip_frac"] == 0.0 and met["ratio_mean"] == 1.0 and met["approx_kl"] == 0.0
        assert torch.isfinite(loss)


def _one_update(tiny_dir, out, reuse: bool, advantage: str, **kw):
    """Rollout metrics, per-update metrics and the gradient of one GRPO/RLOO update."""
    cfg = cfg_for(tiny_dir, out, advantage, 4, reuse_logps=reuse, **kw)
    trainer = rl.build(cfg, log=quiet)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference: a KL to compare
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    updates, m = plan(trainer)
    mets, sums = [], {}
    for rbs in updates:
        for rb in rbs:
            assert (rb.old_logp is None) == reuse
            # the random model's rewards are all equal: give the tokens advantages to follow
            rb.advantages = torch.randn(rb.advantages.shape, generator=torch.Generator().manual_seed(1))
            out = trainer.recipe.step(trainer.model, rb)
            out.sum.backward()
            mets.append(out.metrics | {"loss": float(out.sum.detach())})
            sums = {k: sums.get(k, 0.0) + v for k, v in out.sums.items()}
    if reuse:  # what the iteration does with the updates' on-policy sums
        onpolicy_metrics(sums, m, trainer.recipe.iteration.__self__.ref is not None, True)
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return m, mets, grads


@pytest.mark.parametrize("advantage,kw", [("grpo", {"kl_coef": 0.05}), ("grpo", {"kl_coef": 0.0}),
                                          ("rloo", {"kl_coef": 0.05, "kl_in": "loss"})])
def test_reused_logps_equal_a_separate_old_logp_pass(tiny_dir, tmp_path, advantage, kw):
    """reuse_logps (the update's own detached log-probs as the old ones) gives the same loss,
    gradient and rollout KL / sampler metrics as the separate no-grad pass, within 1e-5."""
    m0, met0, g0 = _one_update(tiny_dir, tmp_path / "pass", False, advantage, **kw)
    m1, met1, g1 = _one_update(tiny_dir, tmp_path / "reuse", True, advantage, **kw)
    keys = ["rollout/sampler_logp_diff"] + (["rollout/kl", "rollout/kl_k3"] if kw["kl_coef"] else [])
    for k in keys:
        assert m1[k] == pytest.approx(m0[k], abs=1e-5), k
    if kw["kl_coef"]:
        assert abs(m0["rollout/kl"]) > 1e-3 and m0["rollout/kl_k3"] > 1e-3
    assert len(met0) == len(met1) == 1
    for k in ("loss", "policy_loss", "clip_frac", "approx_kl", "ratio_mean", "entropy"):
        assert met1[0][k] == pytest.approx(met0[0][k], abs=1e-5), k
    assert met1[0]["ratio_mean"] == 1.0 and met1[0]["approx_kl"] == 0.0
    assert torch.allclose(g1, g0, atol=1e-5) and g0.abs().sum() > 0


def test_reuse_logps_only_when_one_update_per_rollout(tiny_dir, tmp_path):
    for kw in ({"num_iterations": 2}, {"kl_in": "reward", "kl_coef": 0.05}, {"kl_target": 1.0, "kl_coef": 0.05}):
        cfg = cfg_for(tiny_dir, tmp_path, "grpo", 2, **kw)
        trainer = rl.build(cfg, log=quiet)
        updates, _ = plan(trainer)
        assert all(rb.old_logp is not None for rbs in updates for rb in rbs), kw


def test_grpo_no_reference_when_beta_zero(tiny_dir, tmp_path):
    trainer = rl.build(cfg_for(tiny_dir, tmp_path, kl_coef=0.0), log=quiet)
    assert trainer.recipe.iteration.__self__.ref is None


def test_zero_std_groups_are_filtered(tiny_dir, tmp_path):
    # the random model never answers right: every group has equal rewards -> nothing to train on
    cfg = cfg_for(tiny_dir, tmp_path, rewards=["arithmetic"], filter_zero_std=True)
    rl.run(cfg, log=quiet)
    recs = [r for r in metrics(tmp_path) if "rollout/reward" in r]
    assert all(r["rollout/zero_std_frac"] == 1.0 and r["rollout/skipped_all"] == 1.0 for r in recs)
    assert all(r["train/updates"] == 0.0 for r in recs)


def test_ptx_and_target_kl_early_stop(tiny_dir, tmp_path):
    ptx = write_jsonl(tmp_path / "ptx.jsonl", sft_rows(make_problems(6, seed=5)))
    cfg = cfg_for(tiny_dir, tmp_path / "run", "gae", 1, ptx_coef=0.5, ptx_path=ptx, num_iterations=4,
                  num_minibatches=2, target_kl=1e-12, kl_coef=0.05)
    cfg.train.lr = 1e-2  # big steps: the approximate KL passes the (tiny) target after one update
    rl.run(cfg, log=quiet)
    recs = [r for r in metrics(tmp_path / "run") if "train/loss" in r]
    assert all("train/ptx_nll" in r for r in recs)
    assert any(r["train/early_stopped"] == 1.0 and r["train/updates"] < 8 for r in recs)


def test_adaptive_kl_controller_follows_the_measured_kl(tiny_dir, tmp_path):
    cfg = cfg_for(tiny_dir, tmp_path, "rloo", 2, kl_coef=0.1, kl_target=0.05, kl_horizon=10, steps=4)
    cfg.train.lr = 1e-2
    rl.run(cfg, log=quiet)
    recs = [r for r in metrics(tmp_path) if "rollout/kl_coef" in r]
    n = 4 * 2  # sequences per rollout
    for a, b in zip(recs, recs[1:]):  # β used at step k+1 = update of β_k with step k's KL
        err = min(max(a["rollout/kl"] / 0.05 - 1, -0.2), 0.2)
        assert b["rollout/kl_coef"] == pytest.approx(a["rollout/kl_coef"] * (1 + err * n / 10), rel=1e-5)
    assert recs[0]["rollout/kl_coef"] == pytest.approx(0.1)
    assert len({round(r["rollout/kl_coef"], 8) for r in recs}) > 1


@pytest.mark.parametrize("kw,match", [
    ({"advantage": "ppo2"}, "advantage must be one of"),
    ({"loss_agg": "mean"}, "loss_agg must be one of"),
    ({"kl_estimator": "k4"}, "kl_estimator"),
    ({"advantage": "rloo", "G": 1}, "num_generations >= 2"),
    ({"num_minibatches": 9}, "exceeds the prompts per step"),
    ({"ptx_coef": 0.1}, "ptx_path"),
    ({"task": "chess"}, "unknown task"),
    ({"rewards": ["nonsense"]}, "reward"),
])
def test_bad_settings_fail_clearly(tiny_dir, tmp_path, kw, match):
    G = kw.pop("G", 2)
    cfg = cfg_for(tiny_dir, tmp_path, kw.pop("advantage", "grpo"), G, **kw)
    with pytest.raises(ConfigError, match=match):
        rl.run(cfg, log=quiet)


def test_yaml_rewards_list_of_mappings(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("rewards:\n  - {type: verifier, verifier: gsm8k, weight: 2.0}\n  - format\n")
    cfg = build_config(rl.RLConfig, str(p))
    assert cfg.rewards[0].verifier == "gsm8k" and cfg.rewards[0].weight == 2.0
    assert cfg.rewards[1] == "format"
    cfg = build_config(rl.RLConfig, None, [("rewards", "arithmetic,model:a;b*0.5")])
    assert cfg.rewards == ["arithmetic", "model:a;b*0.5"]


def test_grpo_resume_after_a_crash_is_exact(tiny_dir, tmp_path):
    """Run A: 4 steps. Run B: crashes in step 3, resumed from the step-2 checkpoint. The RNG
    state (rollout sampling), optimizer and data position come back: same losses to 1e-6."""
    vowel = {"type": "verifier", "verifier": "format", "pattern": "^ "}  # varies (~45 % of samples)
    a = cfg_for(tiny_dir, tmp_path / "a", "grpo", 4, steps=4, kl_coef=0.05, rewards=[vowel])
    a.train.save_steps = 1
    rl.run(a, log=quiet)
    b = cfg_for(tiny_dir, tmp_path / "b", "grpo", 4, steps=4, kl_coef=0.05, rewards=[vowel])
    b.train.save_steps = 1
    trainer = rl.build(b, log=quiet)
    iteration, calls = trainer.recipe.iteration, []

    def crashing(model, mbs, step, update):
        calls.append(step)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return iteration(model, mbs, step, update)

    trainer.recipe.iteration = crashing
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train()
    b.train.resume = True
    rl.run(b, log=quiet)
    ma = [r for r in metrics(tmp_path / "a") if "train/loss" in r]
    mb = [r for r in metrics(tmp_path / "b") if "train/loss" in r]
    assert [r["step"] for r in mb] == [1, 2, 3, 4]
    # the policy really trains (the GRPO loss itself is ~0 on-policy: advantages sum to 0)
    assert all(r["train/grad_norm"] > 1e-4 for r in ma) and ma[-1]["rollout/kl"] != 0.0
    for x, y in zip(ma, mb):
        for k in ("train/loss", "train/grad_norm", "rollout/kl", "train/entropy"):
            assert x[k] == pytest.approx(y[k], abs=1e-6), k
        assert x["rollout/reward"] == y["rollout/reward"]
        assert x["rollout/length_mean"] == y["rollout/length_mean"]


def test_training_logprobs_use_the_sampling_temperature(tiny_dir, tmp_path):
    """Samples drawn from softmax(z/T) at T = 0.7: the old log-probs equal the sampler's own and
    those of softmax(z/T) computed in numpy from a plain forward; the on-policy ratio is 1."""
    import numpy as np

    cfg = cfg_for(tiny_dir, tmp_path, "grpo", 4, num_iterations=1, num_minibatches=1,
                  kl_coef=0.05, reuse_logps=False)
    cfg.rollout.temperature = 0.7
    trainer = rl.build(cfg, log=quiet)
    torch.manual_seed(0)
    updates, m = plan(trainer)
    rb = list(updates)[0][0]
    assert m["rollout/sampler_logp_diff"] < 1e-5, m["rollout/sampler_logp_diff"]
    met = trainer.recipe.step(trainer.model, rb).metrics
    assert met["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and met["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    # sequence 0 of the batch, scored by a plain unpacked forward and a numpy log-softmax at T
    b = rb.batch
    ex = b.examples[int(b.seq_example[0])]
    prompt, comp = list(ex.prompt), list(ex.completions[int(b.seq_completion[0])])
    policy = rl.policy_of(trainer.model)
    with torch.no_grad():
        z = policy(input_ids=torch.tensor([prompt + comp])).logits[0].double().numpy() / 0.7
    want = []
    for t, tok in enumerate(comp):
        row = z[len(prompt) - 1 + t]
        want.append(row[tok] - (row.max() + np.log(np.exp(row - row.max()).sum())))
    got = rb.old_logp[b.tgt_seq == 0].double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def _grad_of_one_update(tiny_dir, out, **kw):
    cfg = cfg_for(tiny_dir, out, "rloo", 4, reuse_logps=False, **kw)
    trainer = rl.build(cfg, log=quiet)
    torch.manual_seed(0)
    updates, _ = plan(trainer)
    rb = list(updates)[0][0]
    seq_adv = torch.linspace(-1.0, 1.0, rb.batch.num_sequences)
    rb.advantages = seq_adv[rb.batch.tgt_seq]  # one advantage per completion, as RLOO gives
    out = trainer.recipe.step(trainer.model, rb)
    out.sum.backward()
    met = out.metrics
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return met, grads, seq_adv


def test_rloo_sequence_level_objective_in_training(tiny_dir, tmp_path):
    """RLOO defaults to the paper's sequence-level ratio. On policy (ρ = 1) its gradient is
    −Σ_s A_s Σ_t ∇log π(y_t), i.e. max_new_tokens × that of the token-level sum-over-tokens
    objective (dr_grpo: −Σ_s Σ_t A_s ∇log π(y_t) / max_new_tokens); its loss is −Σ_s A_s."""
    met_s, g_seq, adv = _grad_of_one_update(tiny_dir, tmp_path / "seq")
    met_t, g_tok, _ = _grad_of_one_update(tiny_dir, tmp_path / "tok", importance_level="token",
                                          loss_agg="dr_grpo")
    assert met_s["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert met_s["policy_loss_seq"] == pytest.approx(float(-adv.mean()), abs=1e-6)
    torch.testing.assert_close(g_seq, 6 * g_tok, rtol=1e-4, atol=5e-6)  # max_new_tokens = 6; float32 sums, x6
    assert g_seq.abs().sum() > 0


def test_importance_level_sequence_with_dapo_is_refused():
    with pytest.raises(ConfigError, match="importance_level=sequence"):
        build_config(rl.RLConfig, None, [("advantage", "rloo"), ("loss_agg", "dapo")])

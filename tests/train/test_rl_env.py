"""Online RL in a multi-turn environment (tiny random model, scripted policy turns): the
experience carries the episode's loss mask, tool-output tokens get no gradient, the episode
reward is the score, and a whole run trains and evaluates with the environment."""

import json
import sys
import pathlib

import pytest
import torch

from rlhfkit.config import ModelConfig, TrainConfig
from rlhfkit.envs.episodes import run_episodes
from rlhfkit.train import rl

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "envs"))
from env_fakes import ScriptedEngine  # noqa: E402


def quiet(*a):
    pass


def calc_cfg(tiny_dir, out, **kw):
    cfg = rl.RLConfig(model=ModelConfig(name=tiny_dir), task="word_problems", task_size=4, task_eval_size=0,
                      env="calculator", kl_coef=0.05, reuse_logps=False,
                      train=TrainConfig(output_dir=str(out), max_steps=1, batch_size=2, lr=1e-3, progress=False,
                                        tensorboard=False))
    cfg.rollout.num_generations = 2
    cfg.rollout.max_new_tokens = 40
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def script(answer_of):
    """First turn: a calculator call; second turn: the right answer for the even episodes,
    a wrong one for the odd ones."""
    def turn(prompt_text, call, i):
        if call == 0:
            return '<tool_call>{"name": "calculator", "arguments": {"expression": "12 * 34"}}</tool_call>'
        return f"The answer is {answer_of(prompt_text) if i % 2 == 0 else -1}."
    return turn


def _answer(rows):
    def answer_of(text):
        return next(r["answer"] for r in rows if r["prompt"] in text)
    return answer_of


def test_experience_masks_tool_tokens_and_uses_the_episode_reward(tiny_dir, tmp_path):
    trainer = rl.build(calc_cfg(tiny_dir, tmp_path), log=quiet)
    obj = trainer.recipe.iteration.__self__
    exs = trainer.recipe.examples[:2]
    rows = [dict(ex.extra) for ex in exs]
    obj.engine = ScriptedEngine(obj.tok, script(_answer(rows)))
    torch.manual_seed(0)
    exp = obj.experience(trainer.model, [exs], 0)
    # the same episodes, run directly: the reference for masks and rewards
    ref_eps = run_episodes(ScriptedEngine(obj.tok, script(_answer(rows))), obj.tok, obj.env, rows, obj.sampling)
    assert [e.reward for e in ref_eps] == [1.0, 0.0, 1.0, 0.0]
    assert exp.metrics["rollout/reward"] == pytest.approx(0.5)
    assert exp.metrics["rollout/reward/tool_calls"] == pytest.approx(1.0)
    assert exp.metrics["rollout/reward/correct"] == pytest.approx(0.5)
    (rb,) = exp.minibatches[0]
    b = rb.batch
    # per sequence of the packed batch, the mask is the episode's loss mask, token for token
    for s in range(b.num_sequences):
        p = int(b.seq_example[s])
        k = int(b.seq_completion[s])
        row = [r for r, ex in enumerate(exs) if ex.row == b.examples[p].row][0]
        ep = ref_eps[row * 2 + k]
        got = rb.mask[b.tgt_seq == s].tolist()
        assert got == [float(x) for x in ep.loss_mask]
        assert 0 in ep.loss_mask and 1 in ep.loss_mask  # tool output and policy turns both present
        assert list(b.examples[p].completions[k]) == ep.completion_ids


def test_tool_output_tokens_get_no_gradient(tiny_dir, tmp_path):
    """Advantages and old log-probs at the environment's tokens changed arbitrarily: the same
    loss and the same gradient (those tokens are out of the objective); changing them at the
    policy's tokens does change the gradient (the check can fail)."""
    trainer = rl.build(calc_cfg(tiny_dir, tmp_path), log=quiet)
    obj = trainer.recipe.iteration.__self__
    exs = trainer.recipe.examples[:2]
    obj.engine = ScriptedEngine(obj.tok, script(_answer([dict(ex.extra) for ex in exs])))
    torch.manual_seed(0)
    (rb,) = obj.experience(trainer.model, [exs], 0).minibatches[0]
    rb.advantages = torch.linspace(-1, 1, rb.advantages.numel())

    def grad_of(adv, old):
        trainer.model.zero_grad(set_to_none=True)
        rb.advantages, rb.old_logp = adv, old
        out = obj.step(trainer.model, rb)
        out.sum.backward()
        return float(out.sum.detach()), torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])

    adv0, old0 = rb.advantages.clone(), rb.old_logp.clone()
    env_tok = rb.mask == 0
    assert env_tok.any()
    l0, g0 = grad_of(adv0, old0)
    l1, g1 = grad_of(torch.where(env_tok, adv0 + 50.0, adv0), torch.where(env_tok, old0 - 3.0, old0))
    assert l1 == l0 and torch.equal(g1, g0)
    _, g2 = grad_of(torch.where(~env_tok, adv0 + 1.0, adv0), old0)
    assert not torch.allclose(g2, g0)


def test_a_run_in_the_guessing_game_trains_and_evaluates(tiny_dir, tmp_path):
    cfg = rl.RLConfig(model=ModelConfig(name=tiny_dir), task="guess_number", task_size=4, task_eval_size=2,
                      env="guess_number", env_max_turns=2, kl_coef=0.05,
                      train=TrainConfig(output_dir=str(tmp_path), max_steps=2, batch_size=2, lr=1e-3,
                                        progress=False, tensorboard=False))
    cfg.rollout.num_generations = 2
    cfg.rollout.max_new_tokens = 6
    res = rl.run(cfg, log=quiet)
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    steps = [r for r in recs if "train/loss" in r]
    assert len(steps) == 2 and all("rollout/reward/turns" in r for r in steps)
    assert res["final"]["eval/greedy/turns"] >= 1.0 and "eval/sampled/kl" in res["final"]
    assert (tmp_path / "final" / "config.json").exists()


def test_unknown_environment_is_a_clear_error(tiny_dir, tmp_path):
    from rlhfkit.errors import ConfigError

    with pytest.raises(ConfigError, match="environment"):
        rl.run(calc_cfg(tiny_dir, tmp_path, env="no_such_module:Env"), log=quiet)

"""SPPO and DNO on a tiny random model with a fake judge whose preferences are known
(P(a ≻ b) = σ((len a − len b)/4) in characters): the iteration's targets and pairs equal ones
computed by hand from the sampled texts, the first update's loss takes its closed form, two
iterations write final/, and bad settings are config errors."""

import json
import math
import os

import numpy as np
import pytest
import torch

from rlhfkit.config import DataConfig, ModelConfig, TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.rl.config import RolloutConfig
from rlhfkit.train import nash


def quiet(*a):
    pass


def pref(a: str, b: str) -> float:
    return 1 / (1 + math.exp(-(len(a) - len(b)) / 4))


class LengthJudge:
    """Prefers the longer response; records what it was asked."""

    def __init__(self):
        self.calls = []

    def matrix(self, prompts, groups, batch_size=4):
        self.calls.append((list(prompts), [list(g) for g in groups]))
        return [torch.tensor([[pref(a, b) for b in g] for a in g]) for g in groups]

    def probs(self, prompts, a, b, batch_size=8):
        return [pref(x, y) for x, y in zip(a, b)]


def cfg_for(cls, tiny_dir, out, **kw):
    train = dict(output_dir=str(out), batch_size=3, lr=1e-3, progress=False, tensorboard=False, max_steps=2,
                 warmup_ratio=0.0, lr_scheduler="constant", seed=0)
    train.update(kw.pop("train", {}))
    return cls(model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=6, task_eval_size=2,
               data=DataConfig(max_length=128, max_prompt_length=64), train=TrainConfig(**train),
               rollout=RolloutConfig(num_generations=3, max_new_tokens=8), **kw)


def capture(trainer):
    """Run step 0's iteration with an ``update`` that records its minibatches (no optimizer step)."""
    seen = []

    def update(mb):
        seen.append(mb)
        return {"sums": {}}
    exs = [trainer.micro_batch(0)]
    m = trainer.nash.iteration(trainer.model, exs, 0, update)
    return seen, m


def test_sppo_targets_equal_hand_computed(tiny_dir, tmp_path):
    judge = LengthJudge()
    t = nash.build(cfg_for(nash.SPPOConfig, tiny_dir, tmp_path, eta=2.0), log=quiet, judge=judge)
    seen, m = capture(t)
    (prompts, groups), = judge.calls
    assert len(groups) == 3 and all(len(g) == 3 for g in groups)
    # η(mean over the other two of P(y_i ≻ y_j) − ½), by hand
    want = {}
    for p, g in enumerate(groups):
        for i, a in enumerate(g):
            want[(p, i)] = 2.0 * (np.mean([pref(a, b) for j, b in enumerate(g) if j != i]) - 0.5)
    assert len(seen) == 1                                   # one minibatch, one epoch
    got = {}
    for rb in seen[0]:
        b = rb.batch
        for s in range(b.num_sequences):
            tok = rb.advantages[b.tgt_seq == s]
            assert torch.all(tok == tok[0])                 # one target per response, on every token
            got[(int(b.seq_example[s]), int(b.seq_completion[s]))] = float(tok[0])
    # the packed examples keep the prompts' order: example e is prompt e of the step
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-6)
    assert m["sppo/target_abs"] == pytest.approx(np.mean([abs(v) for v in want.values()]), abs=1e-6)


def test_sppo_first_update_is_the_mean_squared_target(tiny_dir, tmp_path):
    """π_t's log-probs come from the same weights: the log-ratio is 0 at the first update and the
    loss is mean(target²); its gradient moves the policy (the loss changes at the second step)."""
    judge = LengthJudge()
    t = nash.build(cfg_for(nash.SPPOConfig, tiny_dir, tmp_path, eta=2.0), log=quiet, judge=judge)
    rec = t._train_step(0)
    g = judge.calls[0][1]
    targets = [2.0 * (np.mean([pref(a, b) for j, b in enumerate(gr) if j != i]) - 0.5)
               for gr in g for i, a in enumerate(gr)]
    assert rec["train/loss"] == pytest.approx(float(np.mean(np.square(targets))), abs=1e-5)
    assert abs(rec["train/sppo/log_ratio"]) < 1e-5
    assert rec["train/updates"] == 1.0


def test_dno_pairs_equal_hand_computed(tiny_dir, tmp_path):
    judge = LengthJudge()
    t = nash.build(cfg_for(nash.DNOConfig, tiny_dir, tmp_path, margin_threshold=0.05), log=quiet, judge=judge)
    seen, m = capture(t)
    (prompts, groups), = judge.calls
    want = []
    for g in groups:
        w = [np.mean([pref(a, b) for j, b in enumerate(g) if j != i]) for i, a in enumerate(g)]
        hi, lo = int(np.argmax(w)), int(np.argmin(w))
        if w[hi] - w[lo] > 0.05 and g[hi] != g[lo]:
            want.append((g[hi], g[lo]))
    assert m["dno/pairs"] == len(want)
    got = []
    for rbs in seen:
        for rb in rbs:
            for ex in rb.batch.examples:
                got.append(tuple(t.nash.tok.decode(c, skip_special_tokens=True) for c in ex.completions))
    assert sorted(got) == sorted((a, b) for a, b in want)  # chosen first, as the texts the judge saw


def test_dno_reference_response_is_judged_with_the_samples(tiny_dir, tmp_path):
    """A reference response longer than any sample wins every comparison, so it is always chosen."""
    judge = LengthJudge()
    t = nash.build(cfg_for(nash.DNOConfig, tiny_dir, tmp_path, reference_field="answer"), log=quiet, judge=judge)
    for ex in t.recipe.examples:
        ex.extra["answer"] = "The answer is " + str(ex.extra["answer"]) + ". " * 30
    seen, m = capture(t)
    (prompts, groups), = judge.calls
    assert all(len(g) == 4 and g[3].startswith("The answer is") for g in groups)
    assert m["dno/reference_chosen"] == m["dno/pairs"] == 3.0
    for rbs in seen:
        for rb in rbs:
            for ex in rb.batch.examples:
                assert t.nash.tok.decode(ex.completions[0], skip_special_tokens=True).startswith("The answer is")


def test_dno_first_update_is_log_2(tiny_dir, tmp_path):
    t = nash.build(cfg_for(nash.DNOConfig, tiny_dir, tmp_path), log=quiet, judge=LengthJudge())
    rec = t._train_step(0)
    assert rec["dno/pairs"] > 0 and rec["train/updates"] == 1.0
    assert rec["train/loss"] == pytest.approx(math.log(2), abs=1e-5)   # h_w = h_l = 0 against π_t
    assert rec["train/rewards/margin"] == pytest.approx(0.0, abs=1e-5)
    rec2 = t._train_step(1)                                              # new samples, the moved policy
    assert math.isfinite(rec2["train/loss"])


@pytest.mark.parametrize("cls", [nash.SPPOConfig, nash.DNOConfig])
def test_two_iterations_write_final(tiny_dir, tmp_path, cls):
    res = nash.run(cfg_for(cls, tiny_dir, tmp_path), log=quiet, judge=LengthJudge())
    assert os.path.isfile(tmp_path / "final" / "config.json")
    assert "eval/win_rate_vs_start" in res["final"]
    assert res["initial"]["eval/win_rate_vs_start"] == pytest.approx(0.5)  # the start against itself


@pytest.mark.parametrize("cls,key,value,match", [
    (nash.SPPOConfig, "eta", 0.0, "eta"),
    (nash.SPPOConfig, "num_minibatches", 4, "num_minibatches"),
    (nash.SPPOConfig, "judge_batch_size", 0, "judge_batch_size"),
    (nash.DNOConfig, "beta", -1.0, "beta"),
    (nash.DNOConfig, "margin_threshold", 1.0, "margin_threshold"),
    (nash.DNOConfig, "loss_type", "simpo", "reference"),
    (nash.DNOConfig, "loss_type", "sigmod", "did you mean 'sigmoid'"),
])
def test_config_validation(tiny_dir, tmp_path, cls, key, value, match):
    c = cfg_for(cls, tiny_dir, tmp_path)
    setattr(c, key, value)
    with pytest.raises(ConfigError, match=match):
        nash.build(c, log=quiet, judge=LengthJudge())


def test_sampling_settings_and_a_missing_judge_are_config_errors(tiny_dir, tmp_path):
    c = cfg_for(nash.SPPOConfig, tiny_dir, tmp_path)
    c.rollout.num_generations = 1
    with pytest.raises(ConfigError, match="num_generations"):
        nash.build(c, log=quiet, judge=LengthJudge())
    c = cfg_for(nash.SPPOConfig, tiny_dir, tmp_path)
    c.rollout.temperature = 0.0
    with pytest.raises(ConfigError, match="temperature"):
        nash.build(c, log=quiet, judge=LengthJudge())
    with pytest.raises(ConfigError, match="preference_model"):
        nash.build(cfg_for(nash.DNOConfig, tiny_dir, tmp_path), log=quiet)


def test_cli_lists_sppo_and_dno():
    from rlhfkit.cli import COMMANDS
    assert COMMANDS["sppo"][:2] == ("rlhfkit.train.nash", "SPPOConfig")
    assert COMMANDS["dno"][:2] == ("rlhfkit.train.nash", "DNOConfig")


def test_dno_reads_the_prompts_of_pairs_and_judges_their_chosen_reply(tiny_dir, tmp_path):
    """Preference rows give their prompts; ``reference_field: chosen`` puts the row's chosen reply
    (a message list for conversational rows) among the candidates the judge sees."""
    from conftest import write_jsonl
    from rlhfkit.tasks.arithmetic import make_problems, preference_rows

    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(make_problems(6, seed=2), seed=0))
    judge = LengthJudge()
    c = cfg_for(nash.DNOConfig, tiny_dir, tmp_path / "run", reference_field="chosen")
    c.task, c.data.path, c.data.eval_rows = "", path, "4:6"
    c.data.rows = "0:4"
    t = nash.build(c, log=quiet, judge=judge)
    assert len(t.recipe.examples) == 4
    capture(t)
    (prompts, groups), = judge.calls
    rows = [json.loads(line) for line in open(path)][:4]
    for prompt, g in zip(prompts, groups):                       # the step's prompts, in the loop's order
        (row,) = [r for r in rows if r["prompt"] == prompt]
        assert len(g) == 4 and g[3] == row["chosen"]

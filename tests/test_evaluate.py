"""`rlhfkit eval`: win-rate and calibration statistics against hand-computed numbers, and
both modes end to end on tiny models (figures re-derived from the written samples)."""

import json
import math

import pytest

from conftest import write_jsonl
from rlhfkit.cli import main
from rlhfkit.config import ModelConfig
from rlhfkit.evaluate import EvalConfig, reliability, run, win_rate
from rlhfkit.models.loading import tiny_model
from rlhfkit.rewards.model import RewardModel
from rlhfkit.tasks.arithmetic import make_problems, preference_rows


def test_win_rate_by_hand():
    r = win_rate([1, 2, 3, 4], [0, 2, 5, 1])          # outcomes 1, ½, 0, 1
    assert r["win_rate"] == pytest.approx(0.625)
    sd = math.sqrt((0.375 ** 2 + 0.125 ** 2 + 0.625 ** 2 + 0.375 ** 2) / 3)
    assert r["ci_low"] == pytest.approx(0.625 - 1.96 * sd / 2)
    assert r["ci_high"] == 1.0                           # 1.094 clipped
    assert (r["n"], r["wins"], r["ties"]) == (4, 2, 1)
    assert win_rate([1.0] * 3, [1.0] * 3)["win_rate"] == 0.5
    with pytest.raises(ValueError):
        win_rate([], [])


def test_reliability_by_hand():
    # margins 0 and ln 3: predictions (both orders) 0.5→1, 0.75→1, 0.5→0, 0.25→0
    r = reliability([0.0, math.log(3)], bins=4)
    assert [(row["bin"], row["n"]) for row in r["table"]] == [([0.25, 0.5], 1), ([0.5, 0.75], 2), ([0.75, 1.0], 1)]
    assert [row["predicted"] for row in r["table"]] == pytest.approx([0.25, 0.5, 0.75])
    assert [row["observed"] for row in r["table"]] == pytest.approx([0.0, 0.5, 1.0])
    assert r["ece"] == pytest.approx(0.25 * 0.25 + 0.5 * 0.0 + 0.25 * 0.25)


def test_policy_eval_against_itself_and_another_model(tiny_dir, tok, tmp_path, length_reward, capsys):
    same = run(EvalConfig(model=ModelConfig(name=tiny_dir), reference=tiny_dir, task="arithmetic", task_size=6,
                          rewards=["arithmetic", length_reward], output_dir=str(tmp_path / "same")))
    assert same["win_rate"]["win_rate"] == 0.5 and same["win_rate"]["ties"] == 6  # identical greedy answers
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    other_dir = tmp_path / "other"
    tiny_model(tok, seed=5).save_pretrained(other_dir)
    tok.save_pretrained(other_dir)
    out = tmp_path / "vs"
    code = main(["eval", "--model.name", tiny_dir, "--reference", str(other_dir), "--task", "arithmetic",
                 "--task_size", "6", "--rewards", f"arithmetic,{length_reward}", "--rollout.temperature", "1",
                 "--rollout.num_generations", "2", "--rollout.max_new_tokens", "6", "--output_dir", str(out)])
    assert code == 0 and "win-rate vs reference" in capsys.readouterr().out
    res = json.load(open(out / "eval.json"))
    rows = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert len(rows) == 12 and res["n_prompts"] == 6 and res["samples_per_prompt"] == 2
    wins = [1.0 if r["score"] > r["reference_score"] else 0.5 if r["score"] == r["reference_score"] else 0.0
            for r in rows]
    assert res["win_rate"]["win_rate"] == pytest.approx(sum(wins) / 12)
    assert res["policy"]["reward/length"] == pytest.approx(sum(len(r["response"]) for r in rows) / 12)
    assert math.isfinite(res["kl"]) and res["kl"] != 0.0


def test_reward_model_eval_accuracy_and_calibration(tok, tmp_path):
    rm_dir = tmp_path / "rm"
    tiny_model(tok, scalar_head=True, seed=2).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(make_problems(12, seed=4), seed=0))
    res = run(EvalConfig(reward_model=str(rm_dir), output_dir=str(tmp_path / "ev"),
                         data=EvalConfig().data.__class__(path=pairs, max_length=128), bins=5))
    rm = RewardModel.load(str(rm_dir))
    rows = [json.loads(line) for line in open(pairs)]
    ch = rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rj = rm.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert res["n_pairs"] == 12
    assert res["accuracy"] == pytest.approx(sum(a > b for a, b in zip(ch, rj)) / 12)
    assert res["margin"] == pytest.approx(sum(a - b for a, b in zip(ch, rj)) / 12, abs=1e-5)
    assert sum(row["n"] for row in res["table"]) == 24 and 0 <= res["ece"] <= 1


def test_alignment_tax_nll_by_hand_and_reference_sampled_once(tiny_dir, tok, tmp_path, monkeypatch):
    import torch

    from rlhfkit.data.tokenize import Renderer
    from rlhfkit.models.loading import load_model
    from rlhfkit.rl import rollout
    from rlhfkit.tasks.general_text import general_rows

    rows = general_rows()[:5]
    nll_path = write_jsonl(tmp_path / "general.jsonl", rows)
    other_dir = tmp_path / "other"
    tiny_model(tok, seed=7).save_pretrained(other_dir)
    tok.save_pretrained(other_dir)
    calls = []
    real = rollout.HFBackend.generate

    def counting(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(rollout.HFBackend, "generate", counting)
    cfg = EvalConfig(model=ModelConfig(name=tiny_dir), reference=str(other_dir), task="arithmetic", task_size=4,
                     rewards=["arithmetic"], nll_path=nll_path, output_dir=str(tmp_path / "a"))
    res = run(cfg)
    # independent: full-vocabulary log-softmax in float64 over each row's completion tokens
    r = Renderer(tok)
    for side, name in (("policy", tiny_dir), ("reference", str(other_dir))):
        model = load_model(name)[0].eval()
        total, n = 0.0, 0
        for i, row in enumerate(rows):
            ex = r.example({"kind": "prompt_completion", "row": i, **row})
            ids = ex.prompt + ex.completions[0]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            p = len(ex.prompt)
            total -= sum(float(logp[p - 1 + j, t]) for j, t in enumerate(ex.completions[0]))
            n += len(ex.completions[0])
        assert res[side]["nll"] == pytest.approx(total / n, rel=1e-4), side
    assert res["nll_tax"] == pytest.approx(res["policy"]["nll"] - res["reference"]["nll"])
    assert len(calls) == 2  # policy, reference
    again = run(dataclasses_replace(cfg, output_dir=str(tmp_path / "b")))
    assert len(calls) == 3  # the reference's responses were reused: same model, prompts, sampling, seed
    ref_a = [json.loads(x)["reference_response"] for x in open(tmp_path / "a" / "samples.jsonl")]
    ref_b = [json.loads(x)["reference_response"] for x in open(tmp_path / "b" / "samples.jsonl")]
    assert ref_a == ref_b and again["reference"] == res["reference"]
    run(dataclasses_replace(cfg, seed=1, output_dir=str(tmp_path / "c")))
    assert len(calls) == 5  # another seed: sampled again


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)

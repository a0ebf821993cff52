"""`rlhfkit eval --tax`: the alignment tax against the starting model with a 95 % interval.

The paired bootstrap is checked against a numpy reimplementation (matrix of resampled indices,
hand-written linear-interpolation quantiles) and against the normal / delta-method interval it
approximates on many items; the end-to-end numbers against a plain forward pass with
``torch.nn.functional.cross_entropy``; the task tax against the written per-problem results."""

import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, write_jsonl
from rlhfkit import tax as tax_mod
from rlhfkit.cli import main
from rlhfkit.config import ModelConfig, build_config
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate import EvalConfig, run
from rlhfkit.tax import BOOTSTRAP_RESAMPLES, format_tax, paired_bootstrap


# ------------------------------------------------------------------------ reference computations
def _quantile(sorted_vals, q):
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (pos - lo) * (sorted_vals[hi] - sorted_vals[lo])


def bootstrap_by_numpy(d, w, seed, resamples=BOOTSTRAP_RESAMPLES):
    d, w = np.asarray(d, float), np.asarray(w, float)
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, len(d), len(d)) for _ in range(resamples)])  # (B, n)
    stats = np.sort(d[idx].sum(axis=1) / w[idx].sum(axis=1))
    return d.sum() / w.sum(), _quantile(stats, 0.025), _quantile(stats, 0.975)


def row_nll_by_hand(model_dir, rows, tok):
    """Summed completion-token NLL and token count per row: one plain forward pass per row."""
    from rlhfkit.data.tokenize import Renderer
    from rlhfkit.models.loading import load_model

    model = load_model(model_dir)[0].eval()
    r = Renderer(tok)
    sums, counts = [], []
    for i, row in enumerate(rows):
        ex = r.example({"kind": "prompt_completion", "row": i, **row})
        ids = torch.tensor([ex.prompt + ex.completions[0]])
        p, c = len(ex.prompt), len(ex.completions[0])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        sums.append(float(torch.nn.functional.cross_entropy(logits[p - 1:p - 1 + c], ids[0, p:], reduction="sum")))
        counts.append(c)
    return np.array(sums), np.array(counts, float)


@pytest.fixture(scope="module")
def perturbed_dir(tiny_dir, tmp_path_factory, tok):
    """The tiny model with every weight moved by small Gaussian noise (a "trained" policy)."""
    from rlhfkit.models.loading import load_model

    model = load_model(tiny_dir)[0]
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    d = tmp_path_factory.mktemp("perturbed")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


# ------------------------------------------------------------------------ (a) the interval
def test_paired_bootstrap_matches_numpy_reimplementation():
    rng = np.random.default_rng(3)
    d, w = rng.normal(0.2, 1.0, 37), rng.integers(3, 40, 37).astype(float)
    for weights in (None, w):
        got = paired_bootstrap(d, weights, seed=5)
        point, lo, hi = bootstrap_by_numpy(d, np.ones_like(d) if weights is None else w, seed=5)
        assert got["tax"] == pytest.approx(point, rel=1e-12)
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
        assert got["ci_low"] <= got["tax"] <= got["ci_high"] and got["n"] == 37
    assert paired_bootstrap(d, seed=6) != paired_bootstrap(d, seed=5)  # the seed is honoured


def test_paired_bootstrap_approximates_normal_and_delta_method_intervals():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, 600)
    r = paired_bootstrap(d, seed=1)
    half = 1.96 * d.std() / math.sqrt(d.size)  # the bootstrap's sd of the mean uses the 1/n variance
    assert r["ci_low"] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert r["ci_high"] == pytest.approx(d.mean() + half, abs=0.15 * half)
    # a ratio Σd/Σw: the delta method's linearised values z_i = (d_i − R w_i) / mean(w)
    w = rng.integers(5, 60, 600).astype(float)
    dw = rng.normal(0.05, 0.5, 600) * w
    rw = paired_bootstrap(dw, w, seed=2)
    R = dw.sum() / w.sum()
    half = 1.96 * ((dw - R * w) / w.mean()).std() / math.sqrt(600)
    assert rw["tax"] == pytest.approx(R)
    assert (rw["ci_low"], rw["ci_high"]) == pytest.approx((R - half, R + half), abs=0.15 * half)


def test_paired_bootstrap_degenerate_and_bad_input():
    z = paired_bootstrap(np.zeros(9), np.arange(1, 10), seed=0)
    assert (z["tax"], z["ci_low"], z["ci_high"]) == (0.0, 0.0, 0.0)
    c = paired_bootstrap([0.25] * 5)
    assert c["ci_low"] == c["tax"] == c["ci_high"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        paired_bootstrap([])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0, 0.0])
    assert format_tax({"tax": 0.0412, "ci_low": 0.0201, "ci_high": 0.0634}) == "+0.041 (0.020–0.063)"


def test_identical_models_pay_no_tax(tiny_dir, tmp_path):
    res = run(EvalConfig(model=ModelConfig(name=tiny_dir), reference=tiny_dir, tax=True, task_size=3,
                         output_dir=str(tmp_path / "same")))
    for part in ("nll", "task"):
        t = res["tax"][part]
        assert t["tax"] == 0.0 and t["ci_low"] == 0.0 and t["ci_high"] == 0.0, part
        assert t["policy"] == t["start"]
    assert res["tax"]["nll"]["ppl_policy"] == res["tax"]["nll"]["ppl_start"]


# ------------------------------------------------------------------------ (b) end to end
def test_tax_end_to_end_against_a_plain_forward_pass(tiny_dir, perturbed_dir, tok, tmp_path, capsys):
    from rlhfkit.tasks.general_text import general_rows

    out = tmp_path / "e2e"
    res = run(EvalConfig(model=ModelConfig(name=perturbed_dir), reference=tiny_dir, tax=True,
                         tax_task="arithmetic", task_size=4, output_dir=str(out)))
    printed = capsys.readouterr().out
    assert "alignment tax" in printed and "held-out NLL" in printed and "arithmetic exact match" in printed
    assert set(res) == {"tax"}  # no rewards, data or task: only the tax was measured
    assert json.load(open(out / "eval.json"))["tax"] == json.loads(json.dumps(res["tax"]))
    n = res["tax"]["nll"]
    assert {"policy", "start", "tax", "ci_low", "ci_high", "n", "ppl_policy", "ppl_start"} <= set(n)
    # independent: the built-in general text, one forward pass per row, cross_entropy in float64
    rows = general_rows()
    p_sum, counts = row_nll_by_hand(perturbed_dir, rows, tok)
    s_sum, _ = row_nll_by_hand(tiny_dir, rows, tok)
    pol, st = p_sum.sum() / counts.sum(), s_sum.sum() / counts.sum()
    assert n["n"] == len(rows) and n["tokens"] == counts.sum()
    assert n["policy"] == pytest.approx(pol, rel=1e-4) and n["start"] == pytest.approx(st, rel=1e-4)
    assert n["tax"] == pytest.approx(pol - st, abs=1e-4) and n["tax"] != 0.0
    assert n["ppl_policy"] == pytest.approx(math.exp(pol), rel=1e-3)
    _, lo, hi = bootstrap_by_numpy(p_sum - s_sum, counts, seed=0)
    assert (n["ci_low"], n["ci_high"]) == pytest.approx((lo, hi), abs=1e-4)
    assert n["ci_low"] <= n["tax"] <= n["ci_high"] and n["ci_low"] < n["ci_high"]
    # the task: one greedy response per problem and model, exact match by the arithmetic verifier
    t = res["tax"]["task"]
    recs = [json.loads(line) for line in open(out / "tax_samples.jsonl")]
    assert t["name"] == "arithmetic" and t["n"] == 4 == len(recs)
    assert t["policy"] == sum(r["correct"] for r in recs) / 4 and t["start"] == sum(r["start_correct"] for r in recs) / 4
    assert t["tax"] == pytest.approx(t["start"] - t["policy"])
    assert t["ci_low"] <= t["tax"] <= t["ci_high"]


def test_task_tax_with_known_answers_and_nll_path(tiny_dir, perturbed_dir, tmp_path, monkeypatch):
    """Responses fixed per model: the policy solves problems 0, 1; the start 0, 2, 3, 4 (of 6)."""
    from rlhfkit.tasks.arithmetic import make_problems
    from rlhfkit.tasks.general_text import general_rows

    probs = make_problems(6, seed=99)
    solved = [{0, 1}, {0, 2, 3, 4}]
    calls = []

    def canned(model, tok, exs, cfg):
        who = solved[len(calls)]
        calls.append(1)
        return [f"It is {p['answer'] if i in who else int(p['answer']) + 1}." for i, p in enumerate(probs)]

    monkeypatch.setattr(tax_mod, "greedy_texts", canned)
    nll_path = write_jsonl(tmp_path / "general.jsonl", general_rows()[:7])
    res = run(EvalConfig(model=ModelConfig(name=perturbed_dir), reference=tiny_dir, tax=True, task_size=6,
                         task_seed=99, nll_path=nll_path, output_dir=str(tmp_path / "k")))
    t = res["tax"]["task"]
    assert (t["policy"], t["start"]) == (pytest.approx(2 / 6), pytest.approx(4 / 6))
    assert t["tax"] == pytest.approx(2 / 6)  # positive: the policy got worse
    d = [float(i in solved[1]) - float(i in solved[0]) for i in range(6)]
    _, lo, hi = bootstrap_by_numpy(d, np.ones(6), seed=0)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((lo, hi))
    assert res["tax"]["nll"]["n"] == 7 and res["tax"]["nll"]["source"] == nll_path


def test_tax_combined_with_the_ordinary_eval(tiny_dir, perturbed_dir, tmp_path, monkeypatch):
    from rlhfkit.rl import rollout
    from rlhfkit.tasks.general_text import general_rows

    calls = []
    real = rollout.HFBackend.generate

    def counting(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(rollout.HFBackend, "generate", counting)
    nll_path = write_jsonl(tmp_path / "general.jsonl", general_rows()[:5])
    res = run(EvalConfig(model=ModelConfig(name=perturbed_dir), reference=tiny_dir, task="arithmetic", task_size=3,
                         rewards=["arithmetic"], nll_path=nll_path, tax=True, tax_task="none",
                         output_dir=str(tmp_path / "c")))
    assert len(calls) == 2  # the ordinary eval's policy and reference; tax_task none generates nothing
    assert "win_rate" in res and "task" not in res["tax"]
    # the plain fields come from the same per-row values
    assert res["policy"]["nll"] == res["tax"]["nll"]["policy"] and res["reference"]["nll"] == res["tax"]["nll"]["start"]
    assert res["nll_tax"] == res["tax"]["nll"]["tax"]


def test_gsm8k_task_reads_test_rows_and_uses_the_gsm8k_verifier(tiny_dir, tmp_path, monkeypatch):
    rows = [{"question": "Ann has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
            {"question": "Ben has 10 pens and loses 2. How many?", "answer": "10 - 2 = 8\n#### 8"},
            {"question": "Not used (beyond task_size).", "answer": "#### 1"}]
    d = tmp_path / "gsm8k"
    d.mkdir()
    write_jsonl(d / "test.jsonl", rows)
    calls = []

    def canned(model, tok, exs, cfg):
        calls.append(1)
        return ["#### 7", "The answer is 9."] if len(calls) == 1 else ["We get 7.", "#### 8, done"]

    monkeypatch.setattr(tax_mod, "greedy_texts", canned)
    res = run(EvalConfig(model=ModelConfig(name=tiny_dir), reference=tiny_dir, tax=True, tax_task="gsm8k",
                         tax_gsm8k_path=str(d), task_size=2, output_dir=str(tmp_path / "g")))
    t = res["tax"]["task"]
    assert (t["name"], t["n"], t["policy"], t["start"], t["tax"]) == ("gsm8k", 2, 0.5, 1.0, 0.5)


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "test.jsonl").exists(), reason="no shared GSM8K data")
def test_gsm8k_default_path_is_the_shared_data():
    got = tax_mod.gsm8k_path(EvalConfig(tax=True, tax_task="gsm8k", reference="x"))
    assert os.path.samefile(got, SHARED_DATA / "gsm8k")


# ------------------------------------------------------------------------ (c) errors
@pytest.mark.parametrize("kw,text", [
    ({"tax": True}, "set reference"),
    ({"tax": True, "reference": "x", "tax_task": "arithmatic"}, "arithmetic, gsm8k, none"),
    ({"tax": True, "reference": "x", "tax_task": "gsm8k", "tax_gsm8k_path": "/nonexistent/gsm8k"}, "does not exist"),
    ({"tax": True, "reference": "x", "task_size": 0}, ">= 1"),
    ({"tax": True, "reference": "x", "reward_model": "rm"}, "reward_model"),
])
def test_tax_config_errors(kw, text, tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match=text.replace("(", r"\(")) as e:
        run(EvalConfig(model=ModelConfig(name=tiny_dir), output_dir=str(tmp_path / "x"), **kw))
    if "tax_task" in kw and kw["tax_task"] == "arithmatic":
        assert "did you mean 'arithmetic'" in str(e.value)


def test_tax_errors_at_parse_time_and_missing_default_gsm8k(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="tax_task must be one of arithmetic, gsm8k, none"):
        build_config(EvalConfig, None, [("tax", "true"), ("reference", "x"), ("tax_task", "mmlu")])
    monkeypatch.setattr(tax_mod, "default_gsm8k_dirs", lambda: [str(tmp_path / "nowhere")])
    with pytest.raises(ConfigError, match="set tax_gsm8k_path"):
        build_config(EvalConfig, None, [("tax", "true"), ("reference", "x"), ("tax_task", "gsm8k")])
    # without --tax the tax keys are not required to resolve
    assert build_config(EvalConfig, None, [("tax_task", "gsm8k")]).tax is False


# ------------------------------------------------------------------------ (d) the CLI
def test_cli_tax_flag(tiny_dir, perturbed_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["eval", "--tax", "--model.name", perturbed_dir, "--reference", tiny_dir, "--tax_task", "none",
                 "--output_dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "alignment tax" in printed and "95% CI" in printed
    res = json.load(open(out / "eval.json"))
    assert set(res) == {"tax"} and set(res["tax"]) == {"nll", "ci"}
    code = main(["eval", "--tax", "--model.name", perturbed_dir, "--output_dir", str(out)])
    assert code == 2 and "set reference" in capsys.readouterr().err

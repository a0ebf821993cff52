"""Blind human A/B evaluation: the win rate and its Wilson interval against hand-computed and
published values, simulated annotators over HTTP, ``rlhfkit eval --human`` beside a reward's win
rate, the ``studio humaneval`` command on tiny models, and bad input."""

import json
import math
import shutil

import httpx
import pytest
from studio_helpers import auth, live_server, studio

from conftest import write_jsonl
from rlhfkit.cli import main
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.evaluate import EvalConfig, run as eval_run
from rlhfkit.studio import db
from rlhfkit.studio.humaneval import human_win_rate, label_score, win_rate_wilson

Z = 1.959963984540054


def wilson_by_hand(s, n):
    """Wilson (1927): (p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = s / n
    c = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    h = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return c - h, c + h


def test_wilson_matches_newcombe_1998_table():
    # Newcombe, Statistics in Medicine 17 (1998), Table II, method 3 (score interval, no correction)
    for s, n, lo, hi in [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
                         (1, 29, 0.0061, 0.1718)]:
        w = win_rate_wilson([1.0] * s + [0.0] * (n - s))
        assert w["n"] == n and w["win_rate"] == pytest.approx(s / n)
        assert round(w["ci_low"], 4) == lo and round(w["ci_high"], 4) == hi


def test_ties_count_half():
    # 7 prompts won, 1 tied, 2 lost: p = 7.5 / 10 = 0.75
    w = win_rate_wilson([1.0] * 7 + [0.5] + [0.0] * 2)
    assert w["win_rate"] == 0.75
    # by hand: c = (0.75 + 0.19207294) / 1.38414588 = 0.68061680, h = 1.95996 * sqrt(0.01875 + 0.00960365) / 1.38414588
    assert w["ci_low"] == pytest.approx(0.44218142427854984, abs=1e-12)
    assert w["ci_high"] == pytest.approx(0.9190521757900056, abs=1e-12)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx(wilson_by_hand(7.5, 10), abs=1e-12)
    # all ties: ½ exactly, a symmetric interval; no prompts: undefined
    w = win_rate_wilson([0.5] * 4)
    assert w["win_rate"] == 0.5 and w["ci_low"] + w["ci_high"] == pytest.approx(1.0)
    assert math.isnan(win_rate_wilson([])["win_rate"])
    assert label_score({"outcome": "win", "winner": 1}, 1) == 1.0
    assert label_score({"outcome": "win", "winner": 0}, 1) == 0.0
    assert label_score({"outcome": "both_bad", "winner": None}, 0) == 0.5
    assert label_score({"outcome": "tie", "winner": None}, 0) == 0.5


def he_records(n=6):
    """A's responses are the longer ones; stored order alternates, meta.models says which is which."""
    recs = []
    for i in range(n):
        a, b = f"model A answers question {i} at length.", f"B: {i}"
        recs.append({"prompt": f"Question {i}?", "responses": [a, b] if i % 2 == 0 else [b, a],
                     "meta": {"models": ["mA", "mB"] if i % 2 == 0 else ["mB", "mA"], "humaneval": True}})
    return recs


def label_over_http(url, token, prefer, project="he"):
    """An annotator over HTTP: ``prefer(prompt, shown responses) -> "A" | "B" | "tie"``; the
    positions the server showed are returned per prompt."""
    shown = {}
    with httpx.Client(base_url=url, headers=auth(token), timeout=30) as c:
        while (it := c.get(f"/api/projects/{project}/next").json()["item"]) is not None:
            shown[it["prompt"]] = it["responses"]
            r = c.post(f"/api/projects/{project}/items/{it['id']}/label",
                       json={"choice": prefer(it["prompt"], it["responses"])})
            assert r.status_code == 201, r.text
    return shown


def longer(prompt, resp):
    return "A" if len(resp[0]) > len(resp[1]) else "B"


@pytest.fixture
def judged(tmp_path):
    """Two annotators, overlap 2: 'ann' always prefers the longer response (model A); 'bob' too,
    except that he calls questions 0 and 1 a tie."""
    engine, tokens = studio(tmp_path, records=he_records(), annotators=("ann", "bob"), overlap=2, name="he", seed=7)
    with live_server(engine) as url:
        shown = label_over_http(url, tokens["ann"], longer)
        label_over_http(url, tokens["bob"], lambda p, r: "tie" if p in ("Question 0?", "Question 1?") else longer(p, r))
    engine.dispose()
    return str(tmp_path / "studio"), shown


def test_human_win_rate_from_annotators_over_http(judged):
    directory, shown = judged
    # the order is randomised per annotator: A was shown second at least once
    assert any(len(r[1]) > len(r[0]) for r in shown.values()) and any(len(r[0]) > len(r[1]) for r in shown.values())
    engine = db.open_db(directory)
    h = human_win_rate(engine, "he")
    engine.dispose()
    # questions 0, 1: (1 + ½) / 2 = 0.75 each; questions 2-5: 1 -> (2 × 0.75 + 4) / 6
    assert h["model_a"] == "mA" and h["model_b"] == "mB" and h["interval"] == "wilson"
    assert h["win_rate"] == pytest.approx(5.5 / 6)
    assert (h["ci_low"], h["ci_high"]) == pytest.approx(wilson_by_hand(5.5, 6), abs=1e-12)
    assert (h["n"], h["n_labels"], h["wins_a"], h["wins_b"], h["ties"]) == (6, 12, 10, 0, 2)
    assert h["agreement"]["available"] and h["position_bias"] is not None


def test_eval_human_beside_a_reward_that_disagrees(judged, tmp_path, monkeypatch):
    directory, _ = judged
    d = tmp_path / "mod"
    d.mkdir()
    (d / "he_rewards.py").write_text("def shorter(prompts, completions, **kw):\n"
                                     "    return [-float(len(c)) for c in completions]\n"
                                     "def longer(prompts, completions, **kw):\n"
                                     "    return [float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(d))
    out = tmp_path / "eval"
    logs = []
    res = eval_run(EvalConfig(human=f"studio://{directory}::he", rewards=["fn:he_rewards:shorter"],
                              output_dir=str(out)), log=logs.append)
    assert res["human"]["win_rate"] == pytest.approx(5.5 / 6)
    # the reward prefers B on every prompt: win rate 0; the humans lean to A on all 6 prompts
    # (questions 0 and 1 at 0.75), so the reward agrees with them on none of the 6
    assert res["reward_win_rate"]["win_rate"] == 0.0 and res["reward_win_rate"]["n"] == 6
    assert res["reward_human_agreement"] == {"rate": 0.0, "n": 6}
    agreeing = eval_run(EvalConfig(human=f"studio://{directory}::he", rewards=["fn:he_rewards:longer"],
                                   output_dir=str(tmp_path / "eval2")), log=logs.append)
    assert agreeing["reward_win_rate"]["win_rate"] == 1.0
    assert agreeing["reward_human_agreement"] == {"rate": 1.0, "n": 6}
    saved = json.load(open(out / "eval.json"))
    assert saved["human"]["wins_a"] == 10 and "_items" not in saved["human"]
    text = "\n".join(logs)
    assert "human win-rate A over B   0.917" in text and "reward win-rate A over B  0.000" in text


def test_bad_input(judged, tmp_path):
    directory, _ = judged
    with pytest.raises(ConfigError, match="human must be a studio project"):
        eval_run(EvalConfig(human=str(tmp_path / "x.jsonl"), output_dir=str(tmp_path / "e")))
    with pytest.raises(ConfigError, match="do not apply"):
        eval_run(EvalConfig(human=f"studio://{directory}::he?format=pairs", output_dir=str(tmp_path / "e")))
    with pytest.raises(DataError, match="no project named 'nope'"):
        eval_run(EvalConfig(human=f"studio://{directory}::nope", output_dir=str(tmp_path / "e")))
    # a project without model identities is not a human evaluation
    engine = db.open_db(directory)
    db.create_project(engine, "plain", "pairwise", [{"prompt": "q", "responses": ["x", "y"]}])
    db.create_project(engine, "empty", "pairwise", he_records(2))
    engine.dispose()
    with pytest.raises(DataError, match="not a human evaluation of two models"):
        eval_run(EvalConfig(human=f"studio://{directory}::plain", output_dir=str(tmp_path / "e")))
    with pytest.raises(DataError, match="no labels yet"):
        eval_run(EvalConfig(human=f"studio://{directory}::empty", output_dir=str(tmp_path / "e")))


def test_humaneval_command_on_tiny_models(tiny_dir, tmp_path, capsys):
    other = str(tmp_path / "tiny-b")
    shutil.copytree(tiny_dir, other)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {i}."} for i in range(4)])
    directory = str(tmp_path / "studio")
    assert main(["studio", "user", "add", "ann", "--dir", directory]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["studio", "humaneval", "he", "--model_a", tiny_dir, "--model_b", other, "--prompts", prompts,
                 "--assign", "ann", "--max_new_tokens", "6", "--dir", directory]) == 0
    assert f"rlhfkit eval --human studio://{directory}::he" in capsys.readouterr().out
    engine = db.open_db(directory)
    _, items, _ = db.project_labels(engine, "he")
    assert len(items) == 4 and all(it["meta"]["models"] == [tiny_dir, other] for it in items)
    with live_server(engine) as url:  # the annotator always picks the response shown first
        label_over_http(url, token, lambda p, r: "A")
    engine.dispose()
    assert main(["eval", "--human", f"studio://{directory}::he", "--output_dir", str(tmp_path / "ev")]) == 0
    res = json.load(open(tmp_path / "ev" / "eval.json"))
    # which model won each prompt depends on the order this annotator was shown: recompute it here
    engine = db.open_db(directory)
    _, items, labels = db.project_labels(engine, "he")
    engine.dispose()
    wins = sum(1 for lab in labels if lab["value"]["winner"] == 0)  # stored index 0 = model A
    assert res["human"]["wins_a"] == wins and res["human"]["win_rate"] == pytest.approx(wins / 4)
    assert res["human"]["position_bias"] is not None
    # the same model twice cannot be told apart
    assert main(["studio", "humaneval", "he2", "--model_a", tiny_dir, "--model_b", tiny_dir, "--prompts", prompts,
                 "--dir", directory]) == 2
    assert "same model" in capsys.readouterr().err


def test_eval_human_with_a_trained_reward_model(judged, tiny_dir, tmp_path):
    """``--reward_model DIR`` (a reward model trained by ``rlhfkit rm``) scores the same two
    responses per prompt; its win rate is the mean of 1 / ½ / 0 over its own score comparisons."""
    from rlhfkit.rewards.model import RewardModel
    from rlhfkit.tasks.arithmetic import make_problems, preference_rows

    directory, _ = judged
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(make_problems(8, seed=1), seed=0))
    rm_dir = tmp_path / "rm"
    assert main(["rm", "--model.name", tiny_dir, "--data.path", data, "--data.max_length", "96",
                 "--train.batch_size", "4", "--train.max_steps", "1", "--train.progress", "false",
                 "--train.tensorboard", "false", "--train.save_steps", "0", "--train.output_dir", str(rm_dir)]) == 0
    res = eval_run(EvalConfig(human=f"studio://{directory}::he", reward_model=str(rm_dir / "final"),
                              output_dir=str(tmp_path / "ev")), log=lambda *a: None)
    recs = he_records()
    rm = RewardModel.load(str(rm_dir / "final"))
    a = [r["responses"][r["meta"]["models"].index("mA")] for r in recs]
    b = [r["responses"][r["meta"]["models"].index("mB")] for r in recs]
    sa, sb = rm.score([r["prompt"] for r in recs], a), rm.score([r["prompt"] for r in recs], b)
    want = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(sa, sb)) / len(recs)
    assert res["reward_win_rate"]["win_rate"] == pytest.approx(want) and res["reward_win_rate"]["n"] == 6
    assert res["human"]["win_rate"] == pytest.approx(5.5 / 6)

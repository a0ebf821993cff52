"""Labels collected in the studio train the reward model, DPO and KTO for 2 steps on a tiny model:
from an exported file and from a ``studio://`` data path; and a task sampled from a model."""

import json
import math
import os

import pytest
from studio_helpers import studio

from conftest import train_losses, write_jsonl
from rlhfkit.cli import main
from rlhfkit.studio import db
from rlhfkit.tasks.arithmetic import make_problems, preference_rows

COMMON = ["--model.name", None, "--data.max_length", "96", "--train.batch_size", "4", "--train.max_steps", "2",
          "--train.progress", "false", "--train.tensorboard", "false", "--train.lr", "5e-4",
          "--train.warmup_ratio", "0", "--train.save_steps", "0"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A pairwise project of 12 arithmetic pairs, each labelled by two annotators who prefer the
    correct sum (strength 2), as the studio stores it."""
    tmp = tmp_path_factory.mktemp("studio-train")
    rows = preference_rows(make_problems(12, seed=3), seed=0)
    recs = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]]} for r in rows]
    engine, tokens = studio(tmp, records=recs, annotators=("x", "y"), overlap=2)
    p = db.get_project(engine, "p")
    for who in ("x", "y"):
        user = db.user_for_token(engine, tokens[who])
        while (it := db.next_item(engine, "p", user)["item"]) is not None:
            correct = recs[it["position"]]["responses"][0]
            db.add_label(engine, p, it["id"], user, {"choice": "AB"[it["responses"].index(correct)], "strength": 2})
    engine.dispose()
    return str(tmp / "studio"), rows


def args(tiny_dir, out, data):
    a = list(COMMON)
    a[1] = tiny_dir
    return a + ["--train.output_dir", str(out), "--data.path", data]


def test_export_file_trains_rm_and_dpo(tiny_dir, labelled, tmp_path, capsys):
    directory, rows = labelled
    out = str(tmp_path / "pairs.jsonl")
    assert main(["studio", "export", "p", "--dir", directory, "--format", "pairs", "--out", out]) == 0
    exported = [json.loads(x) for x in open(out)]
    assert [(r["prompt"], r["chosen"], r["rejected"], r["margin"]) for r in exported] == [
        (r["prompt"], r["chosen"], r["rejected"], 2.0) for r in rows]
    assert main(["rm", *args(tiny_dir, tmp_path / "rm", out)]) == 0
    assert main(["dpo", *args(tiny_dir, tmp_path / "dpo", out)]) == 0
    for run in ("rm", "dpo"):
        losses = train_losses(str(tmp_path / run))
        assert [s for s, _ in losses] == [1, 2] and all(math.isfinite(v) for _, v in losses), (run, losses)
    # DPO starts from policy == reference: the first loss is log 2 exactly
    assert train_losses(str(tmp_path / "dpo"))[0][1] == pytest.approx(math.log(2), abs=1e-5)


def test_studio_path_trains_rm_dpo_and_kto_directly(tiny_dir, labelled, tmp_path, monkeypatch):
    directory, _ = labelled
    assert main(["rm", *args(tiny_dir, tmp_path / "rm", f"studio://{directory}::p")]) == 0
    monkeypatch.setenv("RLHFKIT_STUDIO_DIR", directory)
    assert main(["dpo", *args(tiny_dir, tmp_path / "dpo", "studio://p?min_agreement=1")]) == 0
    assert main(["kto", *args(tiny_dir, tmp_path / "kto", "studio://p")]) == 0  # unpaired rows: 12 up, 12 down
    for run in ("rm", "dpo", "kto"):
        losses = train_losses(str(tmp_path / run))
        assert [s for s, _ in losses] == [1, 2] and all(math.isfinite(v) for _, v in losses), (run, losses)


def test_unknown_studio_project_is_a_one_line_training_error(tiny_dir, labelled, tmp_path, capsys):
    directory, _ = labelled
    assert main(["dpo", *args(tiny_dir, tmp_path / "x", f"studio://{directory}::nope")]) == 2
    err = capsys.readouterr().err
    assert "no project named 'nope'" in err and err.count("\n") == 1


def test_project_from_prompts_sampled_by_the_rollout_engine(tiny_dir, tmp_path, capsys):
    d = str(tmp_path / "s")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}, {"prompt": [
        {"role": "user", "content": "Name a colour."}]}])
    assert main(["studio", "project", "create", "gen", "--kind", "ranking", "--data", prompts, "--dir", d,
                 "--sample_models", f"{tiny_dir},{tiny_dir}", "--num_responses", "3", "--max_new_tokens", "6"]) == 0
    assert "created with 2 items" in capsys.readouterr().out
    engine = db.open_db(d)
    items = db.project_labels(engine, "gen")[1]
    assert [len(it["responses"]) for it in items] == [3, 3]
    assert all(isinstance(r, str) for r in items[0]["responses"])
    assert all(isinstance(r, list) and r[0]["role"] == "assistant" for r in items[1]["responses"])
    assert items[0]["meta"]["models"] == [tiny_dir] * 3
    engine.dispose()
    assert os.path.isfile(os.path.join(d, "studio.db"))

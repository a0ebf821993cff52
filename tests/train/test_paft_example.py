"""examples/paft_compare.py end to end on a tiny model: every pipeline (sequential, ORPO, PAFT merges)
produces a loadable model that is scored; the base scored against itself is exactly at chance."""

import importlib.util
import math
import os

from conftest import write_jsonl
from rlhfkit.tasks.arithmetic import make_problems, preference_rows

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "paft_compare.py")


def load_example():
    spec = importlib.util.spec_from_file_location("paft_compare", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paft_compare_runs_every_pipeline(tiny_dir, tmp_path):
    ex = load_example()
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(make_problems(24, seed=2), seed=0))
    rows = ex.compare(tiny_dir, pairs, "0:16", "16:24", 2, str(tmp_path / "out"), lora_r=4, l1=50.0, lr=1e-2,
                      batch=4, max_length=96, threads=1, log=lambda *a: None)
    sparsity = rows.pop()["sparsity"]
    assert [r["model"] for r in rows] == ["base", "sequential", "orpo", "paft/linear", "paft/ties",
                                          "paft_dense/ties"]
    assert rows[0]["pref_accuracy"] == 0.5  # π = π_ref: every implicit reward margin is 0 (a tie)
    assert all(math.isfinite(r["sft_nll"]) and 0 <= r["pref_accuracy"] <= 1 for r in rows)
    assert len({round(r["sft_nll"], 6) for r in rows}) > 1  # the pipelines produced different models
    assert sparsity["sft"] is None and sparsity["sft_l1"] > 0.5

"""The precomputed reference log-prob cache is keyed by the reference's weights and the data.

A cache in the run dir must never serve log-probs of a different model or of different rows:
the model named by the same path can be replaced between two runs, and the data file too.
"""

from __future__ import annotations

import os
import shutil

import torch

from conftest import write_jsonl
from rlhfkit.config import DataConfig, ModelConfig, TrainConfig
from rlhfkit.tasks.arithmetic import make_problems, preference_rows
from rlhfkit.train import dpo


def quiet(*a):
    pass


def _cfg(model_dir, data, out):
    return dpo.DPOConfig(
        model=ModelConfig(name=str(model_dir)), data=DataConfig(path=str(data), max_length=96),
        train=TrainConfig(output_dir=str(out), batch_size=4, max_steps=1, progress=False,
                          tensorboard=False, warmup_ratio=0.0, lr_scheduler="constant"),
        loss_type="sigmoid", reference="precompute")


def _ref_values(trainer):
    return {ex.row: ex.extra["ref_logps"] for ex in trainer.recipe.examples if "ref_logps" in ex.extra}


def _replace_weights(model_dir, tiny_dir, seed):
    """Save a model with different weights under the same path (same name, same config)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for f in os.listdir(model_dir):
        if f.endswith((".safetensors", ".bin")):
            os.remove(os.path.join(model_dir, f))
    m.save_pretrained(model_dir)


def test_reference_cache_keyed_by_weights_not_name(tiny_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(make_problems(8, seed=3), seed=0))
    out = tmp_path / "run"

    first = _ref_values(dpo.build(_cfg(model_dir, data, out), log=quiet))
    assert first and os.path.isfile(out / "ref_logps_train.pt")

    logs = []
    again = _ref_values(dpo.build(_cfg(model_dir, data, out), log=logs.append))
    assert again == first and not any("precomputed" in m for m in logs)  # same weights: reused

    _replace_weights(model_dir, tiny_dir, seed=1)
    logs = []
    fresh = _ref_values(dpo.build(_cfg(model_dir, data, out), log=logs.append))
    assert any("precomputed" in m for m in logs), "stale cache reused for new weights"
    assert fresh.keys() == first.keys()
    assert all(fresh[r] != first[r] for r in first)  # log-probs of the new weights


def test_reference_cache_keyed_by_token_ids(tiny_dir, tmp_path):
    """Same model, same number of rows, different rows in the data file: recomputed."""
    data = tmp_path / "p.jsonl"
    out = tmp_path / "run"
    write_jsonl(data, preference_rows(make_problems(8, seed=3), seed=0))
    first = _ref_values(dpo.build(_cfg(tiny_dir, data, out), log=quiet))
    write_jsonl(data, preference_rows(make_problems(8, seed=4), seed=0))
    logs = []
    second = _ref_values(dpo.build(_cfg(tiny_dir, data, out), log=logs.append))
    assert any("precomputed" in m for m in logs)
    assert second != first

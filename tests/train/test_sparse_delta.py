"""PAFT's sparse SFT delta: the proximal L1 step after each update, checked against the same
update without it, soft-thresholded in numpy (docs/algorithms.md#paft)."""

import numpy as np
import pytest
import torch

from conftest import write_jsonl
from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.tasks.arithmetic import make_problems, sft_rows
from rlhfkit.train import sft
from rlhfkit.train.sparsity import DeltaL1


def quiet(*a, **k):
    pass


def soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def trainable(model):
    return {n: p.detach().double().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}


def one_step(tiny_dir, path, out, l1, lora):
    m = ModelConfig(name=tiny_dir, lora=LoraConfig(r=4)) if lora else ModelConfig(name=tiny_dir)
    cfg = sft.SFTConfig(model=m, data=DataConfig(path=path, max_length=128), l1_coef=l1,
                        train=TrainConfig(output_dir=str(out), max_steps=1, batch_size=4, lr=1e-2,
                                          warmup_ratio=0.0, lr_scheduler="constant", progress=False,
                                          tensorboard=False))
    torch.manual_seed(0)
    t = sft.build(cfg, log=quiet)
    before = trainable(t.recipe.model)
    t.train()
    return before, trainable(t.recipe.model), t.last_record


@pytest.mark.parametrize("lora", [False, True])
def test_proximal_step_equals_soft_threshold_of_the_plain_update(tiny_dir, tmp_path, lora):
    path = write_jsonl(tmp_path / "sft.jsonl", sft_rows(make_problems(8, seed=1)))
    lam = 0.6
    start, plain, _ = one_step(tiny_dir, path, tmp_path / "plain", 0.0, lora)
    start2, sparse, rec = one_step(tiny_dir, path, tmp_path / "l1", lam, lora)
    zeros = total = 0
    for name in plain:
        np.testing.assert_array_equal(start[name], start2[name])  # the same starting point
        anchor = np.zeros_like(start[name]) if lora else start[name]
        want = anchor + soft(plain[name] - anchor, 1e-2 * lam)
        np.testing.assert_allclose(sparse[name], want, rtol=0, atol=1e-6, err_msg=name)
        d = want - anchor
        zeros += int((np.abs(d) < 1e-12).sum())
        total += d.size
    assert 0 < zeros < total  # the threshold zeroes some entries, not all
    assert rec["train/delta_sparsity"] == pytest.approx(zeros / total, abs=2e-3)


def test_delta_l1_on_hand_values():
    p = torch.nn.Parameter(torch.tensor([1.0, -0.2, 0.05, -1.5]))
    opt = torch.optim.SGD([p], lr=0.1)
    prox = DeltaL1(torch.nn.Module(), 2.0, lora=True)  # towards zero, threshold 0.1 x 2 = 0.2
    got = prox(opt)
    assert p.detach().tolist() == pytest.approx([0.8, 0.0, 0.0, -1.3])
    assert got["delta_sparsity"] == 0.5


def test_l1_coef_is_validated(tiny_dir, tmp_path):
    cfg = sft.SFTConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path="x.jsonl"), l1_coef=-1.0,
                        train=TrainConfig(output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="l1_coef"):
        sft.build(cfg, log=quiet)

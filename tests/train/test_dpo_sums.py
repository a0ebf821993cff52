"""Weighted sums of pair losses (MPO: ``loss_type: [sigmoid, bco_pair, sft]``), bco_pair's running
reward mean, LD-DPO's length desensitisation (``ld_alpha``) end to end on a tiny model, each
checked against numbers computed here from plain forward passes; and their config errors."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import write_jsonl
from rlhfkit.config import DataConfig, ModelConfig, TrainConfig, build_config
from rlhfkit.data.tokenize import Renderer
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import load_model
from rlhfkit.tasks.arithmetic import make_problems, preference_rows
from rlhfkit.train import dpo


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo-sums")
    probs = make_problems(20, seed=5)
    return {"train": write_jsonl(d / "p.jsonl", preference_rows(probs[:16], seed=0, estimate_frac=0.5)),
            "eval": write_jsonl(d / "e.jsonl", preference_rows(probs[16:], seed=1))}


def cfg_for(tiny_dir, pairs, out, loss_type="sigmoid", **kw):
    train = dict(output_dir=str(out), batch_size=16, lr=5e-3, progress=False, tensorboard=False,
                 warmup_ratio=0.0, lr_scheduler="constant", max_steps=2)
    train.update(kw.pop("train", {}))
    return dpo.DPOConfig(model=ModelConfig(name=tiny_dir),
                         data=DataConfig(path=pairs["train"], eval_path=pairs["eval"], max_length=96),
                         train=TrainConfig(**train), loss_type=loss_type, **kw)


def token_logps(model, tok, pairs):
    """Per pair: the chosen and the rejected completions' token log-probs (float64), by a plain forward."""
    r, out = Renderer(tok), []
    for i, line in enumerate(open(pairs["train"])):
        ex = r.example({"kind": "preference", "row": i, **json.loads(line)})
        per = []
        for c in ex.completions:
            ids, p = ex.prompt + c, len(ex.prompt)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            per.append(torch.stack([logp[p - 1 + j, t] for j, t in enumerate(c)]))
        out.append(per)
    return out


def test_mpo_weighted_sum_at_the_start(tiny_dir, tok, pairs, tmp_path):
    """Policy = reference: sigmoid = log 2, bco_pair = 2 log 2 (δ = 0), sft = the chosen token-mean NLL."""
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, "sigmoid,bco_pair,sft", loss_weights=[0.8, 0.2, 1.0]), log=quiet)
    first = t._train_step(0)
    nll = sum(float(-w.mean()) for w, _ in token_logps(load_model(tiny_dir)[0].eval(), tok, pairs)) / 16
    assert first["train/loss/sigmoid"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["train/loss/bco_pair"] == pytest.approx(2 * math.log(2), abs=1e-6)
    assert first["train/loss/sft"] == pytest.approx(nll, rel=1e-4)
    assert first["train/loss"] == pytest.approx(0.8 * math.log(2) + 0.2 * 2 * math.log(2) + nll, rel=1e-4)


def test_bco_delta_is_a_running_mean_over_steps(tiny_dir, pairs, tmp_path):
    """δ after step 2 = (sum of step 1's rewards (all 0) + sum of step 2's) / (all 4N rewards)."""
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, "bco_pair"), log=quiet)
    first, second = t._train_step(0), t._train_step(1)
    assert first["train/bco/delta"] == pytest.approx(0.0, abs=1e-7)
    c, r = second["train/rewards/chosen"], second["train/rewards/rejected"]  # means over the N = 16 pairs
    assert abs(c + r) > 1e-4  # the policy moved: the batch mean differs from the running mean
    assert second["train/bco/delta"] == pytest.approx(16 * (c + r) / 64, rel=1e-4, abs=1e-7)
    mean, n = t.recipe.state["bco_delta"]
    assert n == 64 and mean == pytest.approx(second["train/bco/delta"], rel=1e-5)


def test_ld_weights_by_hand():
    class B:  # two pairs: (chosen 3 tokens, rejected 5), (chosen 4, rejected 2)
        num_sequences = 4
        tgt_seq = torch.tensor([0] * 3 + [1] * 5 + [2] * 4 + [3] * 2)
        tgt_mask = torch.ones(14)
    w = dpo.ld_weights(B, torch.tensor([3.0, 5.0, 4.0, 2.0]), torch.tensor([0, 2]), torch.tensor([1, 3]), 0.25)
    assert w.tolist() == [1, 1, 1] + [1, 1, 1, 0.25, 0.25] + [1, 1, 0.25, 0.25] + [1, 1]


def test_ld_alpha_against_a_plain_forward(tiny_dir, tok, pairs, tmp_path):
    """Reference = a perturbed copy; the loss is −log σ(βΔ) with LD-weighted sums of both models."""
    ref = load_model(tiny_dir)[0].eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    policy = load_model(tiny_dir)[0].eval()
    a, beta = 0.3, 0.1
    pol, rf = token_logps(policy, tok, pairs), token_logps(ref, tok, pairs)

    def ld(x, public):
        return float(x[:public].sum() + a * x[public:].sum())

    want = []
    for (pw, pl), (rw, rl) in zip(pol, rf):
        lp = min(len(pw), len(pl))
        d = (ld(pw, lp) - ld(rw, lp)) - (ld(pl, lp) - ld(rl, lp))
        want.append(float(-F.logsigmoid(torch.tensor(beta * d))))
    assert any(len(pw) != len(pl) for pw, pl in pol)  # some pairs have a longer response
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, ld_alpha=a, reference="model", beta=beta), log=quiet,
                  ref_model=ref)
    assert t._train_step(0)["train/loss"] == pytest.approx(sum(want) / len(want), rel=1e-4)
    plain = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / "plain", reference="model", beta=beta), log=quiet,
                      ref_model=ref)._train_step(0)["train/loss"]
    assert abs(plain - sum(want) / len(want)) > 1e-5  # the weighting changed the loss


def test_yaml_list_form(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("loss_type: [sigmoid, bco_pair, sft]\nloss_weights: [0.8, 0.2, 1.0]\n")
    cfg = build_config(dpo.DPOConfig, str(y), [])
    assert cfg.loss_type == "sigmoid,bco_pair,sft" and cfg.loss_weights == [0.8, 0.2, 1.0]
    cfg = build_config(dpo.DPOConfig, None, [("loss_type", "sigmoid, sft"), ("loss_weights", "1,0.5")])
    assert cfg.loss_type == "sigmoid,sft"


@pytest.mark.parametrize("kw,match", [
    (dict(loss_type="sigmoid,sft", loss_weights=[1.0]), "loss_weights has 1"),
    (dict(loss_type="sigmoid,sigmoid"), "twice"),
    (dict(loss_type="sigmoid,plackett_luce"), "plackett_luce"),
    (dict(loss_type="sigmoid,sfft"), "did you mean 'sft'"),
    (dict(loss_type="sigmoid,sft", loss_weights=[1.0, -1.0]), r"loss_weights\[1\] must be"),
    (dict(ld_alpha=1.5), r"ld_alpha must be .*<= 1"),
    (dict(cpo_alpha=-1.0), "cpo_alpha"),
    (dict(loss_type="sigmoid", cpo_alpha=2.0), "does not use cpo_alpha"),
    (dict(loss_type="", ), "empty"),
])
def test_config_errors(kw, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        dpo.validate(dpo.DPOConfig(**kw))


def test_ld_alpha_refuses_a_precomputed_reference(tiny_dir, pairs, tmp_path):
    with pytest.raises(ConfigError, match="reference=precompute"):
        dpo.build(cfg_for(tiny_dir, pairs, tmp_path, ld_alpha=0.5, reference="precompute"), log=quiet)

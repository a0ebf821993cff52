"""WPO pair weighting (``use_weighting``) and the f-divergence modifier in the DPO recipe, end to end on
a tiny model: the weight against a float64 recomputation from explicit full-vocabulary logits, the
loss as weight × unweighted loss per pair, no gradient through the weight; config errors and TRL's
key names (docs/algorithms.md#wpo, #f-divergence)."""

import copy
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

BETA = 0.1


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo-wpo")
    probs = make_problems(12, seed=9)
    return {"train": write_jsonl(d / "p.jsonl", preference_rows(probs[:8], seed=2, estimate_frac=0.5)),
            "eval": write_jsonl(d / "e.jsonl", preference_rows(probs[8:], seed=3))}


@pytest.fixture(scope="module")
def ref(tiny_dir):
    """A perturbed copy of the tiny model: the reference, so that policy ≠ reference from step 0."""
    m = load_model(tiny_dir)[0].eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def cfg_for(tiny_dir, pairs, out, loss_type="sigmoid", **kw):
    train = dict(output_dir=str(out), batch_size=8, lr=5e-3, progress=False, tensorboard=False,
                 warmup_ratio=0.0, lr_scheduler="constant", max_steps=2)
    train.update(kw.pop("train", {}))
    return dpo.DPOConfig(model=ModelConfig(name=tiny_dir),
                         data=DataConfig(path=pairs["train"], eval_path=pairs["eval"], max_length=96),
                         train=TrainConfig(**train), loss_type=loss_type, beta=BETA, **kw)


def explicit(model, tok, pairs):
    """Per pair and response, from full (L, V) logits in float64: (Σ_t log p(y_t), ℓ(y)) with
    ℓ(y) = mean_t [log p(y_t) − log Σ_v p_v²] (the WPO paper's sampling-aligned log-weight)."""
    r, out = Renderer(tok), []
    for i, line in enumerate(open(pairs["train"])):
        ex = r.example({"kind": "preference", "row": i, **json.loads(line)})
        per = []
        for c in ex.completions:
            ids, p = ex.prompt + c, len(ex.prompt)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double()
            lsm = torch.log_softmax(logits, -1)
            rows = torch.arange(p - 1, p - 1 + len(c))
            tok_logp = lsm[rows, torch.tensor(c)]
            log_sum_sq = torch.log((lsm[rows].exp() ** 2).sum(-1))
            per.append((float(tok_logp.sum()), float((tok_logp - log_sum_sq).mean())))
        out.append(per)
    return out


def wpo(lw, ll):
    return min(1.0, math.exp(lw + ll))


def test_weight_and_weighted_loss_vs_explicit_logits(tiny_dir, tok, pairs, ref, tmp_path):
    policy = load_model(tiny_dir)[0].eval()
    pol, rf = explicit(policy, tok, pairs), explicit(ref, tok, pairs)
    w, plain = [], []
    for ((pw, lw), (pl, ll)), ((rw, _), (rl, _)) in zip(pol, rf):
        w.append(wpo(lw, ll))
        plain.append(float(-F.logsigmoid(torch.tensor(BETA * ((pw - rw) - (pl - rl)), dtype=torch.float64))))
    assert 0 < min(w) < 0.9 and len(set(w)) > 3  # the weights differ between pairs (some are capped at 1)
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, use_weighting=True, reference="model"), log=quiet,
                  ref_model=ref)
    first = t._train_step(0)
    assert first["train/weight_mean"] == pytest.approx(sum(w) / len(w), rel=1e-4)
    assert first["train/loss"] == pytest.approx(sum(a * b for a, b in zip(w, plain)) / len(w), rel=1e-4)
    # without weighting the same step is the plain mean (so the weighting changed the loss)
    t0 = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / "plain", reference="model"), log=quiet, ref_model=ref)
    assert t0._train_step(0)["train/loss"] == pytest.approx(sum(plain) / len(plain), rel=1e-4)
    assert abs(sum(plain) / len(plain) - first["train/loss"]) > 1e-3


def test_weight_with_a_chunked_lm_head_and_reference_free_loss(tiny_dir, tok, pairs, tmp_path):
    """logprob_chunk 3: the normaliser comes chunk by chunk; simpo needs no reference."""
    pol = explicit(load_model(tiny_dir)[0].eval(), tok, pairs)
    want = sum(wpo(lw, ll) for (_, lw), (_, ll) in pol) / len(pol)
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, "simpo", use_weighting=True, train={"logprob_chunk": 3}),
                  log=quiet)
    assert t._train_step(0)["train/weight_mean"] == pytest.approx(want, rel=1e-4)


def test_no_gradient_through_the_weight(tiny_dir, pairs, ref, tmp_path, monkeypatch):
    """One pair: ∇(w·L) = w·∇L when w is a constant. With a weight that kept its gradient (the
    same function without the stop-gradient, patched in) the extra L·∇w term breaks the equality."""
    tw = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / "w", use_weighting=True, reference="model"), log=quiet,
                   ref_model=ref)
    tp = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / "p", reference="model"), log=quiet, ref_model=ref)
    model = tw.recipe.model
    batch = tw.recipe.collate(tw.recipe.examples[:1])

    def grads(t):
        model.zero_grad()
        out = t.recipe.step(model, batch)
        out.sum.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), out.metrics

    gw, mw = grads(tw)
    gp, _ = grads(tp)
    w = mw["weight_mean"]
    assert 0 < w < 1
    tol = 1e-5 * float(gp.abs().max())
    assert float((gw - w * gp).abs().max()) < tol
    monkeypatch.setattr(dpo, "wpo_weight", lambda a, b: torch.exp((a + b).clamp(max=0.0)))  # no detach
    g_live, m_live = grads(tw)
    assert m_live["weight_mean"] == pytest.approx(w, rel=1e-6)
    assert float((g_live - w * gp).abs().max()) > 100 * tol


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "f_divergence"])
def test_f_divergence_reaches_the_loss(tiny_dir, tok, pairs, ref, tmp_path, loss_type):
    """forward KL on a perturbed reference: sigmoid's loss is −log σ(β((1 − e^{−h_w}) − (1 − e^{−h_l}))),
    computed here from explicit logits; the other losses differ from their reverse-KL runs."""
    pol, rf = explicit(load_model(tiny_dir)[0].eval(), tok, pairs), explicit(ref, tok, pairs)
    t = dpo.build(cfg_for(tiny_dir, pairs, tmp_path, loss_type, f_divergence="forward_kl", reference="model"),
                  log=quiet, ref_model=ref)
    got = t._train_step(0)["train/loss"]
    if loss_type in ("sigmoid", "f_divergence"):
        want = []
        for ((pw, _), (pl, _)), ((rw, _), (rl, _)) in zip(pol, rf):
            z = BETA * (math.exp(-(pl - rl)) - math.exp(-(pw - rw)))
            want.append(math.log1p(math.exp(-z)))
        assert got == pytest.approx(sum(want) / len(want), rel=1e-4)
    plain = dpo.build(cfg_for(tiny_dir, pairs, tmp_path / "rkl", loss_type, reference="model"), log=quiet,
                      ref_model=ref)._train_step(0)["train/loss"]
    assert abs(got - plain) > 1e-5


@pytest.mark.parametrize("kw,match", [
    (dict(loss_type="apo_zero", f_divergence="forward_kl"), "does not apply to loss_type apo_zero.*sigmoid"),
    (dict(loss_type="simpo", f_divergence="js"), "simpo .*no reference ratio"),
    (dict(loss_type="tdpo", f_divergence="alpha"), "tdpo .*reverse KL"),
    (dict(loss_type="sigmoid,bco_pair", f_divergence="js"), "loss_type bco_pair"),
    (dict(loss_type="plackett_luce", f_divergence="js"), "plackett_luce .*ranks lists"),
    (dict(f_divergence="hellinger"), "f_divergence must be one of reverse_kl, forward_kl, js, alpha"),
    (dict(f_alpha=0.3), "f_alpha sets α of the α-divergence but f_divergence is reverse_kl"),
    (dict(loss_type="plackett_luce", use_weighting=True), "use_weighting"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        dpo.validate(dpo.DPOConfig(**kw))


def test_reverse_kl_with_any_loss_and_trl_spellings():
    for name in ("apo_zero", "simpo", "tdpo", "bco_pair"):
        dpo.validate(dpo.DPOConfig(loss_type=name))  # the default divergence is accepted by every loss
    c = dpo.DPOConfig(loss_type="ipo", f_divergence="js_divergence")
    dpo.validate(c)
    assert c.f_divergence == "js"


def test_trl_key_names():
    c = build_config(dpo.DPOConfig, None, [("f_divergence_type", "alpha_divergence"),
                                           ("f_alpha_divergence_coef", "0.7"), ("loss_type", "hinge"),
                                           ("use_weighting", "true")])
    assert (c.f_divergence, c.f_alpha, c.use_weighting) == ("alpha", 0.3, True)  # TRL's a is 1 − α
    c = build_config(dpo.DPOConfig, None, [("f_divergence_type", "js_divergence"), ("f_alpha_divergence_coef", "1.0")])
    assert (c.f_divergence, c.f_alpha) == ("js", 0.5)  # as TRL: the coefficient is read by the α-divergence only
    with pytest.raises(ConfigError, match="1 − α"):
        build_config(dpo.DPOConfig, None, [("f_divergence_type", "alpha_divergence"),
                                           ("f_alpha_divergence_coef", "1.0")])
    with pytest.raises(ConfigError, match="disagree"):
        build_config(dpo.DPOConfig, None, [("f_divergence", "alpha"), ("f_alpha", "0.4"),
                                           ("f_alpha_divergence_coef", "0.7")])

"""The f-divergence modifier (docs/algorithms.md#f-divergence) on every loss that takes it: values
and gradients under forward KL, Jensen–Shannon and α-divergences against float64 numpy written
from the equations (gradients by central differences of the numpy loss); reverse KL leaves every
loss bit-identical; the losses that do not take it are the ones the math excludes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.losses.preference import (PREFERENCE_SPECS, PairLogps, f_divergence_losses, f_log_ratio,
                                       get_preference_loss, get_preference_spec)

BETA = 0.4
APPLICABLE = ["sigmoid", "cdpo", "robust", "hinge", "ipo", "rdpo", "exo_pair", "discopop", "sigmoid_norm",
              "f_divergence"]
PARAMS = {"sigmoid": {"label_smoothing": 0.1}, "cdpo": {"label_smoothing": 0.2}, "robust": {"label_smoothing": 0.2},
          "hinge": {}, "ipo": {"ipo_length_normalize": True}, "rdpo": {"alpha": 0.05},
          "exo_pair": {"label_smoothing": 0.1}, "discopop": {"discopop_tau": 0.5}, "sigmoid_norm": {},
          "f_divergence": {}}
DIVS = [("forward_kl", 0.5), ("js", 0.5), ("alpha", 0.3), ("alpha", 0.8)]

# three pairs: log-ratios h_w = pc - rc, h_l = pr - rr of both signs, unequal lengths
B = dict(pc=[-3.0, -10.0, -6.5], pr=[-5.0, -7.5, -6.0], rc=[-3.6, -9.1, -7.7], rr=[-4.4, -8.8, -5.2],
         lc=[4.0, 9.0, 6.0], lr=[7.0, 3.0, 5.0])


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return np.exp(logsig(x))


def g_np(h, kind, a):
    """f′(e^h) − f′(1) for f = reverse KL u log u, forward KL −log u, JS, α-divergence (Wang et al. 2023)."""
    u = np.exp(h)
    return {"reverse_kl": np.log(u),
            "forward_kl": (-1 / u) - (-1.0),
            "js": np.log(2 * u / (1 + u)) - np.log(2 / 2),
            "alpha": (1 - u ** (-a)) / a - 0.0}[kind]


def np_loss(name, p, b, kind, a):
    gw, gl = g_np(b["pc"] - b["rc"], kind, a), g_np(b["pr"] - b["rr"], kind, a)
    z = BETA * (gw - gl)
    eps = p.get("label_smoothing", 0.0)
    if name in ("sigmoid", "cdpo"):
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    if name == "robust":
        return (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps)
    if name == "hinge":
        return np.maximum(0.0, 1 - z)
    if name == "ipo":
        return (gw / b["lc"] - gl / b["lr"] - 1 / (2 * BETA)) ** 2
    if name == "rdpo":
        return -logsig(z + p["alpha"] * (b["lc"] - b["lr"]))
    if name == "exo_pair":
        e = eps or 1e-3
        return sig(z) * (logsig(z) - np.log(1 - e)) + sig(-z) * (logsig(-z) - np.log(e))
    if name == "discopop":
        w = sig(z / p["discopop_tau"])
        return (1 - w) * -logsig(z) + w * np.exp(-z)
    if name == "sigmoid_norm":
        return -logsig(BETA * (gw / b["lc"] - gl / b["lr"]))
    if name == "f_divergence":
        return -logsig(z)
    raise AssertionError(name)


def np_grad(name, p, b, kind, a, key, eps=1e-6):
    out = np.zeros(len(b[key]))
    for i in range(len(out)):
        hi = {k: v.copy() for k, v in b.items()}
        lo = {k: v.copy() for k, v in b.items()}
        hi[key][i] += eps
        lo[key][i] -= eps
        out[i] = (np_loss(name, p, hi, kind, a).sum() - np_loss(name, p, lo, kind, a).sum()) / (2 * eps)
    return out


def batch(b=None, dtype=torch.float64):
    b = {k: np.asarray(v, np.float64) for k, v in (b or B).items()}
    t = {k: torch.tensor(v, dtype=dtype, requires_grad=k in ("pc", "pr")) for k, v in b.items()}
    return PairLogps(t["pc"], t["pr"], t["rc"], t["rr"], t["lc"], t["lr"]), t, b


def test_the_spec_lists_exactly_the_margin_losses():
    assert f_divergence_losses() == sorted(APPLICABLE)
    for name, spec in PREFERENCE_SPECS.items():
        assert spec.f_divergence == (name in APPLICABLE), name
        assert "f_divergence" not in spec.params and "f_alpha" not in spec.params


@pytest.mark.parametrize("kind,a", DIVS, ids=[f"{k}-{a}" for k, a in DIVS])
@pytest.mark.parametrize("name", APPLICABLE)
def test_value_and_gradient_vs_numpy(name, kind, a):
    pair, t, b = batch()
    p = PARAMS[name]
    loss, m = get_preference_loss(name)(pair, beta=BETA, f_divergence=kind, f_alpha=a, **p)
    np.testing.assert_allclose(loss.detach().numpy(), np_loss(name, p, b, kind, a), rtol=1e-10, atol=1e-12)
    loss.sum().backward()
    for key in ("pc", "pr"):
        np.testing.assert_allclose(t[key].grad.numpy(), np_grad(name, p, b, kind, a, key), rtol=1e-6, atol=1e-8)
    # the divergence changes the loss (it is not silently ignored) but not the logged rewards β·h
    plain, m0 = get_preference_loss(name)(batch()[0], beta=BETA, **p)
    assert not torch.allclose(loss, plain)
    assert m["rewards/chosen"] == m0["rewards/chosen"] and m["rewards/accuracy"] == m0["rewards/accuracy"]


@pytest.mark.parametrize("name", APPLICABLE)
def test_reverse_kl_is_bit_identical(name):
    p = PARAMS[name]
    pair1, t1, _ = batch()
    pair2, t2, _ = batch()
    l1, m1 = get_preference_loss(name)(pair1, beta=BETA, **p)
    l2, m2 = get_preference_loss(name)(pair2, beta=BETA, f_divergence="reverse_kl", f_alpha=0.5, **p)
    assert torch.equal(l1, l2) and m1 == m2
    l1.sum().backward()
    l2.sum().backward()
    assert torch.equal(t1["pc"].grad, t2["pc"].grad) and torch.equal(t1["pr"].grad, t2["pr"].grad)
    h = torch.tensor([0.3, -2.0])
    assert f_log_ratio(h, "reverse_kl") is h  # the log-ratio itself, not a recomputation


def test_sigmoid_reverse_kl_matches_the_dpo_expression_exactly():
    pair, _, _ = batch()
    h_w, h_l = pair.policy_chosen - pair.ref_chosen, pair.policy_rejected - pair.ref_rejected
    want = -torch.nn.functional.logsigmoid(BETA * (h_w - h_l))
    assert torch.equal(get_preference_loss("sigmoid")(pair, beta=BETA, f_divergence="reverse_kl")[0], want)


@pytest.mark.parametrize("kind,a", DIVS + [("reverse_kl", 0.5)])
def test_equal_log_ratios_give_the_dpo_value_and_gradient(kind, a):
    """At π = π_ref every g has g(0) = 0, so the loss is log 2 whatever f; dL/dpc = −β·g′(0)/2 with
    g′(0) = f″(1) = 1 (reverse KL, forward KL, α) or ½ (JS: log(2u/(1+u)) has slope ½ at u = 1)."""
    pair, t, _ = batch(dict(pc=[-2.0] * 2, pr=[-5.0] * 2, rc=[-2.0] * 2, rr=[-5.0] * 2, lc=[3.0] * 2, lr=[4.0] * 2))
    loss, _ = get_preference_loss("sigmoid")(pair, beta=BETA, f_divergence=kind, f_alpha=a)
    np.testing.assert_allclose(loss.detach().numpy(), [math.log(2)] * 2, rtol=1e-12)
    loss.sum().backward()
    slope = 0.5 if kind == "js" else 1.0
    np.testing.assert_allclose(t["pc"].grad.numpy(), [-BETA * slope / 2] * 2, rtol=1e-12)
    np.testing.assert_allclose(t["pr"].grad.numpy(), [BETA * slope / 2] * 2, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,a", DIVS, ids=[f"{k}-{a}" for k, a in DIVS])
@pytest.mark.parametrize("name", APPLICABLE)
def test_huge_log_ratios_stay_finite(name, kind, a, dtype):
    pair, t, _ = batch(dict(pc=[-1.0, -1e4], pr=[-1e4, -1.0], rc=[-1.0, -1.0], rr=[-1.0, -1.0],
                            lc=[5.0, 5.0], lr=[5.0, 5.0]), dtype=dtype)
    loss, m = get_preference_loss(name)(pair, beta=BETA, f_divergence=kind, f_alpha=a, **PARAMS[name])
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(t["pc"].grad).all() and torch.isfinite(t["pr"].grad).all()
    assert all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("name", APPLICABLE)
def test_empty_batch(name):
    e = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    pair = PairLogps(e, e, e.detach(), e.detach(), e.detach(), e.detach())
    loss, m = get_preference_loss(name)(pair, beta=BETA, f_divergence="js", f_alpha=0.5, **PARAMS[name])
    assert loss.shape == (0,) and all(v == 0.0 for v in m.values())


def test_unknown_divergence_names_the_valid_ones():
    with pytest.raises(ConfigError, match="forward_kl, js, alpha"):
        get_preference_loss("hinge")(batch()[0], beta=BETA, f_divergence="hellinger", f_alpha=0.5)


@pytest.mark.parametrize("name", sorted(set(PREFERENCE_SPECS) - set(APPLICABLE)))
def test_losses_outside_the_list_do_not_take_it(name):
    with pytest.raises(TypeError):
        get_preference_loss(name)(batch()[0], beta=BETA, f_divergence="js", f_alpha=0.5)
    assert not get_preference_spec(name).f_divergence

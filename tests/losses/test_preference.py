"""Tests for rlhfkit.losses.preference against independent numpy / hand-computed values.

Fixed batch (N = 3), h = policy - ref, Δ = h_w - h_l:
    policy_chosen   = [-5, -3, -10]     ref_chosen   = [-5.5, -3, -9]     h_w = [0.5, 0, -1]
    policy_rejected = [-6, -2, -10]     ref_rejected = [-5, -2.5, -10.5]  h_l = [-1, 0.5, 0.5]
    Δ = [1.5, -0.5, -1.5];  |y_w| = [5, 3, 8], |y_l| = [6, 2, 8]
    SeqKL_w = [0.1, 0.2, 0.0], SeqKL_l = [0.3, 0.1, 0.05]
Hand value: DPO with β = 0.5, row 0: -log σ(0.75) = log(1 + e^-0.75) = 0.38687...

Gradients are checked against numpy central finite differences (float64): each per-pair
loss depends only on its own row, so perturbing a whole column at once gives every row's
partial derivative.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.losses.preference import (PREFERENCE_LOSSES, PREFERENCE_SPECS, PairLogps, get_preference_loss,
                                       needs_reference, register_preference_loss)

BATCH = {
    "pc": [-5.0, -3.0, -10.0], "pr": [-6.0, -2.0, -10.0],
    "rc": [-5.5, -3.0, -9.0], "rr": [-5.0, -2.5, -10.5],
    "lc": [5.0, 3.0, 8.0], "lr": [6.0, 2.0, 8.0],
    "kc": [0.1, 0.2, 0.0], "kr": [0.3, 0.1, 0.05],
}
BETA = 0.5
NAMES = {"sigmoid", "cdpo", "robust", "hinge", "ipo", "rdpo", "simpo", "orpo", "tdpo", "f_divergence"}


# --------------------------------------------------------------------------- numpy references


def logsig(x):
    """log σ(x) = -log(1 + e^-x), stable for large |x|."""
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_fprime(h, kind, a):
    return {"reverse_kl": lambda: h + 1,
            "forward_kl": lambda: -np.exp(-h),
            "js": lambda: np.log(2) - np.logaddexp(0.0, -h),  # log(2u/(1+u)) = log(2/(1+1/u))
            "alpha": lambda: (1 - np.exp(-a * h)) / a}[kind]()


def np_loss(name, p, b):
    """Per-pair loss (N,) straight from the papers' formulas (docs/algorithms.md)."""
    hw, hl = b["pc"] - b["rc"], b["pr"] - b["rr"]
    d = hw - hl
    if name == "sigmoid":
        eps = p.get("label_smoothing", 0.0)
        return -(1 - eps) * logsig(BETA * d) - eps * logsig(-BETA * d)
    if name == "cdpo":
        eps = p["label_smoothing"]
        return -(1 - eps) * logsig(BETA * d) - eps * logsig(-BETA * d)
    if name == "robust":  # rDPO, Chowdhury et al. 2024, eq. 8
        eps = p["label_smoothing"]
        return (-(1 - eps) * logsig(BETA * d) + eps * logsig(-BETA * d)) / (1 - 2 * eps)
    if name == "hinge":
        return np.maximum(0.0, 1 - BETA * d)
    if name == "ipo":
        dd = hw / b["lc"] - hl / b["lr"] if p["ipo_length_normalize"] else d
        return (dd - 1 / (2 * BETA)) ** 2
    if name == "rdpo":
        # Park et al. 2024: reward β·h(y) + α|y|, so the logit is βΔ + α|y_w| - α|y_l|
        return -logsig(BETA * d + p["alpha"] * b["lc"] - p["alpha"] * b["lr"])
    if name == "simpo":
        return -logsig(BETA * b["pc"] / b["lc"] - BETA * b["pr"] / b["lr"] - p["gamma"])
    if name == "orpo":
        mw, ml = b["pc"] / b["lc"], b["pr"] / b["lr"]
        lo_w, lo_l = mw - np.log(1 - np.exp(mw)), ml - np.log(1 - np.exp(ml))
        return -mw - p["orpo_lambda"] * logsig(lo_w - lo_l)
    if name == "tdpo":
        if p.get("tdpo_variant", 1) == 1:
            delta = b["kr"] - b["kc"]
        else:
            delta = p["tdpo_alpha"] * (b["kr"] - b["kc"])
        return -logsig(BETA * d - BETA * delta)
    if name == "f_divergence":
        k, a = p["f_divergence"], p.get("f_alpha", 0.5)
        return -logsig(BETA * (np_fprime(hw, k, a) - np_fprime(hl, k, a)))
    raise AssertionError(name)


CASES = [
    ("sigmoid", {}),
    ("sigmoid", {"label_smoothing": 0.2}),
    ("cdpo", {"label_smoothing": 0.1}),
    ("cdpo", {"label_smoothing": 0.3}),
    ("robust", {"label_smoothing": 0.1}),
    ("robust", {"label_smoothing": 0.3}),
    ("hinge", {}),
    ("ipo", {"ipo_length_normalize": True}),
    ("ipo", {"ipo_length_normalize": False}),
    ("rdpo", {"alpha": 0.2}),
    ("simpo", {"gamma": 0.3}),
    ("orpo", {"orpo_lambda": 0.25}),
    ("tdpo", {"tdpo_variant": 1}),
    ("tdpo", {"tdpo_variant": 2, "tdpo_alpha": 0.5}),
    ("f_divergence", {"f_divergence": "reverse_kl"}),
    ("f_divergence", {"f_divergence": "forward_kl"}),
    ("f_divergence", {"f_divergence": "js"}),
    ("f_divergence", {"f_divergence": "alpha", "f_alpha": 0.3}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for n, p in CASES]


def np_batch(**over):
    b = {k: np.array(v, np.float64) for k, v in BATCH.items()}
    b.update({k: np.asarray(v, np.float64) for k, v in over.items()})
    return b


def make_batch(b, dtype=torch.float64, grad=False, ref=True):
    t = {k: torch.tensor(v, dtype=dtype, requires_grad=grad and k in ("pc", "pr", "kc", "kr"))
         for k, v in b.items()}
    pair = PairLogps(t["pc"], t["pr"], t["rc"] if ref else None, t["rr"] if ref else None,
                     t["lc"], t["lr"], t["kc"], t["kr"])
    return pair, t


def np_grad(name, p, b, key, eps=1e-6):
    """Central finite difference of the per-pair numpy loss w.r.t. column ``key``."""
    up, dn = dict(b), dict(b)
    up[key], dn[key] = b[key] + eps, b[key] - eps
    return (np_loss(name, p, up) - np_loss(name, p, dn)) / (2 * eps)


# --------------------------------------------------------------------------- values, grads


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_values_match_numpy(name, params):
    b = np_batch()
    pair, _ = make_batch(b)
    loss, metrics = get_preference_loss(name)(pair, beta=BETA, **params)
    assert loss.shape == (3,) and loss.dtype == torch.float64
    np.testing.assert_allclose(loss.detach().numpy(), np_loss(name, params, b), rtol=1e-10,
                               atol=1e-12)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_dpo_hand_values():
    # βΔ = [0.75, -0.25, -0.75]; -log σ(x) = log(1 + e^-x)
    pair, _ = make_batch(np_batch())
    loss, _ = get_preference_loss("sigmoid")(pair, beta=BETA)
    np.testing.assert_allclose(loss.numpy(), [math.log1p(math.exp(-0.75)),
                                              math.log1p(math.exp(0.25)),
                                              math.log1p(math.exp(0.75))], rtol=1e-12)
    np.testing.assert_allclose(loss.numpy(), [0.38687101, 0.82593942, 1.13687101], rtol=1e-7)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_gradients_match_finite_differences(name, params):
    b = np_batch()
    pair, t = make_batch(b, grad=True)
    loss, _ = get_preference_loss(name)(pair, beta=BETA, **params)
    loss.sum().backward()
    for key in ("pc", "pr", "kc", "kr"):
        got = t[key].grad.numpy() if t[key].grad is not None else np.zeros(3)
        want = np_grad(name, params, b, key)
        if name == "tdpo" and params["tdpo_variant"] == 2 and key == "kc":
            want = np.zeros(3)  # TDPO2 detaches the chosen SeqKL
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=key)


def test_sigmoid_gradient_analytic():
    # dL/dpc = -β(1 - σ(βΔ)), dL/dpr = +β(1 - σ(βΔ))
    b = np_batch()
    pair, t = make_batch(b, grad=True)
    get_preference_loss("sigmoid")(pair, beta=BETA)[0].sum().backward()
    s = 1 / (1 + np.exp(-BETA * np.array([1.5, -0.5, -1.5])))
    np.testing.assert_allclose(t["pc"].grad.numpy(), -BETA * (1 - s), rtol=1e-12)
    np.testing.assert_allclose(t["pr"].grad.numpy(), BETA * (1 - s), rtol=1e-12)


def test_tdpo1_seq_kl_gradient_not_detached():
    # u = βΔ - β(kr - kc): dL/dkc = -β(1 - σ(u)), dL/dkr = +β(1 - σ(u))
    b = np_batch()
    pair, t = make_batch(b, grad=True)
    get_preference_loss("tdpo")(pair, beta=BETA)[0].sum().backward()
    u = BETA * np.array([1.5, -0.5, -1.5]) - BETA * (b["kr"] - b["kc"])
    s = 1 / (1 + np.exp(-u))
    np.testing.assert_allclose(t["kc"].grad.numpy(), -BETA * (1 - s), rtol=1e-12)
    np.testing.assert_allclose(t["kr"].grad.numpy(), BETA * (1 - s), rtol=1e-12)


def test_hinge_zero_beyond_margin():
    # β = 1: βΔ = [1.5, -0.5, -1.5] -> loss [0, 1.5, 2.5], no gradient on the satisfied row
    pair, t = make_batch(np_batch(), grad=True)
    loss, _ = get_preference_loss("hinge")(pair, beta=1.0)
    np.testing.assert_allclose(loss.detach().numpy(), [0.0, 1.5, 2.5], rtol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(t["pc"].grad.numpy(), [0.0, -1.0, -1.0])


def test_ipo_hand_value():
    # length-averaged: Δ̄_0 = 0.5/5 - (-1)/6 = 0.2666..., target 1/(2β) = 1
    pair, _ = make_batch(np_batch())
    loss, m = get_preference_loss("ipo")(pair, beta=BETA)
    assert float(loss[0]) == pytest.approx((0.1 + 1 / 6 - 1.0) ** 2, rel=1e-12)
    assert m["ipo/delta"] == pytest.approx(np.mean([0.1 + 1 / 6, 0 - 0.25, -1 / 8 - 1 / 16]))


# --------------------------------------------------------------------------- metrics


def test_metrics_reference_based():
    pair, _ = make_batch(np_batch())
    _, m = get_preference_loss("sigmoid")(pair, beta=BETA)
    rw, rl = BETA * np.array([0.5, 0.0, -1.0]), BETA * np.array([-1.0, 0.5, 0.5])
    assert m["rewards/chosen"] == pytest.approx(rw.mean())
    assert m["rewards/rejected"] == pytest.approx(rl.mean())
    assert m["rewards/accuracy"] == pytest.approx(1 / 3)
    assert m["rewards/margin"] == pytest.approx((rw - rl).mean())
    assert m["logps/chosen"] == pytest.approx(-6.0)
    assert m["logps/rejected"] == pytest.approx(-6.0)


def test_metrics_reference_free_and_extras():
    b = np_batch()
    pair, _ = make_batch(b, ref=False)
    _, m = get_preference_loss("simpo")(pair, beta=2.0)
    rw, rl = 2.0 * b["pc"] / b["lc"], 2.0 * b["pr"] / b["lr"]  # [-2, -2, -2.5] vs [-2, -2, -2.5]
    assert m["rewards/chosen"] == pytest.approx(rw.mean())
    assert m["rewards/rejected"] == pytest.approx(rl.mean())
    assert m["rewards/accuracy"] == pytest.approx(float(np.mean(rw > rl)))
    _, m = get_preference_loss("orpo")(pair, beta=2.0)
    mw, ml = b["pc"] / b["lc"], b["pr"] / b["lr"]
    lor = (mw - np.log1p(-np.exp(mw))) - (ml - np.log1p(-np.exp(ml)))
    assert m["nll"] == pytest.approx(float(np.mean(-mw)))
    assert m["log_odds_ratio"] == pytest.approx(float(np.mean(lor)))
    assert m["rewards/chosen"] == pytest.approx(float(np.mean(2.0 * mw)))
    pair, _ = make_batch(b)
    _, m = get_preference_loss("tdpo")(pair, beta=BETA)
    assert m["kl/chosen"] == pytest.approx(0.1) and m["kl/rejected"] == pytest.approx(0.15)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_empty_batch_no_nan(name, params):
    pair, _ = make_batch({k: [] for k in BATCH})
    loss, m = get_preference_loss(name)(pair, beta=BETA, **params)
    assert loss.shape == (0,)
    assert all(v == 0.0 for v in m.values())


# --------------------------------------------------------------------------- edge cases


def _equal_expected(name, params, beta, nll):
    if name == "hinge":
        return 1.0
    if name == "ipo":
        return (1 / (2 * beta)) ** 2
    if name == "orpo":
        return nll + params["orpo_lambda"] * math.log(2)
    if name == "simpo":
        return math.log1p(math.exp(params["gamma"]))  # -log σ(-γ)
    return math.log(2)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_all_logps_equal(name, params):
    # every log-prob -4 over 4 tokens, equal lengths and SeqKLs: Δ = 0 and all f′ cancel
    b = np_batch(pc=[-4.0] * 3, pr=[-4.0] * 3, rc=[-4.0] * 3, rr=[-4.0] * 3, lc=[4.0] * 3,
                 lr=[4.0] * 3, kc=[0.2] * 3, kr=[0.2] * 3)
    pair, _ = make_batch(b)
    loss, m = get_preference_loss(name)(pair, beta=BETA, **params)
    np.testing.assert_allclose(loss.numpy(), [_equal_expected(name, params, BETA, 1.0)] * 3,
                               rtol=1e-12)
    assert m["rewards/accuracy"] == 0.0 and m["rewards/margin"] == 0.0


def test_sigmoid_equal_is_log2_and_half_gradient():
    b = np_batch(pc=[-4.0] * 3, pr=[-4.0] * 3, rc=[-7.0] * 3, rr=[-7.0] * 3)
    pair, t = make_batch(b, grad=True)
    loss, _ = get_preference_loss("sigmoid")(pair, beta=BETA)
    np.testing.assert_allclose(loss.detach().numpy(), [math.log(2)] * 3, rtol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(t["pc"].grad.numpy(), [-BETA / 2] * 3, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_huge_margins_finite(name, params, dtype):
    # Δ = +1e4 and -1e4 (and huge log-prob gaps for the reference-free losses)
    b = np_batch(pc=[-1.0, -1e4 - 1.0], pr=[-1e4 - 1.0, -1.0], rc=[-1.0, -1.0], rr=[-1.0, -1.0],
                 lc=[5.0, 5.0], lr=[5.0, 5.0], kc=[0.1, 50.0], kr=[50.0, 0.1])
    pair, t = make_batch(b, dtype=dtype, grad=True)
    loss, m = get_preference_loss(name)(pair, beta=BETA, **params)
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    for k in ("pc", "pr", "kc", "kr"):
        assert t[k].grad is None or torch.isfinite(t[k].grad).all(), (k, t[k].grad)
    assert all(math.isfinite(v) for v in m.values())
    if name in ("sigmoid", "cdpo", "robust", "hinge", "ipo", "rdpo", "simpo", "orpo", "tdpo") or \
            params.get("f_divergence") in ("reverse_kl", "js"):
        np.testing.assert_allclose(loss.detach().double().numpy(),
                                   np_loss(name, params, b),
                                   rtol=1e-5, atol=1e-4)


def test_sigmoid_huge_margin_values():
    b = np_batch(pc=[-1.0, -1e4 - 1.0], pr=[-1e4 - 1.0, -1.0], rc=[-1.0, -1.0], rr=[-1.0, -1.0],
                 lc=[5.0, 5.0], lr=[5.0, 5.0], kc=[0.0, 0.0], kr=[0.0, 0.0])
    pair, t = make_batch(b, dtype=torch.float32, grad=True)
    loss, _ = get_preference_loss("sigmoid")(pair, beta=BETA)
    # Δ = [1e4, -1e4]: loss [0, β·1e4], dL/dpc = -β(1 - σ(βΔ)) = [0, -β]
    np.testing.assert_allclose(loss.detach().numpy(), [0.0, BETA * 1e4], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(t["pc"].grad.numpy(), [0.0, -BETA], atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_mean_logp_near_zero_finite(dtype):
    # mean token log-prob -1e-9 (p ≈ 1 - 1e-9) and exactly 0: odds → ∞ must stay finite
    b = np_batch(pc=[-5e-9, 0.0, -3.0], pr=[-6.0, -2.0, 0.0])
    pair, t = make_batch(b, dtype=dtype, grad=True, ref=False)
    loss, m = get_preference_loss("orpo")(pair, beta=BETA, orpo_lambda=0.25)
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    assert torch.isfinite(t["pc"].grad).all() and torch.isfinite(t["pr"].grad).all()
    assert all(math.isfinite(v) for v in m.values())
    if dtype == torch.float64:
        # row 0: log odds_w = m - log(1 - e^m) with 1 - e^m = 1e-9 (1 + O(1e-9))
        lo_w = -1e-9 - math.log(-math.expm1(-1e-9))
        lo_l = -1.0 - math.log1p(-math.exp(-1.0))
        want = 1e-9 + 0.25 * math.log1p(math.exp(-(lo_w - lo_l)))
        assert float(loss[0].detach()) == pytest.approx(want, rel=1e-9)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_uniform_signature():
    assert NAMES <= set(PREFERENCE_LOSSES)
    for name in NAMES:
        sig = inspect.signature(get_preference_loss(name))
        kinds = {p.name: p.kind for p in sig.parameters.values()}
        assert list(kinds)[0] == "batch"
        assert kinds["beta"] == inspect.Parameter.KEYWORD_ONLY
        # no catch-all: a parameter the loss does not take is an error, never ignored
        assert inspect.Parameter.VAR_KEYWORD not in kinds.values()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as ei:
        get_preference_loss("dpo_typo")
    msg = str(ei.value)
    assert "dpo_typo" in msg and all(n in msg for n in NAMES)
    with pytest.raises(ConfigError):
        needs_reference("dpo_typo")


def test_needs_reference():
    assert not needs_reference("simpo") and not needs_reference("orpo")
    for n in NAMES - {"simpo", "orpo"}:
        assert needs_reference(n), n


def test_reference_free_losses_run_without_reference():
    pair, _ = make_batch(np_batch(), ref=False)
    for n in ("simpo", "orpo"):
        get_preference_loss(n)(pair, beta=BETA)
    with pytest.raises(ValueError, match="reference"):
        get_preference_loss("sigmoid")(pair, beta=BETA)


def test_loss_rejects_a_parameter_it_does_not_take():
    pair, _ = make_batch(np_batch())
    for n in NAMES:
        with pytest.raises(TypeError):
            get_preference_loss(n)(pair, beta=BETA, some_future_key=123)
    with pytest.raises(TypeError):
        get_preference_loss("sigmoid")(pair, beta=BETA, alpha=0.3)  # rdpo's parameter


def test_neutral_params_reduce_to_dpo():
    pair, _ = make_batch(np_batch())
    ref = get_preference_loss("sigmoid")(pair, beta=BETA)[0]
    for n, p in (("rdpo", {"alpha": 0.0}), ("cdpo", {"label_smoothing": 0.0}),
                 ("robust", {"label_smoothing": 0.0}), ("f_divergence", {"f_divergence": "reverse_kl"})):
        torch.testing.assert_close(get_preference_loss(n)(pair, beta=BETA, **p)[0], ref)


def test_f_divergence_reverse_kl_equals_sigmoid():
    b = np_batch()
    p1, t1 = make_batch(b, grad=True)
    p2, t2 = make_batch(b, grad=True)
    l1, m1 = get_preference_loss("sigmoid")(p1, beta=BETA)
    l2, m2 = get_preference_loss("f_divergence")(p2, beta=BETA, f_divergence="reverse_kl")
    torch.testing.assert_close(l1, l2, rtol=1e-14, atol=1e-14)
    l1.sum().backward()
    l2.sum().backward()
    torch.testing.assert_close(t1["pc"].grad, t2["pc"].grad)
    torch.testing.assert_close(t1["pr"].grad, t2["pr"].grad)
    assert m1 == m2


def test_f_divergence_unknown_kind():
    pair, _ = make_batch(np_batch())
    with pytest.raises(ConfigError, match="forward_kl"):
        get_preference_loss("f_divergence")(pair, beta=BETA, f_divergence="hellinger")


def test_tdpo_needs_seq_kl():
    b = np_batch()
    pair, _ = make_batch(b)
    pair.chosen_seq_kl = None
    with pytest.raises(ValueError, match="seq_kl"):
        get_preference_loss("tdpo")(pair, beta=BETA)


def test_register_new_loss():
    @register_preference_loss("_test_zero", needs_reference=False)
    def _zero(batch, *, beta, **_):
        return batch.policy_chosen * 0, {}
    try:
        assert get_preference_loss("_test_zero") is _zero
        assert not needs_reference("_test_zero")
        with pytest.raises(ValueError, match="already registered"):
            register_preference_loss("_test_zero")(_zero)
    finally:
        PREFERENCE_LOSSES.pop("_test_zero")
        PREFERENCE_SPECS.pop("_test_zero")
    with pytest.raises(ConfigError):
        get_preference_loss("_test_zero")


def test_rpo_nll_hand_values():
    from rlhfkit.losses.preference import rpo_nll

    b = PairLogps(torch.tensor([-4.0, -9.0]), torch.tensor([-1.0, -1.0]), None, None,
                  torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0]))
    term, m = rpo_nll(b, 0.5)
    assert term.tolist() == pytest.approx([1.0, 1.5])  # 0.5 * (4/2), 0.5 * (9/3)
    assert m["rpo_nll"] == pytest.approx(2.5)
    # gradient: d(alpha * -lp / len) / d lp = -alpha / len; the rejected side gets none
    lp = torch.tensor([-4.0, -9.0], requires_grad=True)
    rej = torch.tensor([-1.0, -1.0], requires_grad=True)
    rpo_nll(PairLogps(lp, rej, None, None, torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])), 0.5)[0].sum().backward()
    assert lp.grad.tolist() == pytest.approx([-0.25, -0.5 / 3]) and rej.grad is None
    # an empty batch: no terms, no NaN in the metric
    e = torch.zeros(0)
    term, m = rpo_nll(PairLogps(e, e, None, None, e, e), 1.0)
    assert term.numel() == 0 and m["rpo_nll"] == m["rpo_nll"]


def test_specs_carry_what_the_recipe_reads():
    """The DPO recipe's rules come from the specs: TDPO needs token KL (and a live reference),
    simpo/orpo no reference; each spec's params are the loss's keyword arguments."""
    from rlhfkit.losses.preference import get_preference_spec

    assert get_preference_spec("tdpo").needs_token_kl
    assert get_preference_spec("tdpo").params == ("tdpo_alpha", "tdpo_variant")
    assert not any(get_preference_spec(n).needs_token_kl for n in NAMES - {"tdpo"})
    assert {n for n in NAMES if not get_preference_spec(n).needs_reference} == {"simpo", "orpo"}
    assert get_preference_spec("sigmoid").params == ("label_smoothing",)

"""sigmoid_norm, bco_pair, sft, cpo and alphapo: values and gradients against float64 numpy
written from each equation (docs/algorithms.md#dpo-variants), with unequal lengths, the
degenerate cases (equal log-probs, large margins, an empty batch) and each parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhfkit.losses.preference import PairLogps, get_preference_loss, get_preference_spec

BETA = 0.3
PW = np.array([-3.0, -10.0, -5.4, -2.0])
PL = np.array([-4.0, -9.0, -7.0, -2.5])
RW = np.array([-3.5, -9.5, -6.0, -2.2])
RL = np.array([-3.8, -9.2, -6.1, -2.1])
LW = np.array([5.0, 3.0, 8.0, 2.0])
LL = np.array([4.0, 6.0, 1.0, 2.0])


def logsig(x):
    return -np.logaddexp(0.0, -x)


def np_loss(name, pw, pl, beta=BETA, delta=None, cpo_alpha=1.0, alpha=0.25, gamma=0.5):
    hw, hl = pw - RW, pl - RL
    if name == "sigmoid_norm":
        return -logsig(beta * (hw / LW - hl / LL))
    if name == "bco_pair":
        if delta is None:  # the batch mean of the rewards, at the point where the loss is taken
            delta = np.mean(np.concatenate([beta * (PW - RW), beta * (PL - RL)]))
        return -logsig(beta * hw - delta) - logsig(-(beta * hl - delta))
    if name == "sft":
        return -pw / LW
    if name == "cpo":
        return -logsig(beta * (pw - pl)) + cpo_alpha * (-pw / LW)
    if name == "alphapo":
        def r(m):
            return beta * m if alpha == 0 else beta / alpha * -np.expm1(-alpha * m)  # 1 - e^{-αm}, exact near α = 0
        return -logsig(r(pw / LW) - r(pl / LL) - gamma)
    raise KeyError(name)


def batch(pw, pl, grad=False, rw=RW, rl=RL, lw=LW, ll=LL):
    t = [torch.tensor(x, dtype=torch.float64, requires_grad=grad) for x in (pw, pl)]
    return PairLogps(t[0], t[1], torch.tensor(rw), torch.tensor(rl), torch.tensor(lw), torch.tensor(ll)), t


def num_grad(name, which, **kw):
    """Central differences of the numpy total loss (δ held at its value: it is not differentiated)."""
    xs = [PW.copy(), PL.copy()]
    g = np.zeros(len(PW))
    for i in range(len(g)):
        for sgn in (1, -1):
            ys = [x.copy() for x in xs]
            ys[which][i] += sgn * 1e-6
            g[i] += sgn * np_loss(name, ys[0], ys[1], **kw).sum() / 2e-6
    return g


NAMES = ("sigmoid_norm", "bco_pair", "sft", "cpo", "alphapo")


@pytest.mark.parametrize("name", NAMES)
def test_value_and_gradient_match_the_equation(name):
    b, (tw, tl) = batch(PW, PL, grad=True)
    loss, m = get_preference_loss(name)(b, beta=BETA)
    np.testing.assert_allclose(loss.detach().numpy(), np_loss(name, PW, PL), rtol=1e-10, atol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(tw.grad.numpy(), num_grad(name, 0), rtol=1e-5, atol=1e-7)
    gl = tl.grad.numpy() if tl.grad is not None else np.zeros(len(PL))  # sft does not read y_l
    np.testing.assert_allclose(gl, num_grad(name, 1), rtol=1e-5, atol=1e-7)
    assert all(np.isfinite(v) for v in m.values())


def test_reference_needs_follow_the_equations():
    assert get_preference_spec("sigmoid_norm").needs_reference and get_preference_spec("bco_pair").needs_reference
    for name in ("sft", "cpo", "alphapo"):
        assert not get_preference_spec(name).needs_reference
        b = PairLogps(torch.tensor(PW), torch.tensor(PL), None, None, torch.tensor(LW), torch.tensor(LL))
        np.testing.assert_allclose(get_preference_loss(name)(b, beta=BETA)[0].numpy(), np_loss(name, PW, PL),
                                   rtol=1e-10)


def test_bco_uses_the_given_running_mean_and_does_not_differentiate_it():
    b, (tw, tl) = batch(PW, PL, grad=True)
    b.reward_shift = torch.tensor(0.7, dtype=torch.float64)
    loss, m = get_preference_loss("bco_pair")(b, beta=BETA)
    np.testing.assert_allclose(loss.detach().numpy(), np_loss("bco_pair", PW, PL, delta=0.7), rtol=1e-10)
    assert m["bco/delta"] == pytest.approx(0.7)
    loss.sum().backward()
    np.testing.assert_allclose(tw.grad.numpy(), num_grad("bco_pair", 0, delta=0.7), rtol=1e-5, atol=1e-7)
    # chosen: d/dr_w of -log σ(r_w - δ) = -(1 - σ(r_w - δ)) < 0 per pair, times β
    assert (tw.grad < 0).all() and (tl.grad > 0).all()


@pytest.mark.parametrize("kw", [{"cpo_alpha": 0.0}, {"cpo_alpha": 2.5}])
def test_cpo_alpha_weights_the_nll(kw):
    b, _ = batch(PW, PL)
    loss, m = get_preference_loss("cpo")(b, beta=BETA, **kw)
    np.testing.assert_allclose(loss.numpy(), np_loss("cpo", PW, PL, **kw), rtol=1e-10)
    np.testing.assert_allclose(m["nll"], np.mean(-PW / LW), rtol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 1e-9, -0.5, 1.0])
def test_alphapo_alpha_and_its_simpo_limit(alpha):
    b, _ = batch(PW, PL)
    loss = get_preference_loss("alphapo")(b, beta=BETA, alphapo_alpha=alpha, gamma=0.2)[0]
    np.testing.assert_allclose(loss.numpy(), np_loss("alphapo", PW, PL, alpha=alpha, gamma=0.2), rtol=1e-8)
    simpo = get_preference_loss("simpo")(b, beta=BETA, gamma=0.2)[0]
    if abs(alpha) < 1e-6:
        np.testing.assert_allclose(loss.numpy(), simpo.numpy(), rtol=1e-7)
    else:
        assert not np.allclose(loss.numpy(), simpo.numpy())


def test_equal_log_probs():
    """Policy = reference: log-ratios 0, so sigmoid_norm is log 2 and bco_pair (δ = 0) 2 log 2."""
    b, _ = batch(RW, RL)
    np.testing.assert_allclose(get_preference_loss("sigmoid_norm")(b, beta=BETA)[0].numpy(), np.log(2), rtol=1e-12)
    np.testing.assert_allclose(get_preference_loss("bco_pair")(b, beta=BETA)[0].numpy(), 2 * np.log(2), rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_large_margins_stay_finite(name, sign):
    b, (tw, tl) = batch(PW + sign * 400.0, PL - sign * 400.0, grad=True)
    loss, _ = get_preference_loss(name)(b, beta=1.0)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    for t in (tw, tl):
        assert t.grad is None or torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch(name):
    z = np.zeros(0)
    b, _ = batch(z, z, rw=z, rl=z, lw=z, ll=z)
    loss, m = get_preference_loss(name)(b, beta=BETA)
    assert loss.shape == (0,) and all(v == 0.0 for v in m.values())

"""The TRL-named DPO variants (apo_zero, apo_down, nca_pair, sppo_hard, exo_pair, discopop,
aot_pair, aot) and NPO: values and gradients against float64 numpy written from each paper's
equation (docs/algorithms.md#dpo-variants), plus the degenerate cases (equal log-probs, large
margins)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhfkit.losses.preference import PREFERENCE_LOSSES, PairLogps, get_preference_loss, get_preference_spec

BETA = 0.3
PW = np.array([-3.0, -10.0, -5.4, -2.0])  # no ties among the log-ratios (aot sorts them)
PL = np.array([-4.0, -9.0, -7.0, -2.5])
RW = np.array([-3.5, -9.5, -6.0, -2.2])
RL = np.array([-3.8, -9.2, -6.1, -2.1])


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_loss(name, pw, pl, rw, rl, beta=BETA, eps=0.0, tau=0.05):
    hw, hl = pw - rw, pl - rl
    d = hw - hl
    if name == "apo_zero":
        return 1 - sig(beta * hw) + sig(beta * hl)
    if name == "apo_down":
        return sig(beta * hw) + 1 - sig(beta * d)
    if name == "nca_pair":
        return -logsig(beta * hw) - 0.5 * logsig(-beta * hw) - 0.5 * logsig(-beta * hl)
    if name == "sppo_hard":
        return (hw - 1 / (2 * beta)) ** 2 + (hl + 1 / (2 * beta)) ** 2
    if name == "exo_pair":
        e = eps or 1e-3
        p = sig(beta * d)  # the model's P(y_w ≻ y_l); KL((p, 1-p) ‖ (1-e, e))
        return p * np.log(p / (1 - e)) + (1 - p) * np.log((1 - p) / e)
    if name == "discopop":
        z = beta * d
        w = sig(z / tau)
        return (1 - w) * -logsig(z) + w * np.exp(-z)
    if name == "aot_pair":
        z = beta * (np.sort(hw) - np.sort(hl))
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    if name == "aot":
        z = beta * (np.sort(pw - pl) - np.sort(rw - rl))
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    if name == "npo":
        return -(2 / beta) * logsig(-beta * hl)
    raise KeyError(name)


NAMES = ("apo_zero", "apo_down", "nca_pair", "sppo_hard", "exo_pair", "discopop", "aot_pair", "aot", "npo")


def batch(pw, pl, rw, rl, grad=False):
    t = [torch.tensor(x, dtype=torch.float64, requires_grad=grad) for x in (pw, pl)]
    return PairLogps(t[0], t[1], torch.tensor(rw), torch.tensor(rl), torch.full((len(pw),), 5.0),
                     torch.full((len(pw),), 5.0)), t


def num_grad(name, which, **kw):
    """Central differences of the numpy total loss w.r.t. the chosen (0) or rejected (1) policy log-probs."""
    xs = [PW.copy(), PL.copy()]
    g = np.zeros_like(xs[which])
    for i in range(len(g)):
        for sgn in (1, -1):
            ys = [x.copy() for x in xs]
            ys[which][i] += sgn * 1e-6
            g[i] += sgn * np_loss(name, ys[0], ys[1], RW, RL, **kw).sum() / 2e-6
    return g


@pytest.mark.parametrize("name", NAMES)
def test_value_and_gradient_match_the_equation(name):
    assert name in PREFERENCE_LOSSES and get_preference_spec(name).needs_reference
    b, (tw, tl) = batch(PW, PL, RW, RL, grad=True)
    loss, metrics = get_preference_loss(name)(b, beta=BETA)
    np.testing.assert_allclose(loss.detach().numpy(), np_loss(name, PW, PL, RW, RL), rtol=1e-10, atol=1e-12)
    loss.sum().backward()
    gw = tw.grad.numpy() if tw.grad is not None else np.zeros(len(PW))  # npo does not read y_w
    np.testing.assert_allclose(gw, num_grad(name, 0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tl.grad.numpy(), num_grad(name, 1), rtol=1e-5, atol=1e-7)
    assert metrics["rewards/margin"] == pytest.approx(float(np.mean(BETA * ((PW - RW) - (PL - RL)))))


@pytest.mark.parametrize("name,kw", [("exo_pair", {"label_smoothing": 0.1}), ("aot_pair", {"label_smoothing": 0.2}),
                                     ("aot", {"label_smoothing": 0.2}), ("discopop", {"discopop_tau": 0.5})])
def test_parameters_enter_the_loss(name, kw):
    b, _ = batch(PW, PL, RW, RL)
    loss, _ = get_preference_loss(name)(b, beta=BETA, **kw)
    npkw = {"eps": kw.get("label_smoothing", 0.0), "tau": kw.get("discopop_tau", 0.05)}
    np.testing.assert_allclose(loss.numpy(), np_loss(name, PW, PL, RW, RL, **npkw), rtol=1e-10)
    assert not np.allclose(loss.numpy(), np_loss(name, PW, PL, RW, RL))


def test_equal_log_probs():
    """Policy = reference: every log-ratio 0."""
    b, _ = batch(RW, RL, RW, RL)
    want = {"apo_zero": 1.0, "apo_down": 1.0, "nca_pair": 3 * np.log(2) / 1, "discopop": 0.5 * np.log(2) + 0.5,
            "sppo_hard": 2 * (1 / (2 * BETA)) ** 2, "npo": 2 / BETA * np.log(2),
            "exo_pair": 0.5 * np.log(0.5 / (1 - 1e-3)) + 0.5 * np.log(0.5 / 1e-3)}
    want["nca_pair"] = np.log(2) + 0.5 * np.log(2) + 0.5 * np.log(2)
    for name, v in want.items():
        loss, _ = get_preference_loss(name)(b, beta=BETA)
        np.testing.assert_allclose(loss.numpy(), np.full(4, v), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_large_margins_stay_finite(name, sign):
    b, (tw, tl) = batch(PW + sign * 400.0, PL - sign * 400.0, RW, RL, grad=True)
    loss, _ = get_preference_loss(name)(b, beta=1.0)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    for t in (tw, tl):
        assert t.grad is None or torch.isfinite(t.grad).all()


def test_aot_pair_couples_the_batch_by_rank():
    """Permuting the rejected rows leaves aot_pair's loss set unchanged (it sorts), unlike DPO's."""
    perm = [2, 0, 3, 1]
    a, _ = batch(PW, PL, RW, RL)
    p, _ = batch(PW, PL[perm], RW, RL[perm])
    la = get_preference_loss("aot_pair")(a, beta=BETA)[0]
    lp = get_preference_loss("aot_pair")(p, beta=BETA)[0]
    assert torch.allclose(la, lp)
    assert not torch.allclose(get_preference_loss("sigmoid")(a, beta=BETA)[0].sort().values,
                              get_preference_loss("sigmoid")(p, beta=BETA)[0].sort().values)


def test_npo_reads_only_the_rejected_response():
    b, (tw, tl) = batch(PW, PL, RW, RL, grad=True)
    get_preference_loss("npo")(b, beta=BETA)[0].sum().backward()
    assert tw.grad is None or float(tw.grad.abs().sum()) == 0.0
    assert (tl.grad > 0).all()  # descending the loss lowers the rejected log-probs

"""Tests for rlhfkit.rl.advantages against hand-computed values and numpy re-implementations.

Reference formulas:
    GAE:   δ_t = r_t + γ·V_{t+1} − V_t  (V after the last unmasked token = 0)
           A_t = Σ_l (γλ)^l δ_{t+l}       (sum over the row's *unmasked* tokens only)
           R_t = A_t + V_t on masked tokens, 0 elsewhere
    GRPO:  A_i = (r_i − mean_g) / (std_g(unbiased) + eps);  scale=False: r_i − mean_g
    RLOO:  A_i = r_i − mean_{j≠i} r_j
    REINFORCE++:        return-to-go (γ=1) of token rewards, whitened over every masked
                        token of the batch (population variance, eps 1e-8)
    reinforce_baseline: c_i = r_i − mean_g;  A_i = c_i / (std(c over the batch, unbiased) + eps)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhfkit.rl.advantages import (
    ADVANTAGES,
    AdvantageInputs,
    compute_advantages,
    gae,
    group_normalize,
    masked_whiten,
    returns_to_go,
    rloo,
)

F64 = torch.float64


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------- numpy references


def np_gae_row(r, v, m, gamma, lam):
    """Explicit-sum GAE over the unmasked positions of one row (no recursion)."""
    idx = [i for i in range(len(m)) if m[i] > 0]
    rr = np.array([r[i] for i in idx], np.float64)
    vv = np.array([v[i] for i in idx], np.float64)
    n = len(idx)
    v_next = np.append(vv[1:], 0.0)
    delta = rr + gamma * v_next - vv
    adv = np.zeros(len(m))
    ret = np.zeros(len(m))
    for k in range(n):
        a = sum((gamma * lam) ** l * delta[k + l] for l in range(n - k))
        adv[idx[k]] = a
        ret[idx[k]] = a + vv[k]
    return adv, ret


def np_rtg_row(r, m):
    idx = [i for i in range(len(m)) if m[i] > 0]
    out = np.zeros(len(m))
    for k, i in enumerate(idx):
        out[i] = sum(r[j] for j in idx[k:])
    return out


# --------------------------------------------------------------------------- GAE hand numbers


def test_gae_gamma1_lam1_is_future_reward_minus_value():
    # r = [1, 2, 3], V = [4, 1, 0.5]; with γ=λ=1 the δ's telescope:
    # A_t = Σ_{k≥t} r_k − V_t = [6−4, 5−1, 3−0.5] = [2, 4, 2.5]; R = A + V = [6, 5, 3]
    r, v, m = t([[1.0, 2.0, 3.0]]), t([[4.0, 1.0, 0.5]]), t([[1.0, 1.0, 1.0]])
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv.numpy(), [[2.0, 4.0, 2.5]], rtol=1e-12)
    np.testing.assert_allclose(ret.numpy(), [[6.0, 5.0, 3.0]], rtol=1e-12)


def test_gae_gamma09_lam08_hand():
    # r = [1, 0, 2], V = [0.5, 1, 1.5], γ = 0.9, λ = 0.8 -> γλ = 0.72
    # δ_2 = 2 + 0.9·0   − 1.5 = 0.5
    # δ_1 = 0 + 0.9·1.5 − 1.0 = 0.35
    # δ_0 = 1 + 0.9·1.0 − 0.5 = 1.4
    # A_2 = 0.5
    # A_1 = 0.35 + 0.72·0.5  = 0.71
    # A_0 = 1.4  + 0.72·0.71 = 1.4 + 0.5112 = 1.9112
    # R   = A + V = [2.4112, 1.71, 2.0]
    r, v, m = t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]]), t([[1.0, 1.0, 1.0]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv.numpy(), [[1.9112, 0.71, 0.5]], rtol=1e-12)
    np.testing.assert_allclose(ret.numpy(), [[2.4112, 1.71, 2.0]], rtol=1e-12)


def test_gae_lambda0_is_one_step_td():
    # λ = 0: A_t = δ_t = [1.4, 0.35, 0.5] (same r, V, γ as above)
    r, v, m = t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]]), t([[1.0, 1.0, 1.0]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.0)
    np.testing.assert_allclose(adv.numpy(), [[1.4, 0.35, 0.5]], rtol=1e-12)
    # R = δ + V = r + γV_{t+1} = [1.9, 1.35, 2.0]
    np.testing.assert_allclose(ret.numpy(), [[1.9, 1.35, 2.0]], rtol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_gamma0_is_reward_minus_value(lam):
    # γ = 0: δ_t = r_t − V_t and γλ = 0, so A_t = r_t − V_t = [0.5, −1, 0.5]; R = r
    r, v, m = t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]]), t([[1.0, 1.0, 1.0]])
    adv, ret = gae(r, v, m, gamma=0.0, lam=lam)
    np.testing.assert_allclose(adv.numpy(), [[0.5, -1.0, 0.5]], rtol=1e-12)
    np.testing.assert_allclose(ret.numpy(), [[1.0, 0.0, 2.0]], rtol=1e-12)


def test_gae_right_padded_rows_of_different_length():
    # row 0: full length 3 (the hand example above).
    # row 1: length 2, r = [1, 0], V = [0.5, 1]; padding holds junk (100) that must be ignored.
    #   δ_1 = 0 + 0.9·0 − 1 = −1 ; δ_0 = 1 + 0.9·1 − 0.5 = 1.4
    #   A_1 = −1 ; A_0 = 1.4 + 0.72·(−1) = 0.68 ; R = [1.18, 0, 0]
    # row 2: length 1, r = [3], V = [2]: A = 3 − 2 = 1, R = 3
    # row 3: empty (all masked) -> zeros
    r = t([[1.0, 0.0, 2.0], [1.0, 0.0, 100.0], [3.0, 100.0, 100.0], [100.0, 100.0, 100.0]])
    v = t([[0.5, 1.0, 1.5], [0.5, 1.0, 100.0], [2.0, 100.0, 100.0], [100.0, 100.0, 100.0]])
    m = t([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv.numpy(), [[1.9112, 0.71, 0.5], [0.68, -1.0, 0.0],
                                             [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), [[2.4112, 1.71, 2.0], [1.18, 0.0, 0.0],
                                             [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-12, atol=1e-12)


def test_gae_hole_equals_row_without_hole():
    # [r0, X, r1, r2] with mask [1, 0, 1, 1] must equal [r0, r1, r2] with mask [1, 1, 1]
    r_h, v_h, m_h = t([[1.0, 55.0, 0.0, 2.0]]), t([[0.5, -7.0, 1.0, 1.5]]), t([[1, 0, 1, 1]])
    adv_h, ret_h = gae(r_h, v_h, m_h, gamma=0.9, lam=0.8)
    r, v, m = t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]]), t([[1, 1, 1]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    keep = [0, 2, 3]
    torch.testing.assert_close(adv_h[:, keep], adv)
    torch.testing.assert_close(ret_h[:, keep], ret)
    assert adv_h[0, 1] == 0 and ret_h[0, 1] == 0
    # and both match the hand numbers
    np.testing.assert_allclose(adv_h.numpy(), [[1.9112, 0.0, 0.71, 0.5]], rtol=1e-12)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 1.0)])
def test_gae_random_masks_vs_numpy(gamma, lam):
    rng = np.random.default_rng(0)
    N, T = 5, 7
    r = rng.normal(size=(N, T))
    v = rng.normal(size=(N, T))
    m = (rng.random((N, T)) < 0.7).astype(np.float64)
    m[0] = 1.0          # full row
    m[1] = 0.0          # empty row
    m[2, 4:] = 0.0      # right padded
    adv, ret = gae(t(r), t(v), t(m), gamma=gamma, lam=lam)
    for i in range(N):
        ea, er = np_gae_row(r[i], v[i], m[i], gamma, lam)
        np.testing.assert_allclose(adv[i].numpy(), ea, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ret[i].numpy(), er, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()


def test_gae_via_registry_and_missing_inputs():
    r, v, m = t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]]), t([[1.0, 1.0, 1.0]])
    x = AdvantageInputs(mask=m, scores=t([2.0]), token_rewards=r, values=v, gamma=0.9, lam=0.8)
    adv, ret = compute_advantages("gae", x)
    np.testing.assert_allclose(adv.numpy(), [[1.9112, 0.71, 0.5]], rtol=1e-12)
    np.testing.assert_allclose(ret.numpy(), [[2.4112, 1.71, 2.0]], rtol=1e-12)
    with pytest.raises(ValueError):
        compute_advantages("gae", AdvantageInputs(mask=m, scores=t([2.0]), token_rewards=r))
    with pytest.raises(ValueError):
        compute_advantages("gae", AdvantageInputs(mask=m, scores=t([2.0]), values=v))


# --------------------------------------------------------------------------- group normalize


def test_group_normalize_size2():
    # groups [1, 3] and [5, 5]
    # g0: mean 2, dev [−1, 1], unbiased var = (1 + 1)/1 = 2, std = √2 -> ±1/(√2 + eps)
    # g1: all equal -> exactly 0 (no NaN)
    eps = 1e-4
    out = group_normalize(t([1.0, 3.0, 5.0, 5.0]), 2, scale=True, eps=eps)
    s = np.sqrt(2.0)
    np.testing.assert_allclose(out.numpy(), [-1 / (s + eps), 1 / (s + eps), 0.0, 0.0], rtol=1e-12)
    out = group_normalize(t([1.0, 3.0, 5.0, 5.0]), 2, scale=False)
    np.testing.assert_allclose(out.numpy(), [-1.0, 1.0, 0.0, 0.0], rtol=1e-12)


def test_group_normalize_size4():
    # group [0, 1, 2, 5]: mean 2, dev [−2, −1, 0, 3], Σdev² = 4+1+0+9 = 14,
    #   unbiased var = 14/3, std = √(14/3) ≈ 2.160247
    # group [2, 2, 2, 2]: zeros
    eps = 1e-3
    scores = t([0.0, 1.0, 2.0, 5.0, 2.0, 2.0, 2.0, 2.0])
    out = group_normalize(scores, 4, scale=True, eps=eps)
    s = np.sqrt(14.0 / 3.0)
    np.testing.assert_allclose(out.numpy(), [-2 / (s + eps), -1 / (s + eps), 0.0, 3 / (s + eps), 0, 0, 0, 0],
                               rtol=1e-12, atol=0)
    assert torch.isfinite(out).all()
    out = group_normalize(scores, 4, scale=False)
    np.testing.assert_allclose(out.numpy(), [-2.0, -1.0, 0.0, 3.0, 0, 0, 0, 0], rtol=1e-12)


def test_group_normalize_group_size_one_zero_no_nan():
    out = group_normalize(t([1.0, -3.0, 7.0]), 1, scale=True)
    assert torch.equal(out, torch.zeros(3, dtype=F64))


def test_grpo_registry_broadcasts_over_mask():
    # groups of 2: [1, 3] -> ±1/(√2 + 1e-4) (default eps); [0, 4] -> dev ±2, std 2√2 -> ±2/(2√2+1e-4)
    mask = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    x = AdvantageInputs(mask=mask, scores=t([1.0, 3.0, 0.0, 4.0]), group_size=2)
    adv, ret = compute_advantages("grpo", x)
    assert ret is None
    a = [-1 / (np.sqrt(2) + 1e-4), 1 / (np.sqrt(2) + 1e-4), -2 / (2 * np.sqrt(2) + 1e-4), 2 / (2 * np.sqrt(2) + 1e-4)]
    np.testing.assert_allclose(adv.numpy(), np.array(a)[:, None] * mask.numpy(), rtol=1e-12)
    x.scale = False
    adv, _ = compute_advantages("grpo", x)
    np.testing.assert_allclose(adv.numpy(), np.array([-1.0, 1.0, -2.0, 2.0])[:, None] * mask.numpy())


# --------------------------------------------------------------------------- rloo


def test_rloo_hand():
    # G = 3, group [1, 2, 6]:
    #   1 − (2+6)/2 = −3 ; 2 − (1+6)/2 = −1.5 ; 6 − (1+2)/2 = 4.5
    # G = 3, group [4, 4, 4] -> zeros
    out = rloo(t([1.0, 2.0, 6.0, 4.0, 4.0, 4.0]), 3)
    np.testing.assert_allclose(out.numpy(), [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0], rtol=1e-12)
    # G = 2, groups [0, 1], [5, 2]: r_i − r_other -> [−1, 1, 3, −3]
    out = rloo(t([0.0, 1.0, 5.0, 2.0]), 2)
    np.testing.assert_allclose(out.numpy(), [-1.0, 1.0, 3.0, -3.0], rtol=1e-12)


def test_rloo_group_size_one_raises():
    with pytest.raises(ValueError):
        rloo(t([1.0, 2.0]), 1)
    with pytest.raises(ValueError):
        compute_advantages("rloo", AdvantageInputs(mask=t([[1.0], [1.0]]), scores=t([1.0, 2.0]), group_size=1))


def test_rloo_registry():
    mask = t([[1, 1], [1, 0], [0, 0], [1, 1]])
    adv, ret = compute_advantages("rloo", AdvantageInputs(mask=mask, scores=t([0.0, 1.0, 5.0, 2.0]), group_size=2))
    assert ret is None
    np.testing.assert_allclose(adv.numpy(), [[-1, -1], [1, 0], [0, 0], [-3, -3]], rtol=1e-12)


# --------------------------------------------------------------------------- returns-to-go / whiten


def test_returns_to_go_hand_with_padding_and_hole():
    # row 0: r = [1, 2, 3] full -> [6, 5, 3]
    # row 1: r = [1, X, 2, pad] mask [1, 0, 1, 0] -> [3, 0, 2, 0]
    # γ = 0.5 on row 0: [1 + 0.5·(2 + 0.5·3), 2 + 0.5·3, 3] = [2.75, 3.5, 3]
    r = t([[1.0, 2.0, 3.0, 0.0], [1.0, 9.0, 2.0, 9.0]])
    m = t([[1, 1, 1, 0], [1, 0, 1, 0]])
    np.testing.assert_allclose(returns_to_go(r, m).numpy(), [[6, 5, 3, 0], [3, 0, 2, 0]], rtol=1e-12)
    np.testing.assert_allclose(returns_to_go(r, m, gamma=0.5)[0].numpy(), [2.75, 3.5, 3.0, 0.0], rtol=1e-12)


def test_masked_whiten_hand_and_degenerate():
    # values on the mask: [1, 2, 3, 6] -> mean 3, pop var (4+1+0+9)/4 = 3.5
    x = t([[1.0, 2.0, 99.0], [3.0, 6.0, -99.0]])
    m = t([[1, 1, 0], [1, 1, 0]])
    out = masked_whiten(x, m, eps=0.0)
    np.testing.assert_allclose(out.numpy(), [[-2 / np.sqrt(3.5), -1 / np.sqrt(3.5), 0], [0, 3 / np.sqrt(3.5), 0]],
                               rtol=1e-12)
    out = masked_whiten(x, m, shift_mean=False, eps=0.0)
    np.testing.assert_allclose(out.numpy(), [[-2 / np.sqrt(3.5) + 3, -1 / np.sqrt(3.5) + 3, 0],
                                             [3, 3 / np.sqrt(3.5) + 3, 0]], rtol=1e-12)
    # zero variance and empty mask stay finite
    assert torch.equal(masked_whiten(t([[2.0, 2.0, 2.0]]), t([[1, 1, 0]])), torch.zeros(1, 3, dtype=F64))
    assert torch.equal(masked_whiten(x, torch.zeros_like(m)), torch.zeros_like(x))


# --------------------------------------------------------------------------- reinforce++ / baseline


def test_reinforce_pp_vs_numpy():
    rng = np.random.default_rng(1)
    N, T = 4, 6
    r = rng.normal(size=(N, T))
    m = np.ones((N, T))
    m[1, 3:] = 0
    m[2, 1] = 0          # hole
    m[3] = 0             # empty row
    adv, ret = compute_advantages("reinforce_pp", AdvantageInputs(mask=t(m), scores=t(np.zeros(N)),
                                                                  token_rewards=t(r), gamma=0.5, group_size=2))
    # expected: γ is ignored (always 1); whiten over all masked tokens, population variance
    exp_ret = np.stack([np_rtg_row(r[i], m[i]) for i in range(N)])
    vals = exp_ret[m > 0]
    mu = vals.mean()
    var = ((vals - mu) ** 2).mean()          # population variance
    exp_adv = (exp_ret - mu) / np.sqrt(var + 1e-8) * m
    np.testing.assert_allclose(ret.numpy(), exp_ret, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(adv.numpy(), exp_adv, rtol=1e-10, atol=1e-12)
    # whitened over the batch: mean 0, (population) std 1 on the masked tokens
    assert abs(adv.numpy()[m > 0].mean()) < 1e-10
    assert adv.numpy()[m > 0].std() == pytest.approx(1.0, rel=1e-6)


def test_reinforce_pp_hand():
    # token rewards row 0 [0, 0, 1], row 1 [0, −1, pad]: returns-to-go [1, 1, 1], [−1, −1, 0]
    # masked values [1, 1, 1, −1, −1]: mean 0.2, pop var = (3·0.64 + 2·1.44)/5 = 0.96
    r = t([[0.0, 0.0, 1.0], [0.0, -1.0, 5.0]])
    m = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = compute_advantages("reinforce_pp", AdvantageInputs(mask=m, scores=t([1.0, -1.0]), token_rewards=r))
    np.testing.assert_allclose(ret.numpy(), [[1, 1, 1], [-1, -1, 0]], rtol=1e-12)
    s = np.sqrt(0.96 + 1e-8)
    np.testing.assert_allclose(adv.numpy(), [[0.8 / s] * 3, [-1.2 / s, -1.2 / s, 0.0]], rtol=1e-12)
    with pytest.raises(ValueError):
        compute_advantages("reinforce_pp", AdvantageInputs(mask=m, scores=t([1.0, -1.0])))


def test_reinforce_baseline_vs_numpy():
    rng = np.random.default_rng(2)
    G, P = 3, 4
    scores = rng.normal(size=G * P)
    mask = (rng.random((G * P, 5)) < 0.8).astype(np.float64)
    eps = 1e-4
    adv, ret = compute_advantages("reinforce_baseline",
                                  AdvantageInputs(mask=t(mask), scores=t(scores), group_size=G, eps=eps))
    assert ret is None
    g = scores.reshape(P, G)
    centred = (g - g.mean(axis=1, keepdims=True)).reshape(-1)
    exp = centred / (np.std(centred, ddof=1) + eps)
    np.testing.assert_allclose(adv.numpy(), exp[:, None] * mask, rtol=1e-10, atol=1e-12)


def test_reinforce_baseline_hand():
    # groups [1, 3], [0, 0]: centred [−1, 1, 0, 0]; batch mean 0,
    # unbiased var = (1 + 1 + 0 + 0)/3 = 2/3, std = √(2/3) ≈ 0.816497
    mask = t([[1, 1], [1, 0], [1, 1], [1, 1]])
    adv, _ = compute_advantages("reinforce_baseline",
                                AdvantageInputs(mask=mask, scores=t([1.0, 3.0, 0.0, 0.0]), group_size=2, eps=1e-4))
    s = np.sqrt(2 / 3) + 1e-4
    np.testing.assert_allclose(adv.numpy(), [[-1 / s, -1 / s], [1 / s, 0], [0, 0], [0, 0]], rtol=1e-12)


# --------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_all_estimators_finite_on_degenerate_batch(name):
    # equal scores in every group (zero std), one empty mask row, zero token rewards/values
    N, T = 4, 3
    mask = t([[1, 1, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0]])
    x = AdvantageInputs(mask=mask, scores=t([2.0, 2.0, -1.0, -1.0]), group_size=2,
                        token_rewards=torch.zeros(N, T, dtype=F64), values=torch.zeros(N, T, dtype=F64))
    adv, ret = compute_advantages(name, x)
    assert adv.shape == (N, T)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv, torch.zeros_like(adv))
    assert torch.all(adv[mask == 0] == 0)
    if ret is not None:
        assert torch.isfinite(ret).all() and torch.all(ret[mask == 0] == 0)


def test_unknown_estimator_raises():
    from rlhfkit.errors import ConfigError

    with pytest.raises(ConfigError, match="got 'nope'"):
        compute_advantages("nope", AdvantageInputs(mask=t([[1.0]]), scores=t([1.0])))


# --------------------------------------------------------------------------- the registry's specs


def test_specs_carry_the_rules_the_recipe_reads():
    from rlhfkit.rl.advantages import get_advantage

    gae_, grpo_, rloo_ = get_advantage("gae"), get_advantage("grpo"), get_advantage("rloo")
    assert gae_.needs_critic and gae_.whiten and gae_.token_rewards and gae_.run_name == "ppo"
    assert (grpo_.min_group, grpo_.kl_in, grpo_.importance) == (2, "loss", "token")
    assert (rloo_.min_group, rloo_.kl_in, rloo_.importance) == (2, "reward", "sequence")
    assert get_advantage("reinforce_pp").token_rewards and not get_advantage("reinforce_baseline").token_rewards
    assert [n for n, s in ADVANTAGES.items() if s.needs_critic] == ["gae"]


def test_unknown_estimator_lists_the_valid_names():
    from rlhfkit.errors import ConfigError
    from rlhfkit.rl.advantages import get_advantage

    with pytest.raises(ConfigError, match="did you mean 'grpo'") as e:
        get_advantage("grop")
    assert all(n in str(e.value) for n in ADVANTAGES)


def test_a_registered_estimator_is_checked_by_its_spec(monkeypatch):
    from rlhfkit.errors import ConfigError
    from rlhfkit.rl import advantages
    from rlhfkit.rl.config import RLConfig, importance_level, kl_placement, validate

    monkeypatch.setattr(advantages, "ADVANTAGES", dict(advantages.ADVANTAGES))

    @advantages.register_advantage("triples", min_group=3, kl_in="loss", importance="sequence")
    def _triples(x):
        return advantages._broadcast(x.scores, x.mask), None

    cfg = RLConfig(advantage="triples", loss_agg="grpo")
    cfg.rollout.num_generations = 2
    with pytest.raises(ConfigError, match="num_generations >= 3"):
        validate(cfg)
    cfg.rollout.num_generations = 3
    validate(cfg)
    assert kl_placement(cfg) == "loss" and importance_level(cfg) == "sequence"
    with pytest.raises(ValueError, match="registered twice"):
        advantages.register_advantage("triples")(_triples)

"""Tests for rlhfkit.rl.kl_control against hand-computed update sequences.

Adaptive rule: β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon).
"""

from __future__ import annotations

import pytest

from rlhfkit.rl.kl_control import AdaptiveKL, FixedKL, make_kl_controller


def test_fixed_is_constant():
    c = FixedKL(0.05)
    assert c.value == 0.05
    for kl, n in [(0.0, 1), (100.0, 64), (-3.0, 8), (0.05, 1000)]:
        assert c.update(kl, n) == 0.05
    assert c.value == 0.05
    assert isinstance(FixedKL(1).value, float)


def test_adaptive_hand_sequence():
    # β0 = 0.1, target = 6, horizon = 100, n = 10 -> n/horizon = 0.1
    c = AdaptiveKL(0.1, target=6.0, horizon=100)
    # KL = 12: 12/6 − 1 = 1 -> clipped to +0.2 -> β = 0.1·(1 + 0.02) = 0.102
    assert c.update(12.0, 10) == pytest.approx(0.102, rel=1e-12)
    # KL = 3: 3/6 − 1 = −0.5 -> clipped to −0.2 -> β = 0.102·0.98 = 0.09996
    assert c.update(3.0, 10) == pytest.approx(0.09996, rel=1e-12)
    # KL = 6 (on target): error 0 -> unchanged
    assert c.update(6.0, 10) == pytest.approx(0.09996, rel=1e-12)
    # KL = 6.6: 1.1 − 1 = 0.1 (inside the clip) -> β = 0.09996·1.01 = 0.1009596
    assert c.update(6.6, 10) == pytest.approx(0.1009596, rel=1e-12)
    # KL = 5.4: 0.9 − 1 = −0.1, n = 50 -> factor 1 − 0.1·0.5 = 0.95 -> 0.1009596·0.95 = 0.09591162
    assert c.update(5.4, 50) == pytest.approx(0.09591162, rel=1e-12)
    # KL = 0: −1 -> clipped −0.2, n = 100 -> factor 0.8 -> 0.076729296
    assert c.update(0.0, 100) == pytest.approx(0.076729296, rel=1e-12)
    assert c.value == pytest.approx(0.076729296, rel=1e-12)


def test_adaptive_exactly_on_target_is_fixed_point():
    c = AdaptiveKL(0.2, target=0.5, horizon=10)
    for _ in range(5):
        assert c.update(0.5, 7) == 0.2


def test_adaptive_invalid_args():
    with pytest.raises(ValueError):
        AdaptiveKL(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKL(0.1, target=1.0, horizon=0)


def test_make_kl_controller():
    f = make_kl_controller(0.3)
    assert type(f) is FixedKL and f.value == 0.3
    assert type(make_kl_controller(0.3, target=0.0)) is FixedKL
    a = make_kl_controller(0.3, target=2.0, horizon=20)
    assert isinstance(a, AdaptiveKL) and a.target == 2.0 and a.horizon == 20
    # default horizon 10000: KL above target by > 20%, n = 100 -> 0.3·(1 + 0.2·0.01) = 0.3006
    assert make_kl_controller(0.3, target=1.0).update(5.0, 100) == pytest.approx(0.3006, rel=1e-12)


def test_state_dict_round_trip():
    a = AdaptiveKL(0.1, target=6.0, horizon=100)
    a.update(12.0, 10)                 # 0.102
    state = a.state_dict()
    assert state == {"value": pytest.approx(0.102)}
    b = AdaptiveKL(0.5, target=6.0, horizon=100)
    b.load_state_dict(state)
    assert b.value == a.value
    # both continue identically: 0.102·0.98 = 0.09996
    assert b.update(3.0, 10) == a.update(3.0, 10) == pytest.approx(0.09996, rel=1e-12)

    f = FixedKL(0.7)
    g = FixedKL(0.0)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.7 and g.update(1.0, 1) == 0.7

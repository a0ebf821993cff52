"""The generated arithmetic task's demonstrations and pairs (values written out by hand)."""

import random

from rlhfkit.tasks.arithmetic import estimate, is_correct, make_problems, precise, preference_rows, sft_rows
from rlhfkit.tasks.general_text import general_rows


def test_precise_and_estimate_by_hand():
    p = {"prompt": [], "answer": "55", "a": 37, "b": 18}
    assert precise(p) == "37 + 18 = 55. The answer is 55."
    assert precise(p, 52) == "37 + 18 = 52. The answer is 52."
    assert estimate(p) == "Roughly 40 + 20 = 60. The answer is about 60."
    assert not is_correct(estimate(p), "55")
    # operands round to tens (at least 10); an estimate is right only when the rounding errors cancel
    assert estimate({"a": 4, "b": 25, "answer": "29"}) == "Roughly 10 + 30 = 40. The answer is about 40."
    assert is_correct(estimate({"a": 29, "b": 31, "answer": "60"}), "60")


def test_sft_rows_mix_estimates_at_the_requested_share():
    probs = make_problems(400, seed=0)
    rows = sft_rows(probs, estimate_frac=0.4, seed=3)
    n_est = sum(r["completion"].startswith("Roughly") for r in rows)
    assert 0.33 < n_est / 400 < 0.47  # binomial(400, 0.4): sd 0.0245
    assert all(r["completion"] in (precise(p), estimate(p)) for r, p in zip(rows, probs))
    assert [r["completion"] for r in sft_rows(probs[:5])] == [precise(p) for p in probs[:5]]


def test_preference_rows_kinds_and_default_unchanged():
    probs = make_problems(300, seed=1)
    rows = preference_rows(probs, seed=2, estimate_frac=0.75)
    kinds = [r["rejected_kind"] for r in rows]
    assert 0.68 < kinds.count("estimate") / 300 < 0.82
    for r, p in zip(rows, probs):
        assert r["chosen"] == precise(p) and is_correct(r["chosen"], p["answer"])
        if r["rejected_kind"] == "estimate":
            assert r["rejected"] == estimate(p)
        else:
            assert r["rejected"].startswith(f"{p['a']} + {p['b']} = ") and not is_correct(r["rejected"], p["answer"])
    # estimate_frac 0: the plain wrong-sum pairs, no extra field, the same draws as always
    rng = random.Random(5)
    expect = [int(p["answer"]) + rng.choice([-1, 1]) * rng.randint(1, 10) for p in probs[:20]]
    plain = preference_rows(probs[:20], seed=5)
    assert [r["rejected"] for r in plain] == [precise(p, w) for p, w in zip(probs[:20], expect)]
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in plain)


def test_general_text_probe_has_no_arithmetic():
    rows = general_rows()
    assert len(rows) >= 20 and all(r["prompt"][0]["role"] == "user" and r["completion"] for r in rows)
    assert not any(any(ch.isdigit() for ch in r["prompt"][0]["content"]) or "+" in r["completion"] for r in rows)

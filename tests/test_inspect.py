"""``rlhfkit inspect``: counts on small hand-made files, near-duplicates against a brute-force
Jaccard, bad input, and the real HH-harmless file."""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import time

import pytest
from conftest import HH_FILE, needs_hh, write_jsonl

from rlhfkit.cli import main
from rlhfkit.inspect import inspect_path, inspect_rows, jaccard, near_duplicates, shingles

Z = 1.959963984540054


def _wilson(k, n):
    p = k / n
    den = 1 + Z * Z / n
    mid, half = (p + Z * Z / (2 * n)) / den, Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / den
    return [max(0.0, mid - half), min(1.0, mid + half)]


LONG = " ".join(f"w{i}" for i in range(100))  # 100 distinct words


def _pairs():
    near = LONG.rsplit(" ", 1)[0] + " zzz"  # last word changed: 3 of 104 shingles differ
    far = " ".join("q" if i % 10 == 0 and 0 < i < 100 else f"w{i}" for i in range(100))
    return [
        {"prompt": "Q1", "chosen": "aaaa bbbb", "rejected": "cc", "margin": 2.0},   # 0 longer (chars, words)
        {"prompt": "Q2", "chosen": "x", "rejected": "yyyy", "margin": 1.0},         # 1 shorter chars, equal words
        {"prompt": "Q3", "chosen": "abc", "rejected": "def"},                      # 2 equal
        {"prompt": "Q1", "chosen": "aaaa bbbb", "rejected": "cc", "margin": 2.0},   # 3 exact duplicate of 0
        {"prompt": "Q4", "chosen": "same answer", "rejected": "same  answer"},     # 4 tie (up to whitespace)
        {"prompt": LONG, "chosen": "good answer here", "rejected": "bad reply there"},  # 5
        {"prompt": near, "chosen": "good answer here", "rejected": "bad reply there"},  # 6 near-duplicate of 5
        {"prompt": far, "chosen": "good answer here", "rejected": "bad reply there"},   # 7 not near (J = 77/131)
    ]


def test_pairs_counts_by_hand(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs())
    rep = inspect_path(str(path))
    assert rep["kind"] == "preference" and rep["rows"] == 8 and rep["invalid"]["rows"] == 0
    assert rep["ties"] == 1 and rep["ties_rows"] == [4]
    assert rep["duplicates"]["rows"] == 1 and rep["duplicates"]["examples"] == [{"row": 3, "same_as": 0}]
    # row text = prompt + chosen + rejected: 100 + 3 + 3 words -> 104 shingles; 3 differ each way
    nd = rep["near_duplicates"]
    assert (nd["pairs"], nd["rows"]) == (1, 1)
    assert nd["examples"] == [{"row": 6, "similar_to": 5, "jaccard": round(101 / 107, 4)}]
    # chars: rows 0, 3, 5, 6, 7 longer (16 vs 15 chars), row 1 shorter, row 2 equal -> 5/6
    lb = rep["length_bias"]["chars"]
    assert (lb["pairs"], lb["longer"], lb["shorter"], lb["equal"]) == (7, 5, 1, 1)
    assert lb["rate"] == pytest.approx(5 / 6) and lb["ci95"] == pytest.approx(_wilson(5, 6))
    # words: rows 0 and 3 longer (2 vs 1), all others equal -> 2/2
    lw = rep["length_bias"]["words"]
    assert (lw["longer"], lw["shorter"], lw["equal"], lw["rate"]) == (2, 0, 5, 1.0)
    assert rep["strength"]["n"] == 3 and rep["strength"]["mean"] == pytest.approx(5 / 3)
    assert rep["prompts"]["distinct"] == 6  # Q1, Q2, Q3, and the three long prompts (the tie row is left out)
    ch = rep["lengths"]["chars"]["chosen"]
    assert ch["n"] == 7 and ch["max"] == 16 and ch["p50"] == 9  # 1, 3, 9, 9, 16, 16, 16
    assert rep["lengths"]["chars"]["rejected"]["mean"] == pytest.approx((2 + 4 + 3 + 2 + 15 * 3) / 7)
    # distinct-1 over the 7 prompts: words Q1 Q2 Q3 Q1 + 100 + 100 + 100 words; distinct:
    # q1 q2 q3, w0..w99, zzz, q -> 3 + 100 + 1 + 1 = 105 of 304
    assert rep["prompts"]["distinct_1"] == pytest.approx(105 / 304)
    assert rep["agreement"] is None


def test_listwise_and_unpaired_counts(tmp_path):
    lw = tmp_path / "lists.jsonl"
    write_jsonl(lw, [{"prompt": "p1", "completions": ["aaaa", "bb", "c"], "ranks": [1, 2, 3]},
                     {"prompt": "p2", "completions": ["x", "yyy", "zz"], "scores": [2.0, 1.0, 1.0]}])
    rep = inspect_path(str(lw))
    # pairs with different scores: aaaa>bb, aaaa>c, bb>c (longer), x>yyy, x>zz (shorter) -> 3/5
    b = rep["length_bias"]["chars"]
    assert (rep["kind"], rep["ties"], rep["list_sizes"]) == ("listwise", 1, {3: 2})
    assert (b["pairs"], b["longer"], b["shorter"], b["rate"]) == (5, 3, 2, 0.6)

    up = tmp_path / "thumbs.jsonl"
    write_jsonl(up, [{"prompt": "P1", "completion": "long good answer", "label": True},
                     {"prompt": "P1", "completion": "bad", "label": False},
                     {"prompt": "P2", "completion": "ok", "label": True},
                     {"prompt": "P2", "completion": "terrible reply", "label": False},
                     {"prompt": "P3", "completion": "solo", "label": True}])
    rep = inspect_path(str(up))
    assert rep["labels"] == {"desirable": 3, "undesirable": 2, "unlabelled": 0}
    b = rep["length_bias"]["chars"]  # within-prompt pairs: P1 longer, P2 shorter
    assert (b["pairs"], b["longer"], b["shorter"], b["rate"]) == (2, 1, 1, 0.5)
    assert rep["lengths"]["chars"]["desirable"]["n"] == 3 and rep["prompts"]["distinct"] == 3


def test_near_duplicates_match_brute_force():
    rng = random.Random(0)
    vocab = [f"v{i}" for i in range(300)]
    texts = []
    for _ in range(150):
        base = [rng.choice(vocab) for _ in range(rng.randint(20, 120))]
        texts.append(" ".join(base))
        if rng.random() < 0.5:  # a variant with 0-6 words replaced: Jaccard spread around 0.9
            var = list(base)
            for _ in range(rng.randint(0, 6)):
                var[rng.randrange(len(var))] = rng.choice(vocab)
            texts.append(" ".join(var))
    sets = [shingles(t) for t in texts]
    brute = {(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))
             if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= 0.9}
    found = near_duplicates(texts, 0.9)
    assert {(i, j) for i, j, _ in found} == brute
    assert len(brute) > 10 and any(s < 1.0 for *_, s in found)
    assert all(s == pytest.approx(jaccard(sets[i], sets[j])) for i, j, s in found)
    assert near_duplicates(texts, 0.9, skip={i for i, _ in brute}) == [
        t for t in found if t[0] not in {i for i, _ in brute} and t[1] not in {i for i, _ in brute}]


def test_hook_takes_example_dicts_and_annotations():
    rows = [{"prompt": "a", "chosen": "yes yes", "rejected": "no"},
            {"prompt": "b", "chosen": "y", "rejected": "nope"}]
    labels = [(0, "ann1", "A"), (0, "ann2", "A"), (1, "ann1", "B"), (1, "ann2", "A")]
    rep = inspect_rows(rows, source="studio://demo", annotations=labels)
    assert rep["source"] == "studio://demo" and rep["rows"] == 2
    # p_o = 1/2; ann1 (A 1/2, B 1/2), ann2 (A 1) -> p_e = 1/2 -> kappa 0
    assert rep["agreement"]["annotators"] == 2 and rep["agreement"]["cohen_kappa"] == 0.0


def test_token_lengths_with_a_tokenizer(tok):
    rows = [{"prompt": "Say hi", "chosen": "Hello there, friend!", "rejected": "No."},
            {"prompt": "Count", "chosen": "1", "rejected": "one two three four"}]
    rep = inspect_rows(rows, tokenizer=tok)
    assert rep["length_units"] == ["chars", "words", "tokens"]
    n = [(len(tok.encode(r["chosen"], add_special_tokens=False)), len(tok.encode(r["rejected"], add_special_tokens=False)))
         for r in rows]
    assert n[0][0] > n[0][1] and n[1][0] < n[1][1]
    b = rep["length_bias"]["tokens"]
    assert (b["longer"], b["shorter"], b["rate"]) == (1, 1, 0.5)
    assert rep["lengths"]["tokens"]["chosen"]["max"] == max(c for c, _ in n)


def test_cli_writes_json_and_plots(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs())
    out = tmp_path / "out"
    assert main(["inspect", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ties" in text and "near-duplicate rows (J >= 0.9)     1 (1 pairs)" in text
    assert "0.833 [95% CI" in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["duplicates"]["rows"] == 1 and "_series" not in rep
    for name in ("lengths.png", "length_bias.png", "strength.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(path)]) == 0  # without --out: print only
    assert "wrote" not in capsys.readouterr().out


def test_bad_input_names_file_and_row(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "not found" in err and "Traceback" not in err

    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"},
                      {"prompt": "q", "chosen": "c", "rejected": "d"}])
    rep = inspect_path(str(bad))
    assert rep["invalid"]["rows"] == 1 and rep["length_bias"]["chars"]["pairs"] == 2
    assert rep["invalid"]["examples"] == [f"{bad}, row 1, field 'rejected': missing required field"]
    assert main(["inspect", str(bad), "--strict"]) == 2
    assert f"{bad}, row 1, field 'rejected': missing required field" in capsys.readouterr().err
    assert main(["inspect", str(bad)]) == 0
    assert "row 1, field 'rejected'" in capsys.readouterr().out

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": \n')
    assert main(["inspect", str(broken)]) == 2
    assert "broken.jsonl, row 1: bad JSON on line 2" in capsys.readouterr().err

    sft = tmp_path / "sft.jsonl"
    write_jsonl(sft, [{"prompt": "p", "completion": "c"}])
    assert main(["inspect", str(sft)]) == 2
    assert "prompt_completion" in capsys.readouterr().err

    all_bad = tmp_path / "allbad.jsonl"
    write_jsonl(all_bad, [{"prompt": "p", "chosen": "", "rejected": "b"}])
    assert main(["inspect", str(all_bad)]) == 2
    assert "no valid rows" in capsys.readouterr().err

    assert main(["inspect", str(bad), "--near_dup_threshold", "0"]) == 2
    assert "near_dup_threshold must be in (0, 1]" in capsys.readouterr().err


@needs_hh
def test_hh_harmless_file():
    t0 = time.perf_counter()
    rep = inspect_path(HH_FILE)
    took = time.perf_counter() - t0
    with gzip.open(HH_FILE, "rt") as f:
        rows = [json.loads(line) for line in f]
    assert rep["rows"] == len(rows) == 2312
    # the 4 rows whose last assistant turn is empty (training refuses them, see rm_hh.yaml)
    empty = [i for i, r in enumerate(rows)
             if any(not x.rsplit("\n\nAssistant:", 1)[1].strip() for x in (r["chosen"], r["rejected"]))]
    assert rep["invalid"]["rows"] == len(empty) == 4
    dup = len(rows) - len({json.dumps(r, sort_keys=True) for r in rows})
    assert rep["duplicates"]["rows"] == dup and rep["ties"] == 0
    # chars of the last assistant turns, independently of the loader's prompt split; the 5 rows whose
    # dialogues already differ before the last assistant turn have longer completions in the loader
    diverge = sum(r["chosen"].rsplit("\n\nAssistant:", 1)[0] != r["rejected"].rsplit("\n\nAssistant:", 1)[0]
                  for r in rows)
    assert diverge == 5
    ok = [r for i, r in enumerate(rows) if i not in set(empty)]
    c = [len(r["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()) for r in ok]
    j = [len(r["rejected"].rsplit("\n\nAssistant:", 1)[1].strip()) for r in ok]
    longer, shorter = sum(a > b for a, b in zip(c, j)), sum(a < b for a, b in zip(c, j))
    lb = rep["length_bias"]["chars"]
    assert abs(lb["longer"] - longer) <= diverge and abs(lb["shorter"] - shorter) <= diverge
    assert lb["longer"] + lb["shorter"] + lb["equal"] == len(ok)
    assert took < 60, f"{took:.1f} s on {os.cpu_count()} cores"

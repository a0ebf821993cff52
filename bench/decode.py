"""Decode speed of the rollout engine, side by side in one process: rlhfkit's decode loop
(lean decoder, the HF forward with oneDNN-packed weights, the HF forward with plain
linears) and HF ``generate``. Greedy by default, so all produce the same tokens (checked);
``--temperature 1`` samples as GRPO does (every row runs to the token limit far more often),
and the rlhfkit variants are checked against each other (their sampling is seeded per row).

    python bench/decode.py [--rows 8 --new_tokens 128 --threads 2 --reps 3 --temperature 0 --n 1]

``--n 4`` samples each of rows/4 prompts 4 times (as GRPO groups do) and adds a row with
``shared_prefill`` off (every row prefills its own copy of the prompt).

Prompts are the first GSM8K questions as plain "Question: ...\nAnswer:" text. Each
repetition runs the two in turn; the table reports the median seconds per call, ms per
decode step (one new token for every live row) and the ratio to HF ``generate``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--n", type=int, default=1, help="samples per prompt (rows / n distinct prompts)")
    a = ap.parse_args()
    import torch

    from rlhfkit.models.loading import load_model
    from rlhfkit.rl.rollout import HFBackend, SamplingParams

    torch.set_num_threads(a.threads)
    model, tok = load_model(C.model_dir())
    model.eval()
    n = max(1, a.n)
    prompts = [tok(r["prompt"])["input_ids"] for r in C.gsm8k_rows(max(1, a.rows // n))]
    sp = SamplingParams(max_new_tokens=a.new_tokens, temperature=a.temperature, n=n)
    rows = [p for p in prompts for _ in range(n)]
    greedy = a.temperature <= 0
    fast = HFBackend(model, tok, a.rows)
    hf_fwd = HFBackend(model, tok, a.rows, lean_decode=False)
    plain = HFBackend(model, tok, a.rows, packed_weights=False, lean_decode=False)

    def hf_generate():
        L = max(map(len, rows))
        ids = torch.full((len(rows), L), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(rows):
            ids[i, L - len(p):], att[i, L - len(p):] = torch.tensor(p), 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=a.new_tokens, do_sample=not greedy,
                                 temperature=a.temperature if not greedy else None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id, eos_token_id=fast.eos_ids)
        comps = []
        for row in out[:, L:].tolist():
            c = []
            for t in row:
                c.append(t)
                if t in fast.eos_ids:
                    break
            comps.append(c)
        return comps

    def seeded(backend):
        return lambda: backend.generate(prompts, sp, generator=torch.Generator().manual_seed(0)).completion_ids

    first = "rlhfkit decode loop (lean decoder + packed weights)"
    runs = {first: seeded(fast),
            "rlhfkit, HF forward + packed weights (lean_decode false)": seeded(hf_fwd),
            "rlhfkit, HF forward + plain linears (both false)": seeded(plain),
            "HF generate": hf_generate}
    if n > 1:
        runs["rlhfkit lean decoder, shared_prefill false"] = seeded(
            HFBackend(model, tok, a.rows, shared_prefill=False))
    times: dict[str, list[float]] = {k: [] for k in runs}
    outs = {}
    for _ in range(a.reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    ref = outs["HF generate" if greedy else first]
    same = {k: (v == ref) if greedy or k != "HF generate" else "n/a (own sampler)" for k, v in outs.items()}
    steps = max(map(len, ref))
    base = statistics.median(times["HF generate"])
    print(f"decode: {len(rows)} rows ({len(prompts)} prompts x {n}) x up to {a.new_tokens} new tokens ({steps} decode steps, "
          f"{sum(map(len, ref))} tokens), {'greedy' if greedy else f'temperature {a.temperature}'}, "
          f"{a.threads} threads, median of {a.reps}")
    print("| engine | s per call | ms per decode step | speed vs HF generate | same tokens |")
    print("|---|---|---|---|---|")
    for name in runs:
        m = statistics.median(times[name])
        print(f"| {name} | {m:.2f} | {1000 * m / steps:.0f} | {base / m:.2f}x | {same[name]} |")


if __name__ == "__main__":
    main()

"""How close one decode step's weight multiplications come to the machine's memory bandwidth.

    python bench/decode_gemm.py [--rows 8 --threads 2 --reps 10] [--profile]

A decode step multiplies a few rows (one new token per live sequence) by every weight
matrix, so it reads the whole fp32 model once: its floor is the model's bytes over the
memory read bandwidth. This script measures that bandwidth (a sum over a tensor as large as
the model), then times the model's own matmul shapes at ``--rows`` input rows, each layer
with its own weight (so no weight stays in cache), through the plain ``F.linear``, oneDNN
with reordered weights (what the rollout engine uses) and a matmul against a transposed
copy. ``--profile`` adds the torch.profiler top ops of one sampled rollout call (8 rows =
2 GSM8K prompts x 4 samples, 128 new tokens), to show the share of the step outside the
matmuls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def best(fn, reps: int) -> float:
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from rlhfkit.models.loading import load_model
    from rlhfkit.models.packed import packed_linear_available, packed_matmul, reorder_weight

    torch.set_num_threads(a.threads)
    model, tok = load_model(C.model_dir())
    c = model.config
    h, inter, vocab, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    # (out, in, count): the rollout engine's fused q/k/v and gate/up matrices, o, down, LM head
    shapes = {"qkv": (h + 2 * kv, h, L), "o": (h, h, L), "gate_up": (2 * inter, h, L),
              "down": (h, inter, L), "lm_head": (vocab, h, 1)}
    n_params = sum(p.numel() for p in model.parameters())
    big = torch.randn(n_params)
    read_s = best(big.sum, a.reps)
    gbps = big.numel() * 4 / read_s / 1e9
    print(f"model: {n_params / 1e6:.1f} M fp32 parameters = {n_params * 4 / 1e9:.2f} GB; "
          f"read bandwidth (sum): {gbps:.1f} GB/s -> floor {1e3 * read_s:.1f} ms per decode step")
    del big
    impls = ["F.linear", "oneDNN reordered", "x @ W.T copy"]
    if not packed_linear_available():
        impls.remove("oneDNN reordered")
    print(f"{a.rows} input rows, {a.threads} threads, best of {a.reps}")
    print("| matrices | bytes | " + " | ".join(f"{i} ms (GB/s)" for i in impls) + " |")
    print("|---|---|" + "---|" * len(impls))
    totals = dict.fromkeys(impls, 0.0)
    total_bytes = 0
    x = torch.randn(a.rows, max(h, inter))
    for name, (n_out, n_in, count) in shapes.items():
        ws = [torch.randn(n_out, n_in) for _ in range(count)]
        xi = x[:, :n_in].contiguous()
        fns = {"F.linear": lambda: [F.linear(xi, w) for w in ws],
               "x @ W.T copy": (lambda wt: lambda: [xi @ w for w in wt])([w.t().contiguous() for w in ws])}
        if "oneDNN reordered" in impls:
            ps = [reorder_weight(w, a.rows) for w in ws]
            fns["oneDNN reordered"] = lambda: [packed_matmul(xi, p, None) for p in ps]
        nbytes = n_out * n_in * 4 * count
        total_bytes += nbytes
        cells = []
        for i in impls:
            s = best(fns[i], a.reps)
            totals[i] += s
            cells.append(f"{1e3 * s:.2f} ({nbytes / s / 1e9:.1f})")
        print(f"| {name} x{count} | {nbytes / 1e6:.0f} MB | " + " | ".join(cells) + " |")
    print(f"| all | {total_bytes / 1e6:.0f} MB | "
          + " | ".join(f"{1e3 * totals[i]:.1f} ({total_bytes / totals[i] / 1e9:.1f})" for i in impls) + " |")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        from rlhfkit.rl.rollout import HFBackend, SamplingParams

        model.eval()
        prompts = [tok(r["prompt"])["input_ids"] for r in C.gsm8k_rows(2)]
        sp = SamplingParams(max_new_tokens=128, temperature=1.0, n=4)
        backend = HFBackend(model, tok, 8)
        backend.generate(prompts, sp, generator=torch.Generator().manual_seed(0))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ro = backend.generate(prompts, sp, generator=torch.Generator().manual_seed(0))
        print(f"profile of one rollout call: {len(ro.completion_ids)} rows, "
              f"{max(map(len, ro.completion_ids))} decode steps, {sum(map(len, ro.completion_ids))} tokens")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()

"""Decode speed and log-prob drift of the cpu engine's sampler precisions, side by side in one
process: ``runtime.sampler_dtype`` fp32 / bf16 / int8 on the embedded model, plus the
``HFBackend`` path (fp32 weights re-read on every call) as the reference for fp32's tokens.

    python bench/sampler_dtype.py [--rows 16 --new_tokens 64 --threads 2 --reps 3 --temperature 1]

Every variant gets the same prompts (``--rows`` distinct GSM8K questions, or generated
arithmetic questions without the shared data) and the same seed; EOS is ignored so every row
decodes all ``--new_tokens`` tokens (the same work for every variant). The variants run
interleaved, ``--reps`` rounds, so a machine shared with other processes slows them alike; the
table reports the fastest and the median seconds per call (prefill included; the fastest round
is the one least disturbed by other processes), new tokens per second and the ratio to fp32 at
the fastest round, the median CPU seconds the process used per call, the mean |Δ log p| of the sampled tokens between what the sampler returned and the
fp32 training forward (``completion_logprobs`` at the sampling temperature), the rows whose
tokens equal fp32's, the size of the engine's weight copy and the seconds to make it (what
``update_weights`` costs, paid at the next ``generate``). The CPU use of other processes seen
before the run is printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def busy_processes() -> list[str]:
    """Other processes using CPU right now (ps, sorted by CPU share)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,comm,args", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=10).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = str(os.getpid())
    rows = []
    for line in out:
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0] != me and float(parts[1]) >= 5.0 and parts[2] != "ps":
            rows.append(f"pid {parts[0]} {parts[1]}% {parts[3][:90] if len(parts) > 3 else parts[2]}")
    return rows


def prompts_of(tok, rows: int) -> list[list[int]]:
    if os.path.exists(C.GSM8K):
        return [tok(r["prompt"])["input_ids"] for r in C.gsm8k_rows(rows)]
    return [tok(f"Question: What is {7 * i + 3} + {11 * i + 5}?\nAnswer:")["input_ids"] for i in range(rows)]


def trainer_logprobs(model, pad_id: int, prompts, ro, temperature: float):
    """fp32 training-forward log-probs of every sampled token, in rollout order."""
    import torch

    from rlhfkit.data.collate import collate
    from rlhfkit.data.tokenize import Example
    from rlhfkit.models.forward import completion_logprobs

    n = ro.n
    exs = [Example(i, p, ro.completion_ids[n * i:n * i + n]) for i, p in enumerate(prompts)]
    b = collate(exs, pad_id=pad_id)
    with torch.no_grad():
        got = completion_logprobs(model, b, temperature=temperature).token_logps.tolist()
    order = [n * int(b.seq_example[s]) + int(b.seq_completion[s]) for s in range(b.num_sequences)]
    want = [lp for r in order for lp in ro.logprobs[r]]
    return got, want


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0)
    a = ap.parse_args()
    import torch

    from rlhfkit.backends import RuntimeOptions, make_engine
    from rlhfkit.config import ModelConfig
    from rlhfkit.models.loading import load_model
    from rlhfkit.rl.rollout import HFBackend, SamplingParams

    torch.set_num_threads(a.threads)
    model, tok = load_model(ModelConfig(name="smollm2-135m"))
    model.eval()
    prompts = prompts_of(tok, a.rows)
    sp = SamplingParams(max_new_tokens=a.new_tokens, temperature=a.temperature)
    engines = {"HFBackend (fp32, re-read every call)": HFBackend(model, tok, a.rows)}
    for dt in ("fp32", "bf16", "int8"):
        engines[f"cpu {dt}"] = make_engine("cpu", model, tok, batch_size=a.rows,
                                           runtime=RuntimeOptions(sampler_dtype=dt))
    for e in engines.values():
        e.eos_ids = [-1]  # never sampled: every row decodes all new tokens
        e.generate(prompts[:1], SamplingParams(max_new_tokens=1), generator=torch.Generator().manual_seed(0))
    builds = {}
    for name, e in engines.items():
        if hasattr(e, "decoder_weights") and e.lean and not isinstance(e, HFBackend):
            secs = []
            for _ in range(a.reps):
                e.update_weights(model)
                e.decoder_weights()
                secs.append(e.build_seconds)
            builds[name] = (statistics.median(secs), e.decoder_weights().nbytes() / 2**20)
    busy = busy_processes()
    load = os.getloadavg()
    times = {k: [] for k in engines}
    cpu = {k: [] for k in engines}
    outs = {}
    for _ in range(a.reps):
        for name, e in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = e.generate(prompts, sp, generator=torch.Generator().manual_seed(0))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    ref = outs["cpu fp32"]
    tokens = ref.num_tokens
    print(f"sampler_dtype: {len(prompts)} prompts x {a.new_tokens} new tokens ({tokens} tokens per call), "
          f"temperature {a.temperature}, {a.threads} threads, median of {a.reps} interleaved rounds")
    print(f"machine before the run: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"other busy processes: {'; '.join(busy) if busy else 'none'}")
    print("| sampler | s per call (fastest / median) | new tokens/s | speed vs cpu fp32 | CPU s per call | "
          "mean abs Δlogp vs fp32 trainer | rows = fp32 tokens | weight copy MB | copy build s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = min(times["cpu fp32"])
    for name, ro in outs.items():
        m = min(times[name])
        got, want = trainer_logprobs(model, tok.pad_token_id, prompts, ro, a.temperature)
        drift = sum(abs(x - y) for x, y in zip(got, want)) / max(1, len(got))
        same = sum(x == y for x, y in zip(ro.completion_ids, ref.completion_ids))
        b = builds.get(name)
        print(f"| {name} | {m:.2f} / {statistics.median(times[name]):.2f} | {ro.num_tokens / m:.0f} | {base / m:.2f}x | "
              f"{statistics.median(cpu[name]):.2f} | {drift:.2e} | "
              f"{same}/{len(ref.completion_ids)} | {f'{b[1]:.0f}' if b else 'n/a'} | {f'{b[0]:.3f}' if b else 'n/a'} |")


if __name__ == "__main__":
    main()

"""Chunked completion log-probs of two versions of ``rlhfkit/models/logprobs.py``, side by
side in one process (alternating repetitions, medians), on the LM head's real shapes.

    python bench/logprob_ab.py OLD_logprobs.py [NEW_logprobs.py] [--rows 729 --reps 7]

Cases: log-probs only (SFT/DPO), and log-probs with the entropy returned as a metric while
only the log-probs are differentiated (GRPO/PPO). Each times one forward plus backward.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new", nargs="?", default=os.path.join(here, "..", "src", "rlhfkit", "models", "logprobs.py"))
    ap.add_argument("--rows", type=int, default=729)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    impls = {"old": load(a.old, "lp_old"), "new": load(a.new, "lp_new")}
    h = torch.randn(a.rows, a.hidden, requires_grad=True)
    w = (torch.randn(a.vocab, a.hidden) * 0.05).requires_grad_()
    y = torch.randint(0, a.vocab, (a.rows,))

    def once(mod, entropy: bool) -> float:
        t0 = time.perf_counter()
        logp, ent = mod.chunked_logprobs(h, w, y, entropy=entropy)
        logp.sum().backward()
        dt = time.perf_counter() - t0
        h.grad = w.grad = None
        return dt

    for entropy in (False, True):
        times = {k: [] for k in impls}
        for k, m in impls.items():
            once(m, entropy)  # warm-up
        for _ in range(a.reps):
            for k, m in impls.items():
                times[k].append(once(m, entropy))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{'log-probs + entropy metric' if entropy else 'log-probs only':28s} "
              f"old {1e3 * med['old']:6.0f} ms  new {1e3 * med['new']:6.0f} ms  "
              f"speedup {med['old'] / med['new']:.2f}x  ({a.rows} rows, fwd+bwd, median of {a.reps})")


if __name__ == "__main__":
    main()

"""Shared machinery of the side-by-side benchmarks (rlhfkit vs TRL).

Every benchmark script runs each implementation in a fresh child process on the same model
directory, the same data file, batch size, max lengths, number of steps and thread count.
A child loads the model (not timed), then times everything a user waits for once the model
is in memory: data tokenization, trainer construction (for rlhfkit that includes reference
log-probs precomputed once), and the optimizer steps. It prints one ``BENCH_RESULT {json}``
line. TRL runs in its own virtualenv (``bench/.venv-trl``, created on first use, never a
dependency of rlhfkit); the rlhfkit child runs under the interpreter that runs the script.

The rlhfkit child also measures the achieved FLOP/s of its steps (an extra step under
``torch.utils.flop_counter.FlopCounterMode``, so the count is the ops actually run, backward
included) and an fp32 GEMM roofline on the model's own shapes in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared", "data")
HH = os.path.join(SHARED, "hh-rlhf-harmless", "test.jsonl.gz")
GSM8K = os.path.join(SHARED, "gsm8k", "train.jsonl")
TRL_VERSION = "1.16.0"
TRL_VENV = os.path.join(HERE, ".venv-trl")
MARK = "BENCH_RESULT "


# ------------------------------------------------------------------------ parent side
def trl_python() -> str:
    """The TRL virtualenv's interpreter; created (system site packages, so the same torch and
    transformers are used) and TRL installed on first use."""
    py = os.path.join(TRL_VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"[bench] creating {TRL_VENV} with trl=={TRL_VERSION}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", TRL_VENV], check=True)
    probe = subprocess.run([py, "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != TRL_VERSION:
        subprocess.run([py, "-m", "pip", "install", "-q", f"trl=={TRL_VERSION}"], check=True)
    return py


def model_dir() -> str:
    """The embedded model as an ordinary HF directory (dequantized once into the cache)."""
    from rlhfkit.models.loading import resolve_model_path

    return resolve_model_path("smollm2-135m")


def hh_pairs(rows: int) -> list[dict]:
    """The first ``rows`` HH-harmless pairs as plain strings: the prompt is the shared dialogue
    up to and including the last "\\n\\nAssistant:", chosen/rejected the two final replies.
    Both implementations get exactly these strings (no chat template on either side)."""
    import gzip

    out = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            cut = r["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            prompt = r["chosen"][:cut]
            if not r["rejected"].startswith(prompt):
                continue
            chosen, rejected = r["chosen"][cut:], r["rejected"][cut:]
            if chosen.strip() and rejected.strip():
                out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
            if len(out) == rows:
                break
    return out


def gsm8k_rows(rows: int) -> list[dict]:
    """GSM8K training rows as plain prompt/completion strings plus the gold ``answer``."""
    out = []
    with open(GSM8K, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out.append({"prompt": f"Question: {r['question']}\nAnswer:", "completion": " " + r["answer"],
                        "answer": r["answer"]})
            if len(out) == rows:
                break
    return out


def write_jsonl(rows: list[dict], path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def real_tokens(rows: list[dict], fields: tuple[str, ...], max_length: int) -> int:
    """Tokens that are not padding when each (prompt, field) sequence sits in its own row:
    prompt + completion + EOS, cut at max_length. The same count is used for both sides, so
    tokens/s compares the work done, not how each implementation lays it out."""
    from rlhfkit.models.loading import load_tokenizer

    tok = load_tokenizer(model_dir())
    n = 0
    for r in rows:
        p = len(tok(r["prompt"])["input_ids"])
        for fld in fields:
            n += min(max_length, p + len(tok(r[fld], add_special_tokens=False)["input_ids"]) + 1)
    return n


def run_child(python: str, script: str, impl: str, args: argparse.Namespace) -> dict:
    cmd = [python, script, "--child", impl, "--data", args.data, "--steps", str(args.steps),
           "--batch_size", str(args.batch_size), "--max_length", str(args.max_length),
           "--threads", str(args.threads), "--model", args.model]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(MARK)]
    if p.returncode != 0 or not lines:
        sys.exit(f"[bench] {impl} child failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    res = json.loads(lines[-1][len(MARK):])
    res["process_s"] = time.time() - t0
    return res


def base_parser(stage: str, steps: int, batch_size: int, max_length: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"{stage}: rlhfkit vs TRL {TRL_VERSION}, side by side")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch_size", type=int, default=batch_size)
    ap.add_argument("--max_length", type=int, default=max_length)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="run one side only: rlhfkit | rlhfkit_gc | trl")
    ap.add_argument("--gc", action="store_true",
                    help="also run rlhfkit in its memory-lean setting, model.gradient_checkpointing and "
                         "train.return_freed_memory (a third side: rlhfkit_gc)")
    ap.add_argument("--json", default="", help="append the result record to this JSON list file")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the sides this many times, interleaved (trl, rlhfkit, ..., trl, rlhfkit, ...); "
                         "each side reports its fastest run, rlhfkit its highest peak RSS and TRL its lowest")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="", help=argparse.SUPPRESS)
    return ap


def compare(stage: str, script: str, args, rows: list[dict], tokens: int, unit: str, n_units: int) -> dict:
    """Run both children, print one line each and the ratio line; return the record."""
    tmp = tempfile.mkdtemp(prefix=f"rlhfkit-bench-{stage}-")
    args.data = write_jsonl(rows, os.path.join(tmp, "data.jsonl"))
    args.model = model_dir()
    sides = [args.only] if args.only else ["trl", "rlhfkit"] + (["rlhfkit_gc"] if args.gc else [])
    runs: dict[str, list[dict]] = {impl: [] for impl in sides}
    for _ in range(max(1, args.repeats)):  # interleaved, so slow drift of the machine hits every side
        for impl in sides:
            py = trl_python() if impl == "trl" else sys.executable
            r = run_child(py, script, impl, args)
            r["s_per_" + unit] = r["seconds"] / n_units
            r["tokens_per_s"] = r.get("tokens", tokens) / r["seconds"]
            runs[impl].append(r)
            extra = ""
            if "achieved_gflops" in r:
                extra = f"  achieved={r['achieved_gflops']:.1f} GFLOP/s roofline={r['roofline_gflops']:.1f} GFLOP/s"
            print(f"{stage:5s} {impl:8s} {r['seconds']:8.1f} s (setup {r['setup_s']:.1f})  {r['s_per_' + unit]:7.3f} s/{unit}  "
                  f"{r['tokens_per_s']:7.1f} tok/s  peak_rss={r['peak_rss_gb']:.2f} GB{extra}", flush=True)
    res = {impl: best_run(rs, worst_memory=impl != "trl") for impl, rs in runs.items()}
    rec = {"stage": stage, "rlhfkit": res.get("rlhfkit"), "trl": res.get("trl"), "rlhfkit_gc": res.get("rlhfkit_gc"),
           "settings": {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                        "threads": args.threads, "real_tokens": tokens, unit + "s": n_units,
                        "repeats": max(1, args.repeats)}}
    if "rlhfkit" in res and "trl" in res:
        ours, theirs = res["rlhfkit"], res["trl"]
        rec["speedup"] = ours["tokens_per_s"] / theirs["tokens_per_s"]  # = time ratio when tokens agree
        rec["memory_ratio"] = ours["peak_rss_gb"] / theirs["peak_rss_gb"]
        rec["roofline_fraction"] = ours.get("achieved_gflops", 0) / max(ours.get("roofline_gflops", 1), 1e-9)
        print(f"{stage:5s} speedup={rec['speedup']:.2f} memory_ratio={rec['memory_ratio']:.2f} "
              f"roofline_fraction={rec['roofline_fraction']:.2f}", flush=True)
    if "rlhfkit_gc" in res and "trl" in res:  # the memory-lean setting, against the same TRL run
        gc, theirs = res["rlhfkit_gc"], res["trl"]
        rec["gc"] = {"speedup": gc["tokens_per_s"] / theirs["tokens_per_s"],
                     "memory_ratio": gc["peak_rss_gb"] / theirs["peak_rss_gb"]}
        print(f"{stage:5s} with gradient checkpointing: speedup={rec['gc']['speedup']:.2f} "
              f"memory_ratio={rec['gc']['memory_ratio']:.2f}", flush=True)
    if args.json:
        old = json.load(open(args.json)) if os.path.exists(args.json) else []
        old = [o for o in old if o.get("stage") != stage] + [rec]
        with open(args.json, "w") as f:
            json.dump(old, f, indent=1)
    return rec


def best_run(runs: list[dict], worst_memory: bool) -> dict:
    """One side's figures over its repeats: the fastest run (the least disturbed by the rest
    of the machine), with the peak RSS of all runs taken against rlhfkit: its highest
    (``worst_memory``) or TRL's lowest. ``runs_tokens_per_s`` keeps every run's figure."""
    best = dict(max(runs, key=lambda r: r["tokens_per_s"]))
    pick = max if worst_memory else min
    best["peak_rss_gb"] = pick(r["peak_rss_gb"] for r in runs)
    best["runs_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    return best


def stage_main(mod) -> dict | None:
    """Entry point of a stage script: the parent compares both sides, a child runs one."""
    a = base_parser(mod.STAGE, **mod.DEFAULTS).parse_args()
    if a.child:
        child_setup(a.threads)
        return (mod.trl_child if a.child == "trl" else mod.rlhfkit_child)(a)
    rows, tokens, n_units = mod.bench_data(a)
    return compare(mod.STAGE, os.path.abspath(mod.__file__), a, rows, tokens, mod.UNIT, n_units)


# ------------------------------------------------------------------------- child side
def child_setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def emit(**kw) -> None:
    kw.setdefault("peak_rss_gb", peak_rss_gb())
    print(MARK + json.dumps(kw), flush=True)


def gemm_roofline(model, tokens: int = 1024, reps: int = 3) -> float:
    """fp32 GEMM GFLOP/s over one decoder layer's matmul shapes and the LM head, weighted as
    in a forward pass of the model (best of ``reps`` timings per shape)."""
    import torch

    c = model.config
    h, inter, vocab = c.hidden_size, c.intermediate_size, c.vocab_size
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    layer = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    head = [(h, vocab)]

    def timed(shapes):
        flops, secs = 0.0, 0.0
        for k, n in shapes:
            a, b = torch.randn(tokens, k), torch.randn(k, n)
            torch.mm(a, b)  # warm-up
            best = min(_time(lambda: torch.mm(a, b)) for _ in range(reps))
            flops += 2.0 * tokens * k * n
            secs += best
        return flops, secs

    fl, tl = timed(layer)
    fh, th = timed(head)
    L = c.num_hidden_layers
    return (L * fl + fh) / (L * tl + th) / 1e9


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def rlhfkit_measure(trainer, model, t_setup: float, steps: int, tokens_of=None) -> dict:
    """Time ``steps`` optimizer steps of an rlhfkit Trainer, then count one more step's FLOPs.
    ``tokens_of(step record)`` adds the tokens a step produced (online RL: generated tokens)."""
    trainer.model.train()  # as Trainer.train() does (activation checkpointing is active only in train mode)
    t0 = time.perf_counter()
    recs = [trainer._train_step(s) for s in range(steps)]
    t_train = time.perf_counter() - t0
    rss = peak_rss_gb()  # before the FLOP counter and the roofline allocate anything
    flops = count_flops(lambda: trainer._train_step(steps))
    out = {"seconds": t_setup + t_train, "setup_s": t_setup, "train_s": t_train, "peak_rss_gb": rss,
           "achieved_gflops": flops * steps / t_train / 1e9, "roofline_gflops": gemm_roofline(model)}
    if tokens_of is not None:
        out["tokens"] = float(sum(tokens_of(r) for r in recs))
    return out


def rlhfkit_model_config(a):
    """The bench model; the rlhfkit_gc side turns on activation checkpointing."""
    from rlhfkit.config import ModelConfig

    return ModelConfig(name=a.model, gradient_checkpointing=a.child == "rlhfkit_gc")


def rlhfkit_train_config(a, stage: str, lr: float = 1e-5):
    """rlhfkit TrainConfig matching :func:`trl_common_args`: constant LR, no warm-up, no
    progress bar or TensorBoard, a fresh output dir (so no cached reference is reused); the
    rlhfkit_gc side also returns freed memory to the OS at once."""
    from rlhfkit.config import TrainConfig

    return TrainConfig(output_dir=tempfile.mkdtemp(prefix=f"rlhfkit-bench-{stage}-out-"), max_steps=a.steps,
                       batch_size=a.batch_size, lr=lr, lr_scheduler="constant", warmup_ratio=0.0,
                       progress=False, tensorboard=False, threads=a.threads,
                       return_freed_memory=a.child == "rlhfkit_gc")


def trl_common_args(stage: str, args) -> dict:
    """TrainingArguments both sides agree on: fp32 on CPU, no checkpointing, no eval, no saving."""
    out = tempfile.mkdtemp(prefix=f"trl-bench-{stage}-out-")
    return dict(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
                save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, bf16=False,
                fp16=False, gradient_checkpointing=False, dataloader_num_workers=0, seed=0,
                disable_tqdm=True)


def trl_measure(make_trainer, tokens_of=None) -> dict:
    """Time TRL trainer construction (tokenization, reference copy) and ``train()``.
    ``tokens_of(trainer)`` adds the tokens the run produced (online RL: generated tokens)."""
    t0 = time.perf_counter()
    trainer = make_trainer()
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    out = {"seconds": t2 - t0, "setup_s": t1 - t0, "train_s": t2 - t1}
    if tokens_of is not None:
        out["tokens"] = float(tokens_of(trainer))
    return out

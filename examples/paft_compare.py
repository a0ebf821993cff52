"""SFT and preference alignment: sequential, merged in one loss, or trained in parallel and merged
(PAFT), on the same data and step budget, judged by the same held-out metrics.

    python examples/paft_compare.py --steps 10

From one base (the embedded model; LoRA adapters on every linear layer), on HH-RLHF harmless:

* ``sequential``  SFT on the chosen replies (N steps), then DPO from that model (N steps);
* ``orpo``        ORPO on the pairs (2N steps: the NLL and the odds-ratio term in one loss);
* ``paft``        SFT with the sparse delta (``l1_coef``, N steps) and DPO from the base (N steps),
  trained independently, then their deltas merged: ``paft/linear`` (task arithmetic, weights 1 and
  1) and ``paft/ties`` (TIES, ``--density``); ``paft_dense/ties`` merges a plain (dense) SFT delta
  instead, the ablation of the sparsity (docs/algorithms.md#paft).

Every model, and the base, is scored on held-out rows none of them trained on: the chosen replies'
token NLL (the SFT objective) and the pairs' implicit-reward accuracy with the base as π_ref
(log π/π_base of the chosen above the rejected; ties ½), with the policy's own preference accuracy
log π(y_w) > log π(y_l) beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import time

import torch

from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from rlhfkit.data.formats import normalize_row
from rlhfkit.merge import MergeConfig
from rlhfkit.merge import run as merge_run
from rlhfkit.models.loading import load_model
from rlhfkit.models.reference import Reference
from rlhfkit.train import dpo, sft
from rlhfkit.train.common import make_collate
from rlhfkit.data.pipeline import load_examples

HH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hh-rlhf-harmless", "test.jsonl.gz")


def quiet(*a, **k):
    pass


def read_rows(path: str, rows: str) -> list[dict]:
    lo, hi = (int(x) for x in rows.split(":"))
    opener = gzip.open if path.endswith(".gz") else open
    out = []
    with opener(path, "rt") as f:
        for i, line in enumerate(f):
            if i >= hi:
                break
            if i >= lo and line.strip():
                out.append(json.loads(line))
    return out


def write_sft_file(pairs_path: str, rows: str, out: str) -> str:
    """The chosen reply of each pair as a prompt/completion row (the prompt as the pair loader splits it)."""
    with open(out, "w") as f:
        for i, raw in enumerate(read_rows(pairs_path, rows)):
            rec = normalize_row("preference", pairs_path, i, raw)
            f.write(json.dumps({"prompt": rec["prompt"], "completion": rec["chosen"]}) + "\n")
    return out


def compare(base: str, pairs: str, rows: str, eval_rows: str, steps: int, out: str, *, lora_r: int = 16,
            l1: float = 0.5, density: float = 0.5, lr: float = 1e-4, batch: int = 8, max_length: int = 256,
            threads: int = 2, log=print) -> list[dict]:
    os.makedirs(out, exist_ok=True)
    sft_train = write_sft_file(pairs, rows, os.path.join(out, "sft_train.jsonl"))
    sft_eval = write_sft_file(pairs, eval_rows, os.path.join(out, "sft_eval.jsonl"))
    lora = LoraConfig(r=lora_r, alpha=2 * lora_r)

    def train_cfg(name: str, n: int) -> TrainConfig:
        return TrainConfig(output_dir=os.path.join(out, name), max_steps=n, batch_size=batch, lr=lr,
                           warmup_ratio=0.0, lr_scheduler="constant", threads=threads, progress=False,
                           tensorboard=False, overwrite=True, eval_steps=0, save_steps=0)

    def data(path: str, rows_: str = "") -> DataConfig:
        return DataConfig(path=path, rows=rows_, max_length=max_length, max_prompt_length=max_length // 2,
                          prompt_truncation="left", skip_invalid=True)

    def run_sft(name: str, l1_coef: float) -> str:
        t0 = time.time()
        sft.run(sft.SFTConfig(model=ModelConfig(name=base, lora=lora), data=data(sft_train),
                              train=train_cfg(name, steps), l1_coef=l1_coef), log=quiet)
        log(f"[paft] {name}: {time.time() - t0:.0f} s")
        return os.path.join(out, name, "final")

    def run_pairs(name: str, start: str, loss: str, n: int) -> str:
        t0 = time.time()
        dpo.run(dpo.DPOConfig(model=ModelConfig(name=start, lora=lora), data=data(pairs, rows), loss_type=loss,
                              train=train_cfg(name, n)), log=quiet)
        log(f"[paft] {name}: {time.time() - t0:.0f} s")
        return os.path.join(out, name, "final")

    def run_merge(name: str, models: list[str], method: str) -> str:
        merge_run(MergeConfig(base=base, models=models, method=method, weights=[1.0, 1.0], density=density,
                              output_dir=os.path.join(out, name)), log=quiet)
        return os.path.join(out, name)

    models = {"base": base}
    sft_dense = run_sft("sft", 0.0)
    models["sequential"] = run_pairs("sequential_dpo", sft_dense, "sigmoid", steps)
    models["orpo"] = run_pairs("orpo", base, "orpo", 2 * steps)
    sft_sparse = run_sft("sft_l1", l1)
    dpo_base = run_pairs("dpo_base", base, "sigmoid", steps)
    models["paft/linear"] = run_merge("paft_linear", [sft_sparse, dpo_base], "linear")
    models["paft/ties"] = run_merge("paft_ties", [sft_sparse, dpo_base], "ties")
    models["paft_dense/ties"] = run_merge("paft_dense_ties", [sft_dense, dpo_base], "ties")
    sparsity = {n: _last(os.path.join(out, n), "train/delta_sparsity") for n in ("sft", "sft_l1")}
    return evaluate(models, base, pairs, eval_rows, sft_eval, max_length, sparsity)


def _last(run_dir: str, key: str):
    vals = [json.loads(x).get(key) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    vals = [v for v in vals if v is not None]
    return vals[-1] if vals else None


@torch.no_grad()
def evaluate(models: dict, base: str, pairs: str, eval_rows: str, sft_eval: str, max_length: int,
             sparsity: dict) -> list[dict]:
    base_model, tok = load_model(ModelConfig(name=base))
    base_model.eval()
    tcfg = TrainConfig(output_dir="unused")
    collate = make_collate(tok, DataConfig(max_length=max_length), tcfg)
    pdata = DataConfig(path=pairs, rows=eval_rows, max_length=max_length, max_prompt_length=max_length // 2,
                       prompt_truncation="left", skip_invalid=True)
    pair_exs = load_examples(pdata, tok, ("preference",), quiet)[0]
    sft_exs = load_examples(DataConfig(path=sft_eval, max_length=max_length, max_prompt_length=max_length // 2,
                                       prompt_truncation="left", skip_invalid=True), tok,
                            ("prompt_completion",), quiet)[0]
    ref = Reference("model", model=base_model)
    dcfg = dpo.DPOConfig(train=tcfg)
    rows = []
    for name, path in models.items():
        model = base_model if name == "base" else load_model(ModelConfig(name=path))[0].eval()
        acc = dpo.evaluate_pairs(model, ref, pair_exs, collate, 16, dcfg)
        nll = sft.evaluate_nll(model, sft_exs, collate, 16, tcfg.logprob_chunk)
        rows.append({"model": name, "sft_nll": nll["nll"], "pref_accuracy": acc["reward_accuracy"],
                     "logp_accuracy": acc["logp_accuracy"], "pairs": len(pair_exs), "sft_rows": len(sft_exs)})
    rows.append({"sparsity": sparsity})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--data", default=HH)
    ap.add_argument("--eval_rows", default="2000:2100")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--l1", type=float, default=0.5)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--out", default="runs/paft_compare")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    rows = compare(args.base, args.data, f"0:{args.batch * args.steps}", args.eval_rows, args.steps, args.out,
                   l1=args.l1, density=args.density, lr=args.lr, batch=args.batch, threads=args.threads)
    sparsity = rows.pop()["sparsity"]
    print(json.dumps(rows))
    n = rows[0]["pairs"]
    print(f"\n| model | held-out SFT NLL (chosen, nats/token) | preference accuracy vs base (n={n}) | "
          "log π(y_w) > log π(y_l) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['sft_nll']:.4f} | {r['pref_accuracy']:.3f} | {r['logp_accuracy']:.3f} |")
    print(f"\nSFT delta sparsity (fraction of adapter entries exactly 0): {sparsity}")
    print(f"wall {time.time() - t0:.0f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")


if __name__ == "__main__":
    main()

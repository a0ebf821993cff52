"""``rlhfkit quickstart``: the RLHF stages that exist, end to end, on the embedded model.

Offline and CPU-only: the data is generated here (arithmetic problems), the model is the
embedded SmolLM2-135M-Instruct. The demonstrations are of mixed quality, as human ones are:
60 % precise worked answers ("37 + 18 = 55. The answer is 55."), 40 % lazy estimates
("Roughly 40 + 20 = 60. The answer is about 60."). Stages: SFT on them; DPO (with the RPO
NLL term) from the SFT model on pairs that prefer the precise correct answer over an estimate
(85 %) or a precise-looking wrong sum; a reward model on the same kind of pairs (LoRA adapters and a scalar head on the
SFT model, as in InstructGPT); PPO from the SFT model with that reward model as the reward
(critic initialised from it, frozen SFT model as the KL reference), the verifier's exact match
logged beside it as a gold reward (weight 0) so reward-model gaming shows. Then every trained
policy (SFT, DPO, PPO) is compared with the starting model on held-out problems with ``rlhfkit
eval`` on sampled responses: win-rate under the gold verifier (which no stage trained on) and
under the reward model (for the policies it did not train), each with a 95 % CI, the sampled KL
to the starting model, the alignment tax (token NLL on held-out general chat text against the
starting model's, with its 95 % paired-bootstrap interval over the rows), length and exact
match. Prints both tables and sample responses, writes PNG curves of every stage, an HTML
report and everything else under the output dir. Running it again into the same output dir
replaces each stage's earlier outputs (``train.overwrite``; the log names what was removed).
"""

from __future__ import annotations

import json
import os
import time

import torch

from .config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from .models.loading import load_model, load_scalar_model
from .tasks.arithmetic import make_problems, preference_rows, sft_rows
from .tasks.general_text import general_rows
from .tax import format_tax
from . import evaluate
from .rl.config import RolloutConfig
from .train import dpo, reward, rl, sft


SFT_ESTIMATES = 0.4
"""Share of the SFT demonstrations that are lazy estimates instead of the precise sum."""
PAIR_ESTIMATES = 0.85
"""Share of the preference pairs whose rejected reply is a lazy estimate (the rest: a wrong sum)."""
EVAL_SAMPLES = 1
"""Sampled responses per held-out prompt in the closing comparison."""


def _plots(out: str, log) -> list[str]:
    """PNG curves of every stage (a note instead when plotting fails, so the results still print)."""
    from .errors import ConfigError
    from .plot import plot_run

    paths: list[str] = []
    for stage in ("sft", "dpo", "rm", "ppo"):
        try:
            paths += plot_run(os.path.join(out, stage), "", log=lambda *a: None)
        except ConfigError as e:
            log(f"[quickstart] no plots: {e}")
            return []
    return paths


def _write_jsonl(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def rm_accuracy_by_kind(rm_path: str, rows: list[dict]) -> dict:
    """Held-out pair accuracy of the reward model per kind of rejected reply."""
    from .rewards.model import RewardModel

    rm = RewardModel.load(rm_path)
    prompts = [r["prompt"] for r in rows]
    chosen = rm.score(prompts, [r["chosen"] for r in rows])
    rejected = rm.score(prompts, [r["rejected"] for r in rows])
    out: dict = {}
    for r, c, w in zip(rows, chosen, rejected):
        k = out.setdefault(r["rejected_kind"], [0, 0])
        k[0], k[1] = k[0] + (float(c) > float(w)), k[1] + 1
    return {kind: {"accuracy": a / n, "n": n} for kind, (a, n) in sorted(out.items())}


def run_quickstart(out: str = "runs/quickstart", threads: int = 0, fast: bool = False, log=print) -> dict:
    t0 = time.time()
    stage_s: dict = {}
    last = [t0]

    def _lap() -> float:
        now = time.time()
        dt, last[0] = now - last[0], now
        return round(dt, 1)

    if threads:
        torch.set_num_threads(threads)
    n_sft, n_rm, n_eval = (16, 32, 16) if fast else (96, 256, 48)
    probs = make_problems(n_sft + n_rm + 2 * n_eval, seed=1234)
    sft_p, rm_p = probs[:n_sft], probs[n_sft:n_sft + n_rm]
    eval_p, rm_eval_p = probs[n_sft + n_rm:n_sft + n_rm + n_eval], probs[n_sft + n_rm + n_eval:]
    d = os.path.join(out, "data")
    rm_eval_rows = preference_rows(rm_eval_p, seed=2, estimate_frac=PAIR_ESTIMATES)
    paths = {
        # demonstrations of mixed quality: 40 % lazy estimates ("Roughly 40 + 20 = 60 ...")
        "sft": _write_jsonl(f"{d}/sft_train.jsonl", sft_rows(sft_p, estimate_frac=SFT_ESTIMATES, seed=3)),
        "sft_eval": _write_jsonl(f"{d}/sft_eval.jsonl", sft_rows(eval_p)),
        # pairs: the precise correct answer over an estimate (85 %) or a precise-looking wrong sum
        "rm": _write_jsonl(f"{d}/pairs_train.jsonl", preference_rows(rm_p, seed=1, estimate_frac=PAIR_ESTIMATES)),
        "rm_eval": _write_jsonl(f"{d}/pairs_eval.jsonl", rm_eval_rows),
        # RL prompts (+ the answer the verifier checks): the RM's training problems; held-out = SFT's
        "prompts": _write_jsonl(f"{d}/prompts_train.jsonl", [{"prompt": p["prompt"], "answer": p["answer"]}
                                                           for p in rm_p]),
        "prompts_eval": _write_jsonl(f"{d}/prompts_eval.jsonl", [{"prompt": p["prompt"], "answer": p["answer"]}
                                                                for p in eval_p]),
        "general_eval": _write_jsonl(f"{d}/general_eval.jsonl", general_rows()),
    }
    log("[quickstart] loading the embedded model (first run dequantizes and caches it)")
    model, tok = load_model("smollm2-135m")
    rows = []

    # Stage 1: SFT ---------------------------------------------------------------------
    sft_cfg = sft.SFTConfig(
        data=DataConfig(path=paths["sft"], eval_path=paths["sft_eval"], max_length=256),
        train=TrainConfig(output_dir=f"{out}/sft", overwrite=True, epochs=1 if fast else 2, batch_size=8, lr=5e-5,
                          warmup_ratio=0.1, eval_batch_size=16))
    res = sft.run(sft_cfg, log=log, model=model, tokenizer=tok)
    stage_s["sft"] = _lap()
    rows += [("sft", "held-out NLL of the precise answers (token mean)", res["initial"]["eval/nll"],
              res["final"]["eval/nll"])]

    # Stage 2: DPO from the SFT model (which is also π_ref; its log-probs are precomputed) ----
    dpo_cfg = dpo.DPOConfig(
        data=DataConfig(path=paths["rm"], eval_path=paths["rm_eval"], max_length=256),
        train=TrainConfig(output_dir=f"{out}/dpo", overwrite=True, epochs=1, batch_size=8, lr=1e-5,
                          warmup_ratio=0.1, eval_batch_size=16), beta=0.1,
        rpo_alpha=1.0)  # + the chosen answers' NLL: keeps them likely while the pair is pushed apart
    res = dpo.run(dpo_cfg, log=log, model=model, tokenizer=tok)
    stage_s["dpo"] = _lap()
    rows += [("dpo", "held-out implicit-reward accuracy", res["initial"]["eval/reward_accuracy"],
              res["final"]["eval/reward_accuracy"]),
             ("dpo", "held-out log p(chosen) > log p(rejected)", res["initial"]["eval/logp_accuracy"],
              res["final"]["eval/logp_accuracy"])]
    del model

    # Stage 3: reward model, LoRA adapters and a scalar head on the SFT model ----------------
    rm_cfg = reward.RMConfig(
        model=ModelConfig(name=f"{out}/sft/final", lora=LoraConfig(r=16, alpha=32)),
        data=DataConfig(path=paths["rm"], rows="" if fast else "0:128", eval_path=paths["rm_eval"], max_length=256),
        train=TrainConfig(output_dir=f"{out}/rm", overwrite=True, epochs=1, batch_size=8, lr=2e-4,
                          warmup_ratio=0.1, eval_batch_size=16))
    rm_model, rm_tok = load_scalar_model(rm_cfg.model)
    res = reward.run(rm_cfg, log=log, model=rm_model, tokenizer=rm_tok)
    del rm_model
    by_kind = rm_accuracy_by_kind(f"{out}/rm/final", rm_eval_rows)
    stage_s["reward model"] = _lap()
    rows += [("reward model", "held-out pair accuracy", res["initial"]["eval/accuracy"],
              res["final"]["eval/accuracy"]),
             ("reward model", "held-out margin r_w - r_l", res["initial"]["eval/margin"],
              res["final"]["eval/margin"])]

    # Stage 4: PPO with the reward model (the three-stage RLHF pipeline) ------------------
    ppo_cfg = rl.PPOConfig(
        model=ModelConfig(name=f"{out}/sft/final"),
        # no evaluation inside the run: the closing comparison below measures PPO and its SFT start
        data=DataConfig(path=paths["prompts"], max_length=256),
        rewards=[f"model:{out}/rm/final", "arithmetic*0"],
        train=TrainConfig(output_dir=f"{out}/ppo", overwrite=True, max_steps=4 if fast else 12, batch_size=8, lr=5e-6,
                          lr_scheduler="constant", warmup_ratio=0.0, eval_batch_size=16),
        kl_coef=0.05, num_iterations=1, num_minibatches=1, eval_samples=1)
    ppo_cfg.rollout.num_generations = 2
    ppo_cfg.rollout.max_new_tokens = 32
    ppo_cfg.critic.save = False  # the value model is a training aid; keep the disk for the policies
    rl.run(ppo_cfg, log=log)
    stage_s["ppo"] = _lap()
    with open(f"{out}/ppo/metrics.jsonl") as f:
        steps = [r for r in map(json.loads, f) if "rollout/kl" in r]
    def ends(key):  # mean over the first and over the last 3 steps (8 prompts x 2 samples each)
        v = [r[key] for r in steps]
        return sum(v[:3]) / len(v[:3]), sum(v[-3:]) / len(v[-3:])

    rows += [("ppo", "training rollouts: reward-model score (first / last 3 steps)", *ends("rollout/reward/rm")),
             ("ppo", "training rollouts: KL to the SFT model (first / last 3 steps, nats/response)",
              *ends("rollout/kl"))]

    # Stage 5: every trained policy against the starting model ------------------------------
    # Judges: the gold verifier (exact match; no stage trained on it) and the reward model,
    # which is reported only for policies it did not train (PPO optimised it). Responses are
    # sampled at temperature 1, the policy's own distribution; the KL column is the sampled
    # estimate mean[log pi(y|x) - log pi_start(y|x)] on the policy's responses.
    k = EVAL_SAMPLES
    evals = {}
    for stage in ("sft", "dpo", "ppo"):
        evals[stage] = evaluate.run(evaluate.EvalConfig(
            model=ModelConfig(name=f"{out}/{stage}/final"), reference="smollm2-135m",
            data=DataConfig(path=paths["prompts_eval"], max_length=256),
            rewards=["arithmetic", f"model:{out}/rm/final*0"], output_dir=f"{out}/eval/{stage}",
            rollout=RolloutConfig(num_generations=k, max_new_tokens=32, temperature=1.0), seed=7,
            nll_path=paths["general_eval"], tax=True, tax_task="none"), log=log)  # exact match: above
        stage_s[f"eval {stage}"] = _lap()
    em = {s: r["policy"]["reward/arithmetic"] for s, r in evals.items()}
    em["start"] = evals["sft"]["reference"]["reward/arithmetic"]
    rm_score = {s: r["policy"]["reward/rm"] for s, r in evals.items()}
    rows += [("sft", "held-out exact match (sampled)", em["start"], em["sft"]),
             ("dpo", "held-out exact match (sampled)", em["sft"], em["dpo"]),
             ("ppo", "held-out reward-model score (sampled)", rm_score["sft"], rm_score["ppo"]),
             ("ppo", "held-out exact match (sampled)", em["sft"], em["ppo"])]
    rows += [("reward model", f"held-out pair accuracy, rejected = {kind.replace('_', ' ')} (n={v['n']})",
              None, v["accuracy"]) for kind, v in by_kind.items()]
    rows.sort(key=lambda r: ["sft", "dpo", "reward model", "ppo"].index(r[0]))
    # the alignment tax: NLL on held-out general chat text, policy minus starting model
    nll = {s: r["policy"]["nll"] for s, r in evals.items()}
    nll_start = evals["sft"]["reference"]["nll"]
    tax = {s: r["tax"]["nll"] for s, r in evals.items()}
    trained_on = {"sft": "worked answers (SFT)", "dpo": "preference pairs (DPO, from the SFT model)",
                  "ppo": "reward-model score (PPO, from the SFT model)"}
    eval_cols = ["policy (trained on)", "win-rate vs starting model, gold verifier (95% CI)",
                 "win-rate vs starting model, reward model (95% CI)", "exact match (policy / starting model)",
                 "KL to starting model (sampled, nats/response)",
                 "alignment tax: general-text NLL, policy - starting model (nats/token; 95% CI; policy vs start)",
                 "length (tokens)", "n"]
    eval_rows = []
    for stage, r in evals.items():
        g, m = r["win_rate/arithmetic"], r.get("win_rate/rm")
        rm_cell = "— (its training signal)" if stage == "ppo" or m is None else _ci(m)
        eval_rows.append([f"{stage}: {trained_on[stage]}", _ci(g), rm_cell,
                          f"{r['policy']['reward/arithmetic']:.3f} / {r['reference']['reward/arithmetic']:.3f}",
                          round(r["kl"], 3), f"{format_tax(tax[stage])}; {nll[stage]:.3f} vs {nll_start:.3f}",
                          round(r["policy"]["length"], 1), g["n"]])
    samples = _samples(out, list(evals), k=3, per_prompt=k)
    plots = _plots(out, log)
    stage_s["plots"] = _lap()

    wall = time.time() - t0
    start_of = {"sft": "embedded model", "dpo": "SFT model", "reward model": "SFT model (scalar head)",
                "ppo": "SFT model"}
    stage_cols = ["stage", "metric", "before = the stage's starting point", "before", "after"]
    stage_rows = [[s, m, start_of[s], "—" if b is None else round(b, 3), round(a, 3)] for s, m, b, a in rows]
    tables = [
        {"title": "Each stage on held-out data", "columns": stage_cols, "rows": stage_rows,
         "note": "'before' is the model the stage started from, measured on the same held-out rows; "
                 "exact match is over sampled responses (temperature 1)."},
        {"title": "Every trained policy against the starting model (the embedded SmolLM2-135M-Instruct)",
         "columns": eval_cols, "rows": eval_rows,
         "note": f"{k} sampled response(s) (temperature 1) per held-out prompt from each model, compared "
                 "pairwise; ties count 1/2. The gold verifier checks the answer; no stage trained on it. "
                 "The alignment tax is the change in token NLL on held-out general chat text (no arithmetic), "
                 "> 0 = the policy got worse; its 95% interval is a paired bootstrap over the text's rows."}]
    summary = {"title": "rlhfkit quickstart", "stages": ["sft", "dpo", "rm", "ppo"], "tables": tables,
               "samples": samples, "rows": [dict(stage=s, metric=m, before=b, after=a) for s, m, b, a in rows],
               "rm_accuracy_by_kind": by_kind, "general_nll": {"start": nll_start, **nll},
               "alignment_tax": {s: {k: t[k] for k in ("tax", "ci_low", "ci_high", "n")} for s, t in tax.items()},
               "stage_seconds": stage_s, "eval": evals, "plots": plots, "wall_s": wall, "output_dir": out}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log("\n" + "\n\n".join(_markdown(t) for t in tables))
    for smp in samples:
        log(f"\n[sample] {smp['prompt']} (answer {smp['answer']})")
        for who, text in smp["responses"].items():
            log(f"  {who:15s} {text!r}")
    from .report import write_report
    report = write_report(out, log=lambda *a: None)
    if plots:
        log(f"[quickstart] curves: {', '.join(sorted(set(os.path.dirname(p) for p in plots)))}")
    log("[quickstart] seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in stage_s.items()))
    log(f"\n[quickstart] done in {wall:.0f} s; report {report}; models in {out}/sft/final, {out}/dpo/final, "
        f"{out}/rm/final and {out}/ppo/final, summary in {out}/summary.json")
    return summary


def _ci(w: dict) -> str:
    return f"{w['win_rate']:.3f} ({w['ci_low']:.3f}–{w['ci_high']:.3f})"


def _markdown(t: dict) -> str:
    lines = [f"{t['title']}", "| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
    lines += ["| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in r) + " |" for r in t["rows"]]
    return "\n".join(lines)


def _samples(out: str, stages: list[str], k: int, per_prompt: int = 1) -> list[dict]:
    """The first ``k`` held-out prompts: the starting model's first response and each policy's."""
    per = {}
    for stage in stages:
        with open(os.path.join(out, "eval", stage, "samples.jsonl")) as f:
            per[stage] = [json.loads(line) for line in f][:k * per_prompt:per_prompt]
    with open(os.path.join(out, "data", "prompts_eval.jsonl")) as f:
        answers = [json.loads(line)["answer"] for _, line in zip(range(k), f)]
    first = per[stages[0]]
    return [{"prompt": first[i]["prompt"][-1]["content"] if isinstance(first[i]["prompt"], list)
             else str(first[i]["prompt"]), "answer": answers[i],
             "responses": {"starting model": first[i]["reference_response"],
                           **{s: per[s][i]["response"] for s in stages}}} for i in range(len(first))]

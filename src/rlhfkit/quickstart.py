"""``rlhfkit quickstart``: the RLHF stages that exist, end to end, on the embedded model.

Offline and CPU-only: the data is generated here (arithmetic problems), the model is the
embedded SmolLM2-135M-Instruct. Stages: SFT on worked answers; DPO from the SFT model
on pairs where the correct answer is preferred over a wrong one; a reward model on the
same kind of pairs (initialised from the SFT model, as in InstructGPT); PPO from the SFT
model with that reward model as the reward (critic initialised from it, frozen SFT model as
the KL reference), the verifier's exact match logged beside it as a gold reward (weight 0)
so reward-model gaming shows. Then every trained policy (SFT, DPO, PPO) is evaluated against
the starting model on the held-out problems with ``rlhfkit eval``: win-rate judged by the
reward model (95 % CI), KL, response length and exact match. Prints both tables, writes PNG
curves of every stage and everything else under the output dir. Running it again into the
same output dir replaces each stage's earlier outputs (``train.overwrite``; the log names what
was removed).
"""

from __future__ import annotations

import json
import os
import time

import torch

from .config import DataConfig, ModelConfig, TrainConfig
from .models.generate import generate_text
from .models.loading import load_model, load_scalar_model
from .tasks.arithmetic import is_correct, make_problems, preference_rows, sft_rows
from . import evaluate
from .rl.config import RolloutConfig
from .train import dpo, reward, rl, sft


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


def exact_match(model, tok, problems, max_new_tokens: int = 48) -> float:
    outs = generate_text(model, tok, [p["prompt"] for p in problems], max_new_tokens=max_new_tokens)
    return sum(is_correct(o, p["answer"]) for o, p in zip(outs, problems)) / len(problems)


def run_quickstart(out: str = "runs/quickstart", threads: int = 0, fast: bool = False, log=print) -> dict:
    t0 = time.time()
    if threads:
        torch.set_num_threads(threads)
    n_sft, n_rm, n_eval = (16, 32, 16) if fast else (96, 256, 48)
    probs = make_problems(n_sft + n_rm + 2 * n_eval, seed=1234)
    sft_p, rm_p = probs[:n_sft], probs[n_sft:n_sft + n_rm]
    eval_p, rm_eval_p = probs[n_sft + n_rm:n_sft + n_rm + n_eval], probs[n_sft + n_rm + n_eval:]
    d = os.path.join(out, "data")
    paths = {
        "sft": _write_jsonl(f"{d}/sft_train.jsonl", sft_rows(sft_p)),
        "sft_eval": _write_jsonl(f"{d}/sft_eval.jsonl", sft_rows(eval_p)),
        "rm": _write_jsonl(f"{d}/pairs_train.jsonl", preference_rows(rm_p, seed=1)),
        "rm_eval": _write_jsonl(f"{d}/pairs_eval.jsonl", preference_rows(rm_eval_p, seed=2)),
        # RL prompts (+ the answer the verifier checks): the RM's training problems; held-out = SFT's
        "prompts": _write_jsonl(f"{d}/prompts_train.jsonl", [{"prompt": p["prompt"], "answer": p["answer"]}
                                                           for p in rm_p]),
        "prompts_eval": _write_jsonl(f"{d}/prompts_eval.jsonl", [{"prompt": p["prompt"], "answer": p["answer"]}
                                                                for p in eval_p]),
    }
    log("[quickstart] loading the embedded model (first run dequantizes and caches it)")
    model, tok = load_model("smollm2-135m")
    rows = []

    # Stage 1: SFT ---------------------------------------------------------------------
    em_before = exact_match(model, tok, eval_p)
    sft_cfg = sft.SFTConfig(
        data=DataConfig(path=paths["sft"], eval_path=paths["sft_eval"], max_length=256),
        train=TrainConfig(output_dir=f"{out}/sft", overwrite=True, epochs=1 if fast else 2, batch_size=8, lr=5e-5,
                          warmup_ratio=0.1, eval_batch_size=16))
    res = sft.run(sft_cfg, log=log, model=model, tokenizer=tok)
    em_after = exact_match(model, tok, eval_p)
    rows += [("sft", "held-out NLL (token mean)", res["initial"]["eval/nll"], res["final"]["eval/nll"]),
             ("sft", "held-out exact match (greedy)", em_before, em_after)]

    # Stage 2: DPO from the SFT model (which is also π_ref; its log-probs are precomputed) ----
    dpo_cfg = dpo.DPOConfig(
        data=DataConfig(path=paths["rm"], eval_path=paths["rm_eval"], max_length=256),
        train=TrainConfig(output_dir=f"{out}/dpo", overwrite=True, epochs=1, batch_size=8, lr=1e-5,
                          warmup_ratio=0.1, eval_batch_size=16), beta=0.1)
    res = dpo.run(dpo_cfg, log=log, model=model, tokenizer=tok)
    em_dpo = exact_match(model, tok, eval_p)
    rows += [("dpo", "held-out implicit-reward accuracy", res["initial"]["eval/reward_accuracy"],
              res["final"]["eval/reward_accuracy"]),
             ("dpo", "held-out log p(correct) > log p(wrong)", res["initial"]["eval/logp_accuracy"],
              res["final"]["eval/logp_accuracy"]),
             ("dpo", "held-out exact match (greedy)", em_after, em_dpo)]
    del model

    # Stage 3: reward model, initialised from the SFT model --------------------------------
    rm_cfg = reward.RMConfig(
        model=ModelConfig(name=f"{out}/sft/final"),
        data=DataConfig(path=paths["rm"], eval_path=paths["rm_eval"], max_length=256),
        train=TrainConfig(output_dir=f"{out}/rm", overwrite=True, epochs=1, batch_size=8, lr=5e-5,
                          warmup_ratio=0.1, eval_batch_size=16))
    rm_model, rm_tok = load_scalar_model(rm_cfg.model)
    res = reward.run(rm_cfg, log=log, model=rm_model, tokenizer=rm_tok)
    rows += [("reward model", "held-out pair accuracy", res["initial"]["eval/accuracy"],
              res["final"]["eval/accuracy"]),
             ("reward model", "held-out margin r_w - r_l", res["initial"]["eval/margin"],
              res["final"]["eval/margin"])]

    del rm_model

    # Stage 4: PPO with the reward model (the three-stage RLHF pipeline) ------------------
    ppo_cfg = rl.PPOConfig(
        model=ModelConfig(name=f"{out}/sft/final"),
        data=DataConfig(path=paths["prompts"], eval_path=paths["prompts_eval"], max_length=256),
        rewards=[f"model:{out}/rm/final", "arithmetic*0"],
        train=TrainConfig(output_dir=f"{out}/ppo", overwrite=True, max_steps=4 if fast else 12, batch_size=8, lr=5e-6,
                          lr_scheduler="constant", warmup_ratio=0.0, eval_batch_size=16),
        kl_coef=0.05, num_iterations=1, num_minibatches=1, eval_samples=1)
    ppo_cfg.rollout.num_generations = 2
    ppo_cfg.rollout.max_new_tokens = 32
    res = rl.run(ppo_cfg, log=log)
    rows += [("ppo", "held-out reward-model score (sampled)", res["initial"]["eval/sampled/rm"],
              res["final"]["eval/sampled/rm"]),
             ("ppo", "held-out exact match (greedy)", res["initial"]["eval/greedy/arithmetic"],
              res["final"]["eval/greedy/arithmetic"]),
             ("ppo", "held-out exact match (sampled)", res["initial"]["eval/sampled/arithmetic"],
              res["final"]["eval/sampled/arithmetic"]),
             ("ppo", "KL to the SFT model (sampled, nats/response)", res["initial"]["eval/sampled/kl"],
              res["final"]["eval/sampled/kl"])]

    # Stage 5: every trained policy against the starting model ------------------------------
    # Judges: the gold verifier (exact match; no stage trained on it) and the reward model,
    # which is reported only for policies it did not train (PPO optimised it). Responses are greedy;
    # the KL column is the mean log-ratio log pi(y|x) - log pi_start(y|x) on the policy's responses.
    evals = []
    for stage in ("sft", "dpo", "ppo"):
        res = evaluate.run(evaluate.EvalConfig(
            model=ModelConfig(name=f"{out}/{stage}/final"), reference="smollm2-135m",
            data=DataConfig(path=paths["prompts_eval"], max_length=256),
            rewards=["arithmetic", f"model:{out}/rm/final*0"], output_dir=f"{out}/eval/{stage}",
            rollout=RolloutConfig(num_generations=1, max_new_tokens=32, temperature=0.0)), log=log)
        evals.append((stage, res))
    trained_on = {"sft": "worked answers (SFT)", "dpo": "preference pairs (DPO, from the SFT model)",
                  "ppo": "reward-model score (PPO, from the SFT model)"}
    eval_cols = ["policy (trained on)", "win-rate vs starting model, gold verifier (95% CI)",
                 "win-rate vs starting model, reward model (95% CI)", "exact match (policy / starting model)",
                 "log-ratio to starting model on the policy's responses (nats/response)", "length (tokens)", "n"]
    eval_rows = []
    for stage, r in evals:
        g, m = r["win_rate/arithmetic"], r.get("win_rate/rm")
        rm_cell = "— (its training signal)" if stage == "ppo" or m is None else _ci(m)
        eval_rows.append([f"{stage}: {trained_on[stage]}", _ci(g), rm_cell,
                          f"{r['policy']['reward/arithmetic']:.3f} / {r['reference']['reward/arithmetic']:.3f}",
                          round(r["kl"], 3), round(r["policy"]["length"], 1), g["n"]])
    samples = _samples(out, [s for s, _ in evals], k=3)
    plots = _plots(out, log)

    wall = time.time() - t0
    start_of = {"sft": "embedded model", "dpo": "SFT model", "reward model": "SFT model (scalar head)",
                "ppo": "SFT model"}
    stage_cols = ["stage", "metric", "before = the stage's starting point", "before", "after"]
    stage_rows = [[s, m, start_of[s], round(b, 3), round(a, 3)] for s, m, b, a in rows]
    tables = [
        {"title": "Each stage on held-out data", "columns": stage_cols, "rows": stage_rows,
         "note": "'before' is the model the stage started from, measured on the same held-out rows."},
        {"title": "Every trained policy against the starting model (the embedded SmolLM2-135M-Instruct)",
         "columns": eval_cols, "rows": eval_rows,
         "note": "One greedy response per held-out prompt from each model; ties count 1/2. The gold "
                 "verifier checks the answer; no stage trained on it."}]
    summary = {"title": "rlhfkit quickstart", "stages": ["sft", "dpo", "rm", "ppo"], "tables": tables,
               "samples": samples, "rows": [dict(stage=s, metric=m, before=b, after=a) for s, m, b, a in rows],
               "eval": {stage: r for stage, r in evals}, "plots": plots, "wall_s": wall, "output_dir": out}
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
    log(f"\n[quickstart] done in {wall:.0f} s; report {report}; models in {out}/sft/final, {out}/dpo/final, "
        f"{out}/rm/final and {out}/ppo/final, summary in {out}/summary.json")
    return summary


def _ci(w: dict) -> str:
    return f"{w['win_rate']:.3f} ({w['ci_low']:.3f}–{w['ci_high']:.3f})"


def _markdown(t: dict) -> str:
    lines = [f"{t['title']}", "| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
    lines += ["| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in r) + " |" for r in t["rows"]]
    return "\n".join(lines)


def _samples(out: str, stages: list[str], k: int) -> list[dict]:
    """The first ``k`` held-out prompts: the starting model's response and each policy's."""
    per = {}
    for stage in stages:
        with open(os.path.join(out, "eval", stage, "samples.jsonl")) as f:
            per[stage] = [json.loads(line) for _, line in zip(range(k), f)]
    with open(os.path.join(out, "data", "prompts_eval.jsonl")) as f:
        answers = [json.loads(line)["answer"] for _, line in zip(range(k), f)]
    first = per[stages[0]]
    return [{"prompt": first[i]["prompt"][-1]["content"] if isinstance(first[i]["prompt"], list)
             else str(first[i]["prompt"]), "answer": answers[i],
             "responses": {"starting model": first[i]["reference_response"],
                           **{s: per[s][i]["response"] for s in stages}}} for i in range(len(first))]

"""``rlhfkit eval``: did alignment work, and by how much?

Two modes, chosen by the config:

* **policy** (default): generate responses from ``model`` (and from ``reference`` when set)
  for a prompt set — a data file or the built-in arithmetic task — score them with the
  configured reward sources (reward models, verifiers, user functions), and report per
  source the mean for each model, the **win-rate** of the policy over the reference (ties
  count ½) with a 95 % confidence interval, the mean **KL** to the reference on the policy's
  own responses, and response lengths. Every response and score goes to ``samples.jsonl``.
* **reward model** (``reward_model: PATH``): score held-out preference pairs and report pair
  accuracy, mean margin and **calibration**: each pair in both orders gives a predicted
  probability σ(r_a − r_b) of a winning, binned into a reliability table (predicted vs
  observed frequency per bin) with the expected calibration error.

* **human** (``human: studio://DIR::PROJECT``): read a blind A/B human evaluation made with
  ``rlhfkit studio humaneval`` and report the human win-rate of model A over B (ties ½) with its
  95 % Wilson interval over prompts, agreement and position bias; with reward sources
  (``rewards`` / ``reward_model``) the reward win-rate on the same responses beside it — the
  over-optimisation check (:mod:`rlhfkit.studio.humaneval`, docs/algorithms.md#human-win-rate).

With ``tax: true`` (policy mode) the policy is also compared with its starting model
(``reference``) on held-out capability data: token NLL on held-out text and greedy exact match on
a verifiable task (``tax_task``), each with the drop and a 95 % paired-bootstrap interval
(:mod:`rlhfkit.tax`, docs/algorithms.md#alignment-tax). Without ``rewards``, ``data.path`` and
``task`` only the tax is measured (no other generation).

Results go to ``output_dir/eval.json`` and a printed table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import torch

from .config import DataConfig, LoraConfig, ModelConfig, TrainConfig, check_choice, check_range, validate_all
from .data.collate import collate
from .data.pipeline import load_examples, load_records
from .data.tokenize import Example, tokenize_records
from .errors import ConfigError
from .models.forward import completion_logprobs
from .models.loading import load_model
from .rewards.base import RewardConfig, build_rewards, reward_config_from
from .backends.base import RuntimeOptions
from .rl.config import RolloutConfig
from .rl.config import engine_options
from .rl.rollout import HFBackend, SamplingParams
from .tax import TAX_TASKS, evaluate_tax, gsm8k_path, tax_lines


@dataclasses.dataclass
class EvalConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The policy to evaluate."""
    reference: str = ""
    """Model to compare against (win-rate, KL); empty = report the policy alone."""
    reward_model: str = ""
    """Evaluate this reward model on preference pairs instead of a policy (with ``human``: the
    reward model whose win rate is reported beside the humans')."""
    human: str = ""
    """A human evaluation to read instead of generating: ``studio://DIR::PROJECT`` (a project of
    ``rlhfkit studio humaneval``); reports the human win rate of model A over B with its 95 %
    Wilson interval, and with ``rewards`` / ``reward_model`` the reward sources' win rate on the
    same responses (docs/algorithms.md#human-win-rate)."""
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=1024, max_prompt_length=512))
    task: str = ""
    """'arithmetic' = the built-in task's problems instead of a data file."""
    task_size: int = 64
    task_seed: int = 1234
    """Seed of the generated problems (pick one your training did not use)."""
    rewards: list[RewardConfig] = dataclasses.field(default_factory=list)
    """Judges: reward models, verifiers, functions (same forms as the RL recipes)."""
    rollout: RolloutConfig = dataclasses.field(default_factory=lambda: RolloutConfig(
        num_generations=1, max_new_tokens=64, temperature=0.0))
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    """The sampler's performance switches (packed weights, lean decoder, shared prefill)."""
    """Sampling of the evaluated responses (default greedy, one per prompt)."""
    nll_path: str = ""
    """Held-out prompt/completion rows (e.g. general text, no task data): the token NLL of the
    policy and of the reference on their completions is reported, and the difference is the
    alignment tax (``nll_tax``: policy minus reference; > 0 = the policy got worse at that text)."""
    tax: bool = False
    """Alignment tax against the starting model (``reference``, required): token NLL on ``nll_path`` (else
    built-in general chat text) and greedy exact match on ``tax_task``, each with the drop (> 0 = the policy
    got worse) and a 95 % paired-bootstrap interval, under ``tax`` in eval.json."""
    tax_task: str = "arithmetic"
    """Verifiable task of the tax: arithmetic (``task_size`` problems from ``task_seed``) | gsm8k (the first
    ``task_size`` test rows of ``tax_gsm8k_path``) | none."""
    tax_gsm8k_path: str = ""
    """GSM8K directory (with test.jsonl) or .jsonl file; empty = ../shared/data/gsm8k if present."""
    bins: int = 10
    """Reliability-table bins (reward-model mode)."""
    batch_size: int = 16
    output_dir: str = "runs/eval"
    threads: int = 0
    seed: int = 0

    def validate(self, p: str = "") -> None:
        check_range(p + "task_size", self.task_size, lo=1)
        check_range(p + "batch_size", self.batch_size, lo=1)
        check_choice(p + "tax_task", self.tax_task, TAX_TASKS)
        if self.human and not self.human.startswith("studio://"):
            raise ConfigError(f"{p}human must be a studio project, studio://DIR::PROJECT (got {self.human!r})")
        if self.human and self.tax:
            raise ConfigError(f"{p}human reads judgements already made; tax generates: run them separately")
        if self.tax and self.reward_model:
            raise ConfigError(f"{p}tax measures a policy against its starting model; it does not apply to "
                              "reward_model evaluation (drop one of them)")
        if self.tax and not self.reference:
            raise ConfigError(f"{p}tax compares the policy with its starting model: set reference to the model "
                              "the training started from (e.g. --reference smollm2-135m or --reference runs/sft/final)")
        if self.tax and self.tax_task == "gsm8k":
            gsm8k_path(self)


# ------------------------------------------------------------------------ pure statistics
def win_rate(policy: list[float], reference: list[float]) -> dict:
    """Mean of 1 (policy scores higher) / ½ (tie) / 0, with a normal 95 % interval."""
    if len(policy) != len(reference) or not policy:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    w = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy, reference)]
    n, m = len(w), sum(w) / len(w)
    sd = math.sqrt(sum((x - m) ** 2 for x in w) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"win_rate": m, "ci_low": max(0.0, m - half), "ci_high": min(1.0, m + half), "n": n,
            "wins": sum(x == 1.0 for x in w), "ties": sum(x == 0.5 for x in w)}


def reliability(margins: list[float], bins: int = 10) -> dict:
    """Calibration of a Bradley-Terry reward model from margins r_chosen − r_rejected.

    Each pair counts in both orders: predicted σ(m) with outcome 1 and σ(−m) with outcome 0.
    Returns the table (per non-empty bin: range, count, mean predicted, observed frequency)
    and the expected calibration error Σ (n_b / N) |predicted_b − observed_b|."""
    preds = [(1 / (1 + math.exp(-m)), 1.0) for m in margins] + [(1 / (1 + math.exp(m)), 0.0) for m in margins]
    rows, ece, N = [], 0.0, len(preds)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [(p, y) for p, y in preds if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if not sel:
            continue
        mp = sum(p for p, _ in sel) / len(sel)
        ob = sum(y for _, y in sel) / len(sel)
        rows.append({"bin": [lo, hi], "n": len(sel), "predicted": mp, "observed": ob})
        ece += len(sel) / N * abs(mp - ob)
    return {"table": rows, "ece": ece}


# ------------------------------------------------------------------------ policy mode
def _prompts(cfg: EvalConfig, tok) -> list[Example]:
    if cfg.task:
        if cfg.task != "arithmetic":
            raise ConfigError(f"unknown task '{cfg.task}'; the built-in task is 'arithmetic'")
        from .tasks.arithmetic import make_problems

        recs = [{"kind": "prompt_only", "row": i, "prompt": p["prompt"], "answer": p["answer"]}
                for i, p in enumerate(make_problems(cfg.task_size, seed=cfg.task_seed))]
        return tokenize_records(recs, tok, cfg.data, source="task:arithmetic")
    if not cfg.data.path:
        raise ConfigError("eval needs prompts: set data.path (prompt rows) or task=arithmetic")
    return load_examples(cfg.data, tok, ("prompt_only",))[0]


@torch.no_grad()
def _seq_logps(model, exs: list[Example], comps: list[list[int]], pad_id: int, bs: int,
               temperature: float = 1.0) -> list[float]:
    """Sequence log-probs of ``comps`` under softmax(z / temperature) (the sampling distribution)."""
    out = []
    for i in range(0, len(exs), bs):
        b = collate([Example(e.row, e.prompt, [c]) for e, c in zip(exs[i:i + bs], comps[i:i + bs])], pad_id=pad_id)
        lp = completion_logprobs(model, b, temperature=temperature).seq_logps
        out += lp[torch.argsort(b.seq_example)].tolist()
    return out


def evaluate_policy(cfg: EvalConfig, log=print) -> dict:
    if cfg.tax and not (cfg.rewards or cfg.data.path or cfg.task):  # the tax alone: no other generation
        policy, tok = load_model(cfg.model)
        start = load_model(dataclasses.replace(cfg.model, name=cfg.reference, lora=LoraConfig()))[0].eval()
        return {"tax": evaluate_tax(policy.eval(), start, tok, cfg)}
    rewards = build_rewards([reward_config_from(r) for r in cfg.rewards]) if cfg.rewards else None
    policy, tok = load_model(cfg.model)
    policy.eval()
    exs = _prompts(cfg, tok)
    k = max(1, cfg.rollout.num_generations)
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                            top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, n=k, stop=list(cfg.rollout.stop))
    rows = [ex for ex in exs for _ in range(k)]
    prompts = [ex.extra.get("prompt") for ex in rows]
    extras = [{f: v for f, v in ex.extra.items() if f != "prompt"} for ex in rows]

    def sample(model, memo_key=None):
        if memo_key is not None and memo_key in _REFERENCE_ROLLOUTS:
            return _REFERENCE_ROLLOUTS[memo_key]
        ro = HFBackend(model, tok, **{**engine_options(cfg.rollout, cfg.runtime), "batch_size": cfg.batch_size}).generate(
            [ex.prompt for ex in exs], params, generator=torch.Generator().manual_seed(cfg.seed))
        if memo_key is not None:
            _REFERENCE_ROLLOUTS.clear()  # one reference at a time: it is the repeated case
            _REFERENCE_ROLLOUTS[memo_key] = ro
        return ro

    def side(ro) -> dict:
        res = {"length": sum(len(c) for c in ro.completion_ids) / len(ro.completion_ids)}
        if rewards is not None:
            sc = rewards.score(prompts, ro.texts, extras)
            for msg in sc.errors[:3]:
                log(f"[eval] {msg}")
            res["reward"] = sum(sc.total) / len(sc.total)
            res.update({f"reward/{n}": _mean(v) for n, v in sc.per_source.items()})
            res["_scores"], res["_per_source"] = sc.total, sc.per_source
        return res

    ref = None
    if cfg.reference:  # loaded first: a bad path fails before any generation
        ref = load_model(dataclasses.replace(cfg.model, name=cfg.reference, lora=LoraConfig()))[0].eval()
    ro = sample(policy)
    out = {"n_prompts": len(exs), "samples_per_prompt": k, "policy": side(ro)}
    ref_ro = None
    if ref is not None:
        # the same reference, prompts and sampling give the same responses: sampled once per process
        ref_ro = sample(ref, memo_key=(os.path.abspath(cfg.reference), _file_key(cfg.reference),
                                       tuple(tuple(ex.prompt) for ex in exs), repr(params), cfg.seed,
                                       repr(cfg.rollout)))
        out["reference"] = side(ref_ro)
        # KL of the distributions sampled from: softmax(z/T) (greedy, T = 0: the plain softmax)
        T = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        lp = _seq_logps(policy, rows, ro.completion_ids, tok.pad_token_id, cfg.batch_size, T)
        rp = _seq_logps(ref, rows, ro.completion_ids, tok.pad_token_id, cfg.batch_size, T)
        out["kl"] = sum(a - b for a, b in zip(lp, rp)) / len(lp)
        if rewards is not None:
            out["win_rate"] = win_rate(out["policy"]["_scores"], out["reference"]["_scores"])
            for name in out["policy"]["_per_source"]:
                out[f"win_rate/{name}"] = win_rate(out["policy"]["_per_source"][name],
                                                   out["reference"]["_per_source"][name])
    if cfg.tax:
        out["tax"] = evaluate_tax(policy, ref, tok, cfg)
        if cfg.nll_path:  # the same rows: the per-row values give the plain fields too
            out["policy"]["nll"], out["reference"]["nll"] = out["tax"]["nll"]["policy"], out["tax"]["nll"]["start"]
            out["nll_tax"] = out["tax"]["nll"]["tax"]
    elif cfg.nll_path:
        out["policy"]["nll"] = heldout_nll(policy, tok, cfg)
        if ref is not None:
            out["reference"]["nll"] = heldout_nll(ref, tok, cfg)
            out["nll_tax"] = out["policy"]["nll"] - out["reference"]["nll"]
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(os.path.join(cfg.output_dir, "samples.jsonl"), "w") as f:
        for i, ex in enumerate(rows):
            rec = {"row": ex.row, "prompt": prompts[i], "response": ro.texts[i],
                   "score": out["policy"].get("_scores", [None] * len(rows))[i]}
            if ref_ro is not None:
                rec.update(reference_response=ref_ro.texts[i],
                           reference_score=out["reference"].get("_scores", [None] * len(rows))[i])
            f.write(json.dumps(rec) + "\n")
    for s in ("policy", "reference"):
        if s in out:
            out[s] = {a: b for a, b in out[s].items() if not a.startswith("_")}
    if rewards is not None:
        rewards.close()
    return out


_REFERENCE_ROLLOUTS: dict = {}
"""The last reference's responses, keyed by everything that determines them."""


def _file_key(path: str):
    """Modification time and size of a model dir's weights (a retrained reference is not reused)."""
    try:
        return tuple((f, os.stat(os.path.join(path, f)).st_mtime_ns, os.stat(os.path.join(path, f)).st_size)
                     for f in sorted(os.listdir(path)))
    except OSError:
        return None


@torch.no_grad()
def heldout_nll(model, tok, cfg: EvalConfig) -> float:
    """Mean token NLL of ``model`` on the completions of ``cfg.nll_path`` (every row, in order)."""
    from .train.common import make_collate
    from .train.sft import evaluate_nll

    data = dataclasses.replace(cfg.data, path=cfg.nll_path, rows="", eval_path="", eval_rows="")
    exs = load_examples(data, tok, ("prompt_completion", "language_modeling"), lambda *a: None)[0]
    return evaluate_nll(model, exs, make_collate(tok, data, TrainConfig()), cfg.batch_size, 1024)["nll"]


def _mean(vals: list[float]) -> float:
    ok = [v for v in vals if v == v]
    return sum(ok) / len(ok) if ok else float("nan")


# ------------------------------------------------------------------------ human-evaluation mode
def _text(x) -> str:
    """A response as text (a conversational response: its messages' content)."""
    if isinstance(x, list):
        return "".join(m.get("content", "") for m in x if isinstance(m, dict))
    return str(x)


def evaluate_human(cfg: EvalConfig, log=print) -> dict:
    """Human win rate of a studio human evaluation (:mod:`rlhfkit.studio.humaneval`) and, with
    reward sources, their win rate of A over B on the same prompts and responses."""
    from .studio.db import StudioError, open_db
    from .studio.export import parse_studio_path
    from .studio.humaneval import human_win_rate

    directory, url, project, opts = parse_studio_path(cfg.human)
    if opts:
        raise ConfigError(f"human: studio:// options ({', '.join(opts)}) do not apply to a human evaluation")
    try:
        engine = open_db(directory, url)
    except StudioError as e:
        raise ConfigError(f"human: {e}") from e
    try:
        h = human_win_rate(engine, project)
    finally:
        engine.dispose()
    items, item_scores = h.pop("_items"), h.pop("_item_scores")
    out: dict = {"human": h}
    sources = list(cfg.rewards) + ([RewardConfig(type="model", path=cfg.reward_model)] if cfg.reward_model else [])
    if sources:
        rewards = build_rewards([reward_config_from(r) for r in sources])
        try:
            ia = [it["meta"]["models"].index(h["model_a"]) for it in items]
            prompts = [it["prompt"] for it in items]
            sa = rewards.score(prompts, [_text(it["responses"][i]) for it, i in zip(items, ia)])
            sb = rewards.score(prompts, [_text(it["responses"][1 - i]) for it, i in zip(items, ia)])
            for msg in (sa.errors + sb.errors)[:3]:
                log(f"[eval] {msg}")
        finally:
            rewards.close()
        out["reward_win_rate"] = win_rate(sa.total, sb.total)
        # the prompts humans did not call a draw: how often the reward sources prefer the same side
        decided = [(x, a, b) for x, a, b in zip(item_scores, sa.total, sb.total) if x != 0.5]
        agree = [1.0 if (a > b) == (x > 0.5) and a != b else 0.0 for x, a, b in decided]
        out["reward_human_agreement"] = {"rate": sum(agree) / len(agree) if agree else float("nan"),
                                         "n": len(agree)}
    return out


def human_lines(res: dict) -> list[str]:
    h = res["human"]
    lines = [f"human evaluation '{h['project']}': A = {h['model_a']}, B = {h['model_b']}",
             f"human win-rate A over B   {h['win_rate']:.3f}  (95% Wilson CI {h['ci_low']:.3f}-{h['ci_high']:.3f}, "
             f"{h['n']} prompts, {h['n_labels']} labels: A {h['wins_a']}, B {h['wins_b']}, ties {h['ties']})"]
    pb = h.get("position_bias")
    if pb:
        lines.append(f"position bias             {json.dumps(pb)}")
    ag = h.get("agreement") or {}
    if ag.get("available"):
        keys = [k for k in ("cohen_kappa", "fleiss_kappa", "krippendorff_alpha") if ag.get(k) is not None]
        if keys:
            lines.append("agreement                 " + "  ".join(f"{k} {ag[k]:.3f}" for k in keys
                                                                   if isinstance(ag[k], (int, float))))
    if "reward_win_rate" in res:
        w = res["reward_win_rate"]
        lines.append(f"reward win-rate A over B  {w['win_rate']:.3f}  (95% CI {w['ci_low']:.3f}-{w['ci_high']:.3f}, "
                     f"{w['n']} prompts, {w['ties']} ties)")
        r = res["reward_human_agreement"]
        lines.append(f"reward agrees with humans {r['rate']:.3f} of {r['n']} prompts humans decided")
    return lines


# ------------------------------------------------------------------------ reward-model mode
def evaluate_reward_model(cfg: EvalConfig, log=print) -> dict:
    from .rewards.model import RewardModel

    if not cfg.data.path:
        raise ConfigError("reward-model eval needs preference pairs: set data.path")
    recs = load_records(cfg.data.path, cfg.data.rows, cfg.data, ("preference",), log)
    rm = RewardModel.load(cfg.reward_model, max_length=cfg.data.max_length)
    prompts = [r["prompt"] for r in recs]
    chosen = rm.score(prompts, [r["chosen"] for r in recs], batch_size=cfg.batch_size)
    rejected = rm.score(prompts, [r["rejected"] for r in recs], batch_size=cfg.batch_size)
    margins = [a - b for a, b in zip(chosen, rejected)]
    acc = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)
    return {"n_pairs": len(recs), "accuracy": acc, "margin": sum(margins) / len(margins),
            **reliability(margins, cfg.bins)}


# ------------------------------------------------------------------------ entry point
def table(res: dict) -> str:
    if "human" in res:
        return "\n".join(human_lines(res))
    if "accuracy" in res:
        lines = [f"pairs {res['n_pairs']}  accuracy {res['accuracy']:.3f}  margin {res['margin']:.3f}  "
                 f"ECE {res['ece']:.3f}", "predicted bin   n   mean predicted   observed"]
        lines += [f"[{r['bin'][0]:.1f}, {r['bin'][1]:.1f})  {r['n']:4d}   {r['predicted']:.3f}            "
                  f"{r['observed']:.3f}" for r in res["table"]]
        return "\n".join(lines)
    if "policy" not in res:
        return "\n".join(tax_lines(res["tax"]))
    keys = [k for k in res["policy"]]
    lines = [f"{'metric':24s} {'policy':>10s}" + (f" {'reference':>10s}" if "reference" in res else "")]
    for k in keys:
        lines.append(f"{k:24s} {res['policy'][k]:10.4f}" +
                     (f" {res['reference'].get(k, float('nan')):10.4f}" if "reference" in res else ""))
    if "win_rate" in res:
        w = res["win_rate"]
        lines.append(f"win-rate vs reference    {w['win_rate']:.3f}  (95% CI {w['ci_low']:.3f}-{w['ci_high']:.3f}, "
                     f"{w['n']} comparisons, {w['ties']} ties)")
    if "kl" in res:
        lines.append(f"KL(policy || reference)  {res['kl']:.4f} nats/response (on the policy's responses)")
    if "tax" in res:
        lines += tax_lines(res["tax"])
    elif "nll_tax" in res:
        lines.append(f"held-out NLL             {res['policy']['nll']:.4f} vs {res['reference']['nll']:.4f} "
                     f"nats/token: alignment tax {res['nll_tax']:+.4f}")
    return "\n".join(lines)


def run(cfg: EvalConfig, log=print) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    validate_all(cfg)  # a hand-built config is checked like a parsed one, before any model is loaded
    if cfg.human:
        res = evaluate_human(cfg, log)
    else:
        res = evaluate_reward_model(cfg, log) if cfg.reward_model else evaluate_policy(cfg, log)
    os.makedirs(cfg.output_dir, exist_ok=True)
    path = os.path.join(cfg.output_dir, "eval.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    log(table(res))
    log(f"[eval] results: {path}")
    return res

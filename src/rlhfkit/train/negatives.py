"""Negatives recipe: alignment from prompts and undesired responses alone
(docs/algorithms.md#negatives).

    rlhfkit negatives --data.path hh.jsonl.gz --objective npo
    rlhfkit negatives --data.path hh.jsonl.gz --objective dpo --generator.num_candidates 4 --rewards model:RM

Data: rows with a prompt and an undesired response, either ``prompt`` + ``rejected`` (a pairs
file: its ``chosen`` column is not trained on; without a ``prompt`` column it only locates the
implicit prompt, as in HH-RLHF) or unpaired rows ``prompt`` + ``completion`` + ``label`` of which
only the ``label: false`` ones are kept.

``objective``:

* ``npo``: the NPO loss −(2/β)·log σ(−β·h_l) on the undesired responses alone, no generation. The
  DPO trainer takes the rejected-only examples (one completion each) directly: the ``npo`` loss's
  spec says it does not read the chosen response (``reads_chosen=False``), so no placeholder
  chosen response exists and no log-prob of one is computed.
* ``dpo`` / ``kto``: a desired response is generated for every prompt (``generator.name``, empty =
  the policy before training; ``generator.num_candidates`` samples, the best by ``rewards`` kept,
  or the first sample without rewards), then DPO trains on (generated ≻ rejected) pairs, or KTO
  on the generated responses as desirable and the rejected ones as undesirable rows.

The generated pairs go to ``output_dir/generated.jsonl`` (``row``, ``prompt``, ``chosen``,
``rejected``, ``chosen_reward`` when rewards are given, the sampled ``chosen_ids`` and the
``fingerprint`` of the generation settings and the tokenized data); it is itself a preference
data file. A resumed run (``train.resume``) reuses it when every row carries the fingerprint of
the present config and data, and generates again otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os

import torch

from ..backends import make_engine
from ..backends.base import RuntimeOptions, SamplingParams
from ..config import (DataConfig, ModelConfig, TrainConfig, check_choice, check_range, to_dict,
                      validate_all)
from ..data.formats import normalize_rejected, normalize_row
from ..data.loading import load_rows
from ..data.pipeline import rename_columns
from ..data.tokenize import Example, Renderer, tokenize_records, truncate
from ..errors import ConfigError, DataError, TrainingError
from ..models.loading import load_model
from ..rewards.base import RewardConfig, build_rewards, reward_config_from
from ..rl.config import RolloutConfig, engine_name
from ..rl.experience import rollout, score
from . import dpo, kto
from .loop import start_run
from .rundir import examples_fingerprint, is_run_dir

GENERATED = "generated.jsonl"
OBJECTIVES = ("npo", "dpo", "kto")


@dataclasses.dataclass
class GeneratorConfig:
    name: str = ""
    """Model that writes the desired responses (objective dpo/kto): a model dir or hub name; empty =
    the policy itself before training."""
    num_candidates: int = 1
    """Samples per prompt (>= 1); with rewards the best one is kept, without them the first."""
    max_new_tokens: int = 128
    """Tokens per generated response at most (>= 1)."""
    temperature: float = 1.0
    """>= 0; 0 = greedy (then num_candidates must be 1: the samples would be identical)."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1] (1 = off)."""
    top_k: int = 0
    """>= 0; 0 = no top-k filtering."""
    stop: list[str] = dataclasses.field(default_factory=list)
    """Stop strings."""
    batch_size: int = 64
    """Sequences decoded together (>= 1)."""
    backend: str = "auto"
    """The rollout engine: cpu | hf | vllm | auto (cpu for a model on the CPU, hf otherwise)."""

    def validate(self, p: str = "generator.") -> None:
        check_range(p + "num_candidates", self.num_candidates, lo=1)
        check_range(p + "max_new_tokens", self.max_new_tokens, lo=1)
        check_range(p + "temperature", self.temperature, lo=0)
        check_range(p + "top_p", self.top_p, lo=0, hi=1, lo_open=True)
        check_range(p + "top_k", self.top_k, lo=0)
        check_range(p + "batch_size", self.batch_size, lo=1)
        check_choice(p + "backend", self.backend, ("auto", "cpu", "hf", "vllm"))
        if self.temperature == 0 and self.num_candidates > 1:
            raise ConfigError(f"{p}temperature 0 (greedy) gives {self.num_candidates} identical candidates; "
                              f"set {p}num_candidates 1 or {p}temperature > 0")


@dataclasses.dataclass
class NegativesConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=512))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/negatives", lr=1e-6, warmup_ratio=0.1))
    objective: str = "npo"
    """npo (the undesired responses alone) | dpo (generated ≻ rejected pairs) | kto (generated =
    desirable, rejected = undesirable)."""
    beta: float = 0.1
    """KL strength β (> 0) of the objective."""
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    """How the desired responses are generated (objective dpo/kto)."""
    rewards: list[RewardConfig] = dataclasses.field(default_factory=list)
    """Reward sources that pick the best of generator.num_candidates (objective dpo/kto; empty =
    the first sample)."""
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    """The generator engine's performance switches."""
    desirable_weight: float = 1.0
    """objective kto: λ_D (>= 0)."""
    undesirable_weight: float = 1.0
    """objective kto: λ_U (>= 0)."""
    reference: str = "auto"
    """auto | precompute | adapters | model (see the dpo recipe)."""
    ref_model: str = ""
    """Reference model for reference=model (empty = a frozen copy of the starting policy)."""

    def validate(self) -> None:
        check_choice("objective", self.objective, OBJECTIVES)
        check_range("beta", self.beta, lo=0, lo_open=True)
        check_range("desirable_weight", self.desirable_weight, lo=0)
        check_range("undesirable_weight", self.undesirable_weight, lo=0)
        check_choice("reference", self.reference, ("auto", "precompute", "adapters", "model"))
        self.rewards = [reward_config_from(r, f"rewards[{i}]") for i, r in enumerate(self.rewards)]
        default = NegativesConfig()
        if self.objective == "npo":
            unused = [k for k, v in (("generator", self.generator != default.generator),
                                     ("rewards", bool(self.rewards))) if v]
            if unused:
                raise ConfigError(f"objective npo generates nothing, so {' and '.join(unused)} would be "
                                  "ignored; remove the setting or use objective dpo or kto")
        if self.objective != "kto":
            for k in ("desirable_weight", "undesirable_weight"):
                if getattr(self, k) != getattr(default, k):
                    raise ConfigError(f"{k} weighs the rows of objective kto; objective {self.objective} does "
                                      "not use it (remove the setting)")
        elif self.desirable_weight == 0 and self.undesirable_weight == 0:
            raise ConfigError("desirable_weight and undesirable_weight are both 0: nothing would be trained")
        if self.objective != "npo" and (self.data.eval_path or self.data.eval_rows):
            raise ConfigError("data.eval_path / data.eval_rows: held-out evaluation of undesired responses "
                              "(their log-ratio) is available with objective npo only; unset them")


# --------------------------------------------------------------------------- data


def load_negatives(path: str, rows: str, cfg: DataConfig, log=None) -> list[dict]:
    """Unpaired records (``label`` False) of the undesired responses in ``path`` (see the module doc)."""
    raw = rename_columns(load_rows(path, split=cfg.split, rows=rows or None), cfg.columns)
    if not raw.rows:
        raise DataError("dataset is empty (no rows selected)", source=raw.source)
    first = raw.rows[0] if isinstance(raw.rows[0], dict) else {}
    if "rejected" in first:
        unpaired = False
    elif {"prompt", "completion", "label"} <= set(first):
        unpaired = True
    else:
        raise DataError(f"needs an undesired response per row: 'prompt' + 'rejected' (a pairs file; its "
                        f"'chosen' is not trained on), or 'prompt' + 'completion' + 'label' rows with label "
                        f"false; this row has the fields {sorted(first)}", source=raw.source,
                        row=raw.index[0], field="rejected")
    records, skipped = [], 0
    for i, data in zip(raw.index, raw.rows):
        try:
            rec = normalize_row("unpaired", raw.source, i, data) if unpaired else normalize_rejected(raw.source, i, data)
        except DataError:
            if not cfg.skip_invalid:
                raise
            skipped += 1
            continue
        if not rec["label"]:
            records.append(rec)
    if skipped and log is not None:
        log(f"skipped {skipped} invalid rows of {len(raw)} in {raw.source}")
    if not records:
        raise DataError("no row holds an undesired response (every valid row has label true)" if unpaired
                        else "no valid rows left after validation", source=raw.source,
                        field="label" if unpaired else None)
    return records


def tokenize_negatives(records: list[dict], tokenizer, cfg: DataConfig, source: str, log=None) -> list[Example]:
    """One example per record: the prompt and the undesired response as its only completion;
    ``extra["prompt"]`` and ``extra["rejected"]`` keep the record's prompt and response."""
    exs = tokenize_records(records, tokenizer, cfg, source=source, log=log)
    by_row = {r["row"]: r for r in records}
    for ex in exs:
        ex.extra = {"prompt": by_row[ex.row]["prompt"], "rejected": by_row[ex.row]["completion"]}
    return exs


# --------------------------------------------------------------------------- generation


def best_of(scores: list[float], n: int) -> list[int]:
    """Per prompt, the index (0..n-1) of its highest-scoring candidate; ties go to the first."""
    return [max(range(n), key=lambda k: (scores[p * n + k], -k)) for p in range(len(scores) // n)]


def fingerprint(cfg: NegativesConfig, negatives: list[Example]) -> str:
    """sha256 of what the generated responses depend on: the generator, its sampling settings,
    the rewards, the seed and the tokenized prompts and undesired responses."""
    key = {"generator": to_dict(cfg.generator), "policy": cfg.model.name if not cfg.generator.name else "",
           "rewards": [dataclasses.asdict(r) for r in cfg.rewards], "seed": cfg.train.seed,
           "data": examples_fingerprint([(ex.row, ex.prompt, ex.completions) for ex in negatives])}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def generate(cfg: NegativesConfig, policy, tokenizer, negatives: list[Example], log=print) -> list[dict]:
    """One generated response per prompt (the best of ``generator.num_candidates`` by the rewards,
    else the first): dicts with ``row``, ``chosen`` (text), ``chosen_ids`` (policy token ids) and
    ``chosen_reward`` (None without rewards)."""
    g = cfg.generator
    if g.name:
        model, gen_tok = load_model(dataclasses.replace(cfg.model, name=g.name, lora=type(cfg.model.lora)()))
        r = Renderer(gen_tok, cfg.data.chat_template, source=cfg.data.path)
        exs = [Example(ex.row, r.prompt_ids(ex.extra["prompt"]), [], extra={"prompt": ex.extra["prompt"]})
               for ex in negatives]
    else:
        model, gen_tok = policy, tokenizer
        exs = [Example(ex.row, ex.prompt, [], extra={"prompt": ex.extra["prompt"]}) for ex in negatives]
    was_training = model.training
    model.eval()
    engine = make_engine(engine_name(RolloutConfig(backend=g.backend), model), model, gen_tok,
                         batch_size=g.batch_size, runtime=cfg.runtime)
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                            top_k=g.top_k, n=g.num_candidates, stop=list(g.stop))
    n = g.num_candidates
    traj = rollout(engine, exs, params, generator=torch.Generator().manual_seed(cfg.train.seed))
    del engine
    model.train(was_training)
    rewards = None
    if cfg.rewards:
        rewards = build_rewards(cfg.rewards)
        try:
            scores = score(rewards, traj, log).total
        finally:
            rewards.close()
        pick = best_of(scores, n)
    else:
        pick = [0] * len(exs)
    renderer = Renderer(tokenizer, cfg.data.chat_template, source=cfg.data.path) if g.name else None
    out = []
    for p, ex in enumerate(exs):
        i = p * n + pick[p]
        ids = traj.completion_ids[i]
        if renderer is not None:  # another tokenizer: the text, rendered as the policy sees a response
            try:
                ids = renderer.example({"kind": "unpaired", "row": ex.row, "prompt": ex.extra["prompt"],
                                        "completion": traj.texts[i], "label": True}).completions[0]
            except DataError:  # an empty response
                ids = []
        out.append({"row": ex.row, "chosen": traj.texts[i], "chosen_ids": list(ids),
                    "chosen_reward": float(scores[i]) if rewards is not None else None})
    if g.name:
        del model
    log(f"[negatives] generated {len(out)} responses ({n} candidate(s) per prompt, "
        + (f"best by {len(cfg.rewards)} reward source(s))" if rewards is not None else "the first kept)"))
    return out


def read_generated(path: str, fp: str, log=print) -> list[dict] | None:
    """The rows of ``path`` when every one carries fingerprint ``fp``; None otherwise."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        log(f"[negatives] {path} is unreadable ({e}); generating again")
        return None
    if not rows or any(not isinstance(r, dict) or r.get("fingerprint") != fp for r in rows):
        log(f"[negatives] {path} was written for another config or data; generating again")
        return None
    return rows


def write_generated(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def make_pairs(cfg: NegativesConfig, negatives: list[Example], generated: list[dict], fp: str, log=print
               ) -> tuple[list[Example], list[dict]]:
    """(pair examples [generated, rejected], the rows of generated.jsonl for them). A generated
    response that is empty or equal to the undesired one gives no pair; pairs longer than
    data.max_length are cut (or dropped) as the data's truncation policy says; all counted."""
    by_row = {g["row"]: g for g in generated}
    pairs, rows, stats = [], [], {"empty": 0, "same as the rejected response": 0}
    cut: collections.Counter = collections.Counter()
    for ex in negatives:
        g = by_row.get(ex.row)
        if g is None or not g["chosen_ids"]:
            stats["empty"] += 1
            continue
        if list(g["chosen_ids"]) == list(ex.completions[0]):
            stats["same as the rejected response"] += 1
            continue
        pair = truncate(Example(ex.row, list(ex.prompt), [list(g["chosen_ids"]), list(ex.completions[0])],
                                extra={"prompt": ex.extra["prompt"]}), cfg.data, cut)
        if pair is None:
            continue
        pairs.append(pair)
        rows.append({"row": ex.row, "prompt": ex.extra["prompt"], "chosen": g["chosen"],
                     "rejected": ex.extra["rejected"], **({"chosen_reward": g["chosen_reward"]}
                                                          if g.get("chosen_reward") is not None else {}),
                     "chosen_ids": list(g["chosen_ids"]), "fingerprint": fp})
    dropped = {k: v for k, v in {**stats, **cut}.items() if v}
    if dropped:
        log("[negatives] generated pairs: " + ", ".join(f"{v} {k}" for k, v in dropped.items())
            + f" (of {len(negatives)} prompts)")
    if not pairs:
        raise TrainingError(f"no generated pair left ({dropped}); raise generator.max_new_tokens or "
                            "data.max_length, or check the generator")
    return pairs, rows


# --------------------------------------------------------------------------- the recipe


def build(cfg: NegativesConfig, log=print, model=None, tokenizer=None):
    """The trainer of ``cfg.objective`` on the negatives (and generated responses), with
    ``output_dir/generated.jsonl`` written for dpo/kto."""
    validate_all(cfg)
    out = cfg.train.output_dir
    if not cfg.train.resume and not cfg.train.overwrite and os.path.isdir(out) and is_run_dir(out):
        raise TrainingError(f"{out} already holds a run (metrics, checkpoints or final/); continue it with "
                            "--train.resume true, replace it with --train.overwrite true, or choose another "
                            "--train.output_dir")
    if not cfg.data.path:
        raise DataError("no training data: set data.path (a local file or a hub dataset name)")
    records = load_negatives(cfg.data.path, cfg.data.rows, cfg.data, log)  # bad data fails before any model loads
    if model is None:
        model, tokenizer = load_model(cfg.model)
    negatives = tokenize_negatives(records, tokenizer, cfg.data, cfg.data.path, log)
    log(f"[negatives] {len(negatives)} undesired responses, objective={cfg.objective}")
    if cfg.objective == "npo":
        evals = []
        if cfg.data.eval_path or cfg.data.eval_rows:
            path = cfg.data.eval_path or cfg.data.path
            evals = tokenize_negatives(load_negatives(path, cfg.data.eval_rows, cfg.data, log), tokenizer,
                                       cfg.data, f"{path} (eval)", log)
        train = [Example(ex.row, ex.prompt, ex.completions) for ex in negatives]
        evals = [Example(ex.row, ex.prompt, ex.completions) for ex in evals]
        dcfg = dpo.DPOConfig(model=cfg.model, data=cfg.data, train=cfg.train, loss_type="npo", beta=cfg.beta,
                             reference=cfg.reference, ref_model=cfg.ref_model)
        return dpo.build(dcfg, log=log, model=model, tokenizer=tokenizer, examples=(train, evals))

    fp = fingerprint(cfg, negatives)
    path = os.path.join(out, GENERATED)
    rows = read_generated(path, fp, log) if cfg.train.resume else None
    if rows is not None:
        log(f"[negatives] resume: reusing the {len(rows)} generated responses in {path}")
        generated = [{"row": r["row"], "chosen": r["chosen"], "chosen_ids": r["chosen_ids"],
                      "chosen_reward": r.get("chosen_reward")} for r in rows]
    else:
        generated = generate(cfg, model, tokenizer, negatives, log)
    pairs, rows = make_pairs(cfg, negatives, generated, fp, log)
    if cfg.objective == "dpo":
        dcfg = dpo.DPOConfig(model=cfg.model, data=cfg.data, train=cfg.train, loss_type="sigmoid", beta=cfg.beta,
                             reference=cfg.reference, ref_model=cfg.ref_model)
        trainer = dpo.build(dcfg, log=log, model=model, tokenizer=tokenizer,
                            examples=([Example(p.row, p.prompt, p.completions) for p in pairs], []))
    else:
        kcfg = kto.KTOConfig(model=cfg.model, data=cfg.data, train=cfg.train, beta=cfg.beta,
                             desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight,
                             reference=cfg.reference, ref_model=cfg.ref_model)
        unpaired = [Example(p.row, p.prompt, [c], label=lab) for p in pairs
                    for c, lab in zip(p.completions, (True, False))]
        trainer = kto.build(kcfg, log=log, model=model, tokenizer=tokenizer, examples=(unpaired, []))
    write_generated(path, rows)  # after the trainer has prepared (and, with overwrite, emptied) the run dir
    log(f"[negatives] {len(rows)} generated pairs in {path}")
    return trainer


def run(cfg: NegativesConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

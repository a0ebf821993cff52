"""Nash learning from a preference model: SPPO and DNO (batched, on-policy).

    rlhfkit pm   --config pm_hh                             # the judge
    rlhfkit sppo --config sppo_hh --preference_model runs/pm_hh/final
    rlhfkit dno  --config sppo_hh --preference_model runs/pm_hh/final --reference_field chosen

One loop step is one iteration t (docs/algorithms.md#nash-learning-general-preferences), top to
bottom in :meth:`NashOnline.iteration`:

    traj   = rollout(engine, prompts, K samples each)      # from π_t (rlhfkit.rl.experience)
    tables = judge.matrix(prompts, responses)              # P[i, j] = P(y_i ≻ y_j | x)
    win    = win_rates(tables)                             # P̂(y_i ≻ π_t)
    SPPO:  targets η(P̂ − ½) for every response            # docs/algorithms.md#sppo
    DNO:   (argmax P̂, argmin P̂) pairs past the threshold  # docs/algorithms.md#dno
    π_t's log-probs: one no-grad pass of the policy on the packed update batches
    for epoch in range(num_iterations):
        for minibatch in shuffled(minibatches):
            update(minibatch)                              # one optimizer step
            engine.update_weights(policy)

The judge is a preference model trained by ``rlhfkit pm`` (``preference_model``), or any object
with ``matrix(prompts, groups) -> [(K, K) tables]`` and ``probs(prompts, a, b)`` passed to
:func:`build`. SPPO's loss is the registered policy loss ``sppo``; DNO's is any reference-reading
loss of the DPO registry (``loss_type``) with π_t as the reference. Held-out prompts are answered
greedily at every evaluation and judged against the answers of the run's first evaluation
(``win_rate_vs_start``: mean P(current ≻ start)).

Prompts: a built-in ``task``, or the prompts of data rows: prompt-only rows, or the prompts of
preference pairs (``prompt``/``chosen``/``rejected``, e.g. HH-RLHF) and prompt/completion rows,
whose other fields stay with the prompt (DNO's ``reference_field: chosen`` judges a pair's chosen
response beside the samples).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..backends import make_engine
from ..backends.base import RuntimeOptions
from ..config import DataConfig, ModelConfig, TrainConfig, check_range, validate_all
from ..data.collate import sequence_index
from ..data.pipeline import load_records
from ..data.tokenize import Example, Renderer, tokenize_records
from ..errors import ConfigError, DataError
from ..losses.nash import dno_pairs, sppo_targets, win_rates
from ..losses.objectives import PolicyLossInputs, get_policy_loss
from ..losses.preference import PairLogps, get_preference_loss, get_preference_spec
from ..models.forward import completion_logprobs, disable_dropout, segment_sum
from ..models.loading import load_model
from ..rl.config import RolloutConfig, engine_name, ray_options
from ..rl.experience import (Models, Trajectories, no_grad_passes, pack_minibatches, response_mask, rollout,
                             slice_updates)
from ..rl.rollout import SamplingParams, check_kv_cache
from .common import LossOutput, save_model
from .loop import Recipe, Trainer, start_run
from .prompts import TASKS, load_prompts


@dataclasses.dataclass
class NashConfig:
    """What SPPO and DNO share: the policy, its prompts, sampling, the judge and the updates."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(max_length=1024, max_prompt_length=512))
    """Prompt rows (``prompt`` plus any other fields) when no ``task`` is set."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/sppo", lr=5e-7, batch_size=4, warmup_ratio=0.0, lr_scheduler="constant",
        max_steps=10, eval_batch_size=16))
    """One step = one iteration on train.batch_size x train.grad_accum prompts."""
    rollout: RolloutConfig = dataclasses.field(default_factory=lambda: RolloutConfig(num_generations=4))
    """rollout.num_generations = K responses per prompt (>= 2)."""
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    task: str = ""
    """A built-in prompt set instead of data.path: arithmetic | word_problems."""
    task_size: int = 2000
    task_eval_size: int = 16
    preference_model: str = ""
    """The judge: a preference model saved by `rlhfkit pm` (its final/ directory)."""
    judge_batch_size: int = 4
    """Prompts per judge forward (each with all K(K-1) ordered pairs of its responses)."""
    num_iterations: int = 1
    """Epochs over each iteration's samples."""
    num_minibatches: int = 1
    """Optimizer updates per epoch (the prompts are split into this many minibatches)."""
    micro_batch_size: int = 0
    """Prompts per forward inside a minibatch (gradients accumulate; 0 = the whole minibatch)."""

    def validate(self) -> None:
        check_range("rollout.num_generations", self.rollout.num_generations, lo=2)
        check_range("rollout.temperature", self.rollout.temperature, lo=0, lo_open=True)
        for key, lo in (("task_size", 1), ("task_eval_size", 0), ("judge_batch_size", 1), ("num_iterations", 1),
                        ("num_minibatches", 1), ("micro_batch_size", 0)):
            check_range(key, getattr(self, key), lo=lo)
        prompts = self.train.batch_size * self.train.grad_accum
        check_range("num_minibatches", self.num_minibatches, lo=1, hi=prompts)
        if self.task and self.task not in ("arithmetic", "word_problems"):
            raise ConfigError(f"task must be arithmetic or word_problems (got {self.task!r}; built-in: "
                              f"{', '.join(TASKS)})")


@dataclasses.dataclass
class SPPOConfig(NashConfig):
    eta: float = 1.0
    """η > 0: a response's log-ratio log π_θ/π_t is regressed on η(P̂(y ≻ π_t) − ½)."""

    def validate(self) -> None:
        super().validate()
        check_range("eta", self.eta, lo=0, lo_open=True)


@dataclasses.dataclass
class DNOConfig(NashConfig):
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        output_dir="runs/dno", lr=5e-7, batch_size=4, warmup_ratio=0.0, lr_scheduler="constant",
        max_steps=10, eval_batch_size=16))
    loss_type: str = "sigmoid"
    """A DPO-registry loss that reads a reference (here π_t): sigmoid | ipo | hinge | ..."""
    beta: float = 0.1
    margin_threshold: float = 0.0
    """A prompt's pair is kept when P̂(y_w ≻ π_t) − P̂(y_l ≻ π_t) > margin_threshold, in [0, 1)."""
    reference_field: str = ""
    """A field of the prompt rows holding a reference response, judged beside the K samples (empty = none;
    e.g. data.columns 'completion:reference' and reference_field reference)."""

    def validate(self) -> None:
        super().validate()
        check_range("beta", self.beta, lo=0, lo_open=True)
        check_range("margin_threshold", self.margin_threshold, lo=0, hi=1, hi_open=True)
        spec = get_preference_spec(self.loss_type)
        if not spec.needs_reference or spec.needs_token_kl:
            raise ConfigError(f"loss_type '{self.loss_type}' cannot run in DNO: it needs a loss that reads a reference "
                              "log-prob (π_t) and no token-level KL, e.g. sigmoid, ipo, hinge, cdpo")


class NashOnline:
    """State of one SPPO / DNO run and its iteration (module docstring)."""

    def __init__(self, cfg: NashConfig, model, tokenizer, judge, log=print):
        self.cfg, self.tok, self.judge, self.log = cfg, tokenizer, judge, log
        self.algo = "sppo" if isinstance(cfg, SPPOConfig) else "dno"
        self.G = cfg.rollout.num_generations
        self.chunk, self.temperature = cfg.train.logprob_chunk, cfg.rollout.temperature
        self.sampling = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                       top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, n=self.G,
                                       stop=list(cfg.rollout.stop))
        check_kv_cache(model, min(cfg.rollout.batch_size, cfg.train.batch_size * cfg.train.grad_accum * self.G),
                       cfg.rollout.max_new_tokens + 1)
        self.engine = make_engine(engine_name(cfg.rollout, model), model, tokenizer,
                                  batch_size=cfg.rollout.batch_size, runtime=cfg.runtime,
                                  ray=ray_options(cfg.rollout))
        self.renderer = Renderer(tokenizer, cfg.data.chat_template)
        self.pad_id = tokenizer.pad_token_id
        self.loss_fn = get_preference_loss(cfg.loss_type) if self.algo == "dno" else None
        self.start_texts: list[str] | None = None  # greedy held-out answers at the first evaluation

    # ----------------------------------------------------------------- one iteration
    def iteration(self, model, micro_batches: list, step: int, update) -> dict:
        """Sample, judge, build the targets (SPPO) or pairs (DNO), π_t's log-probs once, then the
        epochs of minibatch updates, the sampler following each one."""
        exs = [ex for mb in micro_batches for ex in mb]
        minibatches, m = self.prepare(model, exs, step)
        order = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + step)
        for _ in range(self.cfg.num_iterations):
            for u in torch.randperm(len(minibatches), generator=order).tolist():
                update(minibatches[u])                # one optimizer step
                self.engine.update_weights(model)     # the sampler follows the new weights
        return m

    def prepare(self, model, exs: list[Example], step: int) -> tuple[list, dict]:
        """The iteration's update minibatches (lists of RLBatch) and its rollout metrics."""
        traj = rollout(self.engine, exs, self.sampling)
        release = getattr(self.engine, "release", None)
        if release is not None:
            release()  # the sampling copy of the weights is not kept through the updates
        t0 = time.perf_counter()
        extra = self.reference_responses(exs)
        groups = [traj.texts[p * self.G:(p + 1) * self.G] + ([extra[p][1]] if extra[p][0] else [])
                  for p in range(len(exs))]
        tables = self.judge.matrix([ex.extra.get("prompt") for ex in exs], groups,
                                   batch_size=self.cfg.judge_batch_size)
        wins = [win_rates(torch.as_tensor(t, dtype=torch.float64)) for t in tables]
        lengths = torch.tensor([len(c) for c in traj.completion_ids], dtype=torch.float32)
        m = {"rollout/gen_seconds": traj.gen_seconds, "rollout/judge_seconds": time.perf_counter() - t0,
             "rollout/length_mean": float(lengths.mean()),
             "rollout/truncated_frac": sum(not f for f in traj.finished) / len(traj.finished),
             "rollout/win_rate_spread": sum(float(w.max() - w.min()) for w in wins) / len(wins)}
        if self.algo == "sppo":
            win = torch.stack(wins)                                   # (P, K)
            targets = sppo_targets(win, self.cfg.eta).reshape(-1).float()
            m["sppo/target_abs"] = float(targets.abs().mean())
            return self.minibatches(model, traj, targets, step), m
        pairs = self.pairs(traj, wins, extra)
        m["dno/pairs"] = float(len(pairs.examples))
        m["dno/kept_frac"] = len(pairs.examples) / len(exs)
        if self.cfg.reference_field:
            m["dno/reference_chosen"] = float(len(pairs.extra_chosen_ref))
        if not pairs.examples:
            self.log(f"[dno] step {step + 1}: no prompt's pair passed margin_threshold; no update")
            return [], m
        return self.minibatches(model, pairs, torch.zeros(len(pairs.completion_ids)), step), m

    def reference_responses(self, exs: list[Example]) -> list[list]:
        """Per prompt ``[has_reference, ids?]``: the reference response of DNO's ``reference_field``,
        rendered as a completion of the row's prompt (special-token text stays text)."""
        key = getattr(self.cfg, "reference_field", "")
        out = []
        for ex in exs:
            ref = ex.extra.get(key) if key else None
            if not key or ref in (None, "", []):
                out.append([False])
                continue
            r, prompt = self.renderer, ex.extra.get("prompt")
            p = r.protect(prompt, ex.row, "prompt")
            ptext = r.prompt_text(p)
            ids = r.encode(r.completion_text(p, ptext, r.protect(ref, ex.row, key), ex.row), False)
            if not ids:
                raise DataError(f"the reference response in '{key}' is empty", row=ex.row, field=key)
            text = ref if isinstance(ref, str) else "".join(m.get("content", "") for m in ref)
            out.append([True, text, ids])
        return out

    def pairs(self, traj: Trajectories, wins: list[torch.Tensor], extra: list[list]) -> Trajectories:
        """DNO's (y_w, y_l) of each prompt whose win-rate gap passes the threshold, as trajectories
        of group 2 (chosen first); ``extra_chosen_ref`` lists the prompts whose y_w is the reference."""
        G, exs, comps, texts, chosen_ref = self.G, [], [], [], []
        for p, (ex, w) in enumerate(zip(traj.examples, wins)):
            cand_ids = traj.completion_ids[p * G:(p + 1) * G] + ([extra[p][2]] if extra[p][0] else [])
            cand_txt = traj.texts[p * G:(p + 1) * G] + ([extra[p][1]] if extra[p][0] else [])
            best, worst, keep = dno_pairs(w[None], self.cfg.margin_threshold)
            b, lo = int(best[0]), int(worst[0])
            if not bool(keep[0]) or not cand_ids[b] or not cand_ids[lo] or cand_ids[b] == cand_ids[lo]:
                continue
            exs.append(ex)
            comps += [cand_ids[b], cand_ids[lo]]
            texts += [cand_txt[b], cand_txt[lo]]
            if b == G:
                chosen_ref.append(p)
        out = Trajectories(exs, 2, comps, [[] for _ in comps], [True] * len(comps), texts)
        out.extra_chosen_ref = chosen_ref
        return out

    def minibatches(self, model, traj: Trajectories, targets: torch.Tensor, step: int) -> list:
        """Packed update minibatches of ``traj`` (a prompt's responses behind one copy of it), π_t's
        per-token log-probs from one no-grad pass on exactly those batches, and per-token targets."""
        P, G = len(traj.examples), traj.group
        N = P * G
        mask = response_mask(traj, False)                                  # (N, T)
        T = mask.shape[1]
        order = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step)
        device = next(model.parameters()).device
        micro = self.cfg.micro_batch_size or max(1, P)
        plans = pack_minibatches(traj, list(range(P)), min(self.cfg.num_minibatches, P), micro, order,
                                 self.pad_id, self.cfg.train, device)
        was = model.training
        model.eval()
        old, _, _ = no_grad_passes(Models(model, None, None, self.chunk, self.temperature), plans, N, T, G, old=True)
        model.train(was)
        grids = {"advantages": targets[:, None] * mask, "mask": mask, "old_logp": old.view(N, T), "ref_logp": None,
                 "old_values": None, "returns": None, "sampler_logp": None}
        mbs = [slice_updates(parts, grids, G, T) for parts in plans]
        for rbs in mbs:
            for rb in rbs:  # SPPO: a mean over responses; DNO: over pairs
                n = rb.mask.new_zeros(rb.batch.num_sequences).index_add(0, rb.batch.tgt_seq, rb.mask)
                rb.count = float((n > 0).sum()) if self.algo == "sppo" else float(rb.batch.num_examples)
        return mbs

    # ----------------------------------------------------------------- the loss
    def step(self, model, rb) -> LossOutput:
        b = rb.batch
        out = completion_logprobs(model, b, chunk=self.chunk, temperature=self.temperature)
        if self.algo == "sppo":  # docs/algorithms.md#sppo
            res = get_policy_loss("sppo").fn(PolicyLossInputs(out.token_logps, rb.old_logp, rb.advantages, rb.mask,
                                                              b.tgt_seq, b.num_sequences))
            return LossOutput(res.seq_loss.sum(), dict(res.metrics))
        # DNO: a DPO-family loss with π_t as the reference (docs/algorithms.md#dno)
        pol, n = segment_sum(out.token_logps, b)
        ref, _ = segment_sum(rb.old_logp, b)
        idx = sequence_index(b, 2)                                         # (E, 2): chosen, rejected
        w, lo = idx[:, 0], idx[:, 1]
        loss, metrics = self.loss_fn(PairLogps(pol[w], pol[lo], ref[w], ref[lo], n[w], n[lo]), beta=self.cfg.beta)
        return LossOutput(loss.sum(), metrics)

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model, evals: list[Example]) -> dict:
        """Greedy held-out answers judged against those of the run's first evaluation."""
        greedy = dataclasses.replace(self.sampling, temperature=0.0, n=1)
        ro = self.engine.generate([e.prompt for e in evals], greedy)
        texts = list(ro.texts)
        res = {"greedy/length": sum(len(c) for c in ro.completion_ids) / len(evals)}
        if self.start_texts is None:
            self.start_texts = texts
        prompts = [e.extra.get("prompt") for e in evals]
        probs = self.judge.probs(prompts, texts, self.start_texts, batch_size=self.cfg.judge_batch_size)
        res["win_rate_vs_start"] = sum(probs) / len(probs)
        return res


PROMPT_KINDS = ("prompt_only", "preference", "prompt_completion")


def prompts_of(cfg: NashConfig, tokenizer, log=print) -> tuple[list[Example], list[Example]]:
    """Training and held-out prompts: the task's, or those of the data rows (module docstring);
    ``extra`` holds the raw prompt and the row's other fields."""
    if cfg.task:
        return load_prompts(cfg, tokenizer, log)
    if not cfg.data.path:
        raise DataError("no prompts: set task or data.path (prompt rows, or preference pairs whose prompts are used)")

    def side(path: str, rows: str, what: str) -> list[Example]:
        recs = []
        for rec in load_records(path, rows, cfg.data, PROMPT_KINDS, log):
            rest = {k: v for k, v in rec.items() if k not in ("kind", "row")}
            recs.append({**rest, "kind": "prompt_only", "row": rec["row"]})
        return tokenize_records(recs, tokenizer, cfg.data, source=what, log=log)

    train = side(cfg.data.path, cfg.data.rows, cfg.data.path)
    evals = []
    if cfg.data.eval_path or cfg.data.eval_rows:
        path = cfg.data.eval_path or cfg.data.path
        evals = side(path, cfg.data.eval_rows, f"{path} (eval)")
    return train, evals


def build(cfg: NashConfig, log=print, model=None, tokenizer=None, judge=None) -> Trainer:
    validate_all(cfg)
    algo = "sppo" if isinstance(cfg, SPPOConfig) else "dno"
    if judge is None:
        if not cfg.preference_model:
            raise ConfigError(f"{algo} needs a judge: set preference_model to a preference model trained by "
                              "`rlhfkit pm` (its final/ directory)")
        from ..rewards.preference_model import load_preference_model
        judge = load_preference_model(cfg.preference_model)
    if model is None:
        model, tokenizer = load_model(cfg.model)
    disable_dropout(model)
    device = next(model.parameters()).device
    if hasattr(judge, "to"):
        judge.to(device)
    train, evals = prompts_of(cfg, tokenizer, log)
    nash = NashOnline(cfg, model, tokenizer, judge, log)
    log(f"[{algo}] K={nash.G} prompts={len(train)} eval_prompts={len(evals)} "
        + (f"eta={cfg.eta}" if algo == "sppo" else f"loss_type={cfg.loss_type} beta={cfg.beta}"))

    def save(m, path):
        save_model(model, tokenizer, path, cfg.model.lora, cfg)

    recipe = Recipe(model=model, examples=train, collate=lambda exs: exs, step=nash.step, count=lambda rb: rb.count,
                    iteration=nash.iteration, evaluate=(lambda m: nash.evaluate(m, evals)) if evals else None,
                    save=save, name=algo, config=cfg)
    trainer = Trainer(cfg.train, recipe, log)
    trainer.nash = nash
    return trainer


def run(cfg: NashConfig, log=print, **kw) -> dict:
    start_run(cfg.train)
    return build(cfg, log, **kw).train()

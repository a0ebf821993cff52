"""The one training loop: every recipe supplies what a step computes, the loop does the rest.

The loop owns devices (through ``accelerate``), gradient accumulation, the LR schedule,
clipping, the NaN/Inf guard, evaluation, metrics (JSONL + TensorBoard), the progress bar,
checkpoints and resume.

Loss normalisation. A recipe's ``step`` returns the *sum* of its per-item losses (tokens
for SFT, pairs for a reward model) and ``count`` says how many items a micro-batch holds.
The loop divides by the item count of the whole optimizer step before ``backward``, so the
gradient equals that of one big batch whatever ``grad_accum`` is.

Data position. Micro-batch k of the run is examples ``perm_e[(k mod n) * b : ...]`` of a
permutation seeded by ``seed + epoch``, so the position is the step number alone and a
resumed run sees exactly the batches the uninterrupted run would have seen.

The run dir. A trainer holds an exclusive lock on ``output_dir`` for its life, records the run
(resolved config, data fingerprints) in ``run.json``, refuses a fresh run into another run's
results unless ``train.overwrite``, and resumes only the recorded run (``train.resume_allow``
names the keys that may differ). SIGTERM finishes the current step, checkpoints it and exits
(143 from the CLI); Ctrl-C waits for a step's update to be complete before checkpointing it.
Non-finite weights are never checkpointed or written as final/best; final/ and best/ are
replaced whole and hold a model card; the end of a run keeps optimizer state only with
``train.save_optimizer`` (see :mod:`.export`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
import resource
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import TrainConfig, to_dict
from ..errors import Preempted, TrainingError
from .common import LossOutput
from .metrics import MetricsLog
from .setup import (check_train_config, make_optimizer, make_scheduler,  # noqa: F401 (re-exported)
                    return_freed_memory, start_run)
from . import export
from . import fsdp
from .checkpoint import (begin_sharded, finish_sharded, latest_checkpoint, list_checkpoints, load_checkpoint,
                         load_sharded_checkpoint, save_checkpoint, sharded_tmp, write_shard)
from .rundir import examples_fingerprint, file_fingerprints, prepare_run_dir

RUN_CONFIG: contextvars.ContextVar = contextvars.ContextVar("rlhfkit_run_config", default=None)
"""The whole resolved config of the command being run (set by the CLI), recorded in each run
dir so a resume can tell what changed; a recipe may pass its own as ``Recipe.config``."""


@dataclass
class Recipe:
    """What a training step computes. ``step(model, batch) -> LossOutput`` (:class:`.common.LossOutput`)."""

    model: Any
    examples: list
    collate: Callable[[list], Any]
    step: Callable[[Any, Any], LossOutput]
    count: Callable[[Any], float]
    evaluate: Callable[[Any], dict] | None = None
    save: Callable[[Any, str], None] | None = None
    name: str = "train"
    state: dict = field(default_factory=dict)  # recipe state saved with checkpoints
    iteration: Callable[[Any, list, int, Callable[[list], dict]], dict] | None = None
    """Online recipes: ``iteration(model, micro_batches, step, update) -> metrics``. The recipe
    turns the loop's micro-batches (e.g. prompts) into its own optimizer updates, calling
    ``update(micro_batches_for_step) -> record`` once per update (one optimizer step: the record
    holds that update's ``train/*`` means and, under ``"sums"``, the LossOutput sums over its
    micro-batches and processes); the returned metrics join the step's record. The LR schedule
    advances once per loop step either way."""
    param_groups: Callable[[Any], list] | None = None
    """Optimizer parameter groups (e.g. a critic with its own learning rate)."""
    on_step_end: Callable[[int, dict], None] | None = None
    """Called with each step's finished metrics record (monitors, schedules)."""
    should_stop: Callable[[], str] | None = None
    """Checked after every step: a non-empty reason ends the run early (final eval and save)."""
    before_save: Callable[[], None] | None = None
    """Called before each checkpoint (e.g. to put work in flight into ``state``)."""
    after_update: Callable[[Any], dict | None] | None = None
    """Called with the optimizer right after each optimizer step (e.g. a proximal step on the
    weights); the metrics it returns join the update's ``train/*`` record."""
    config: Any = None
    """The recipe's whole config (a dataclass), recorded in the run dir and compared on resume;
    without it the config the CLI is running (``RUN_CONFIG``) or just the train section is used."""


def make_accelerator():
    """The run's ``Accelerator``. Under ``accelerate launch`` with a DeepSpeed config and no GPU
    the accelerator is not forced onto the CPU (``Accelerator(cpu=True)`` silently falls back
    to plain DDP) but given the gloo backend: accelerate knows no distributed backend for the
    CPU device under DeepSpeed and would otherwise run every process as a single one
    (DeepSpeed itself then runs on its CPU accelerator; ``DS_ACCELERATOR=cpu`` selects it)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if torch.cuda.is_available():
        return Accelerator()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and "LOCAL_RANK" in os.environ:
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(cpu=True)


def configure_deepspeed(accelerator, cfg: TrainConfig) -> bool:
    """Whether ``accelerator`` runs DeepSpeed; if so, fill the DeepSpeed config from the train
    section before ``prepare``: ``train_micro_batch_size_per_gpu`` = ``train.batch_size`` (the
    loop hands accelerate no dataloader to read it from), ``gradient_accumulation_steps`` = 1
    (the loop accumulates its micro-batches itself and marks the last one of each optimizer step
    as DeepSpeed's boundary) and ``gradient_clipping`` = ``train.max_grad_norm`` (0 = off), which
    override the values of an accelerate config file."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return False
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = int(cfg.batch_size)
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = float(cfg.max_grad_norm)
    ds.pop("train_batch_size", None)  # derived by accelerate from the two above and the world size
    plugin.gradient_accumulation_steps = 1
    return True


class Trainer:
    def __init__(self, cfg: TrainConfig, recipe: Recipe, log: Callable[[str], None] = print):
        self.cfg, self.recipe, self.log = cfg, recipe, log
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        check_train_config(cfg)
        if cfg.return_freed_memory and not return_freed_memory():
            warnings.warn("train.return_freed_memory needs Linux with glibc; ignored", stacklevel=2)
        self.accelerator = make_accelerator()
        self.deepspeed = configure_deepspeed(self.accelerator, cfg)
        torch.manual_seed(cfg.seed)
        # data parallel: train.batch_size is per process; a global micro-batch of
        # batch_size x world examples is split between the processes
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        n = len(recipe.examples)
        per_micro = cfg.batch_size * self.world
        self.micro_per_epoch = math.ceil(n / per_micro)
        if self.world > 1 and n - (self.micro_per_epoch - 1) * per_micro < self.world:
            self.micro_per_epoch -= 1  # a tail too short to give every process an example
            if self.micro_per_epoch == 0:
                raise TrainingError(f"{n} training examples cannot be split between {self.world} processes")
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(
            1, math.ceil(cfg.epochs * self.micro_per_epoch / cfg.grad_accum))
        self.fsdp = fsdp.fsdp_requested(cfg)
        if self.fsdp and self.deepspeed:
            raise TrainingError("train.fsdp and a DeepSpeed launch both shard the model; use one: --train.fsdp false "
                                "under DeepSpeed, or launch without the DeepSpeed config")
        if self.fsdp and recipe.iteration is not None:
            raise TrainingError(f"train.fsdp: the online recipe '{recipe.name}' samples with its own copy of the "
                                "weights, which the sharded path does not keep yet; train it with DDP "
                                "(train.fsdp false; launched without an FSDP accelerate config)")
        self._full_copy = self._export_view = None
        if self.fsdp and self.world > 1:  # before the optimizer: sharding replaces the parameters
            self._full_copy = fsdp.FullCopy(recipe.model)
            fsdp.shard_model(recipe.model.to(self.accelerator.device), self.world, self.accelerator.device)
        params = [p for p in recipe.model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("the model has no trainable parameters (check freeze_layers / LoRA)")
        groups = recipe.param_groups(recipe.model) if recipe.param_groups else params
        self.optimizer = make_optimizer(groups, cfg, params[0].device)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        if self.fsdp:  # sharded by fully_shard above (or one process: nothing to wrap)
            self.model = recipe.model.to(self.accelerator.device)
        elif self.world > 1 and hasattr(recipe.model, "wrap_parts"):  # parts called separately
            recipe.model.wrap_parts(self.accelerator.prepare_model)
            self.model, self.optimizer = recipe.model, self.accelerator.prepare_optimizer(self.optimizer)
        else:
            self.model, self.optimizer = self.accelerator.prepare(recipe.model, self.optimizer)
        if not self.accelerator.is_main_process:
            self.log = lambda *a: None  # one process speaks
        if self.deepspeed:
            stage = self.accelerator.state.deepspeed_plugin.zero_stage
            self.log(f"[{recipe.name}] DeepSpeed ZeRO stage {stage} on {self.world} process(es) "
                     f"({self.accelerator.device.type})")
        self.ckpt_dir = os.path.join(cfg.output_dir, "checkpoints")
        self.last_good: str | None = None  # the newest checkpoint known to be good
        self.lock = None
        self._term = self._critical = self._sigint_pending = False
        self._done = 0  # optimizer steps whose updates and metrics are complete
        self.last_record: dict = {}  # the newest step's metrics record
        err = ""
        if self.accelerator.is_main_process:  # under torchrun only rank 0 writes
            try:
                self._prepare_run_dir()
            except TrainingError as e:
                err = str(e)
                self._release()
        self._agree(err)
        self.metrics = MetricsLog.for_run(cfg, enabled=self.accelerator.is_main_process,
                                          config_fn=lambda: self._record()["config"])  # for wandb/trackio

    # ------------------------------------------------------------------ the run directory
    def _agree(self, err: str) -> None:
        """Raise on every process when one of them (the main one) found an error."""
        if self.world > 1 and self.all_sum([1.0 if err else 0.0])[0] > 0:
            raise TrainingError(err or "the main process stopped the run (see its message)")
        if err:
            raise TrainingError(err)

    def _record(self) -> dict:
        """What identifies this run: its resolved config (the train section as this trainer runs it),
        the local data files and the training examples."""
        full = self.recipe.config if self.recipe.config is not None else RUN_CONFIG.get()
        config = to_dict(full) if full is not None and dataclasses.is_dataclass(full) else {}
        config["train"] = to_dict(self.cfg)
        return {"config": config, "data": {"files": file_fingerprints(config),
                                           "examples": examples_fingerprint(self.recipe.examples)}}

    def _prepare_run_dir(self) -> None:
        """Lock the run dir and check it against this run (:func:`rundir.prepare_run_dir`)."""
        self.lock = prepare_run_dir(self.cfg, self.ckpt_dir, self._record(), self.recipe.name, self.log)

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __del__(self):
        try:
            self._release()
        except Exception:
            pass

    # ------------------------------------------------------------------ data order
    def _indices(self, k: int, perms: dict | None = None) -> list[int]:
        """Example indices of micro-batch ``k`` (a fresh shuffle each epoch, from the seed)."""
        epoch, i = divmod(k, self.micro_per_epoch)
        perm = perms.get(epoch) if perms is not None else None
        if perm is None:
            g = torch.Generator().manual_seed(self.cfg.seed + epoch)
            perm = torch.randperm(len(self.recipe.examples), generator=g).tolist()
            if perms is not None:
                perms[epoch] = perm
        per_micro = self.cfg.batch_size * self.world
        idx = perm[i * per_micro:(i + 1) * per_micro]
        if self.world == 1:
            return idx
        q, r = divmod(len(idx), self.world)  # this process's share, as even as it can be
        lo = self.rank * q + min(self.rank, r)
        return idx[lo:lo + q + (self.rank < r)]

    def _global_indices(self, k: int, perms: dict) -> list[int]:
        epoch, i = divmod(k, self.micro_per_epoch)
        if epoch not in perms:
            self._indices(k, perms)
        per_micro = self.cfg.batch_size * self.world
        return perms[epoch][i * per_micro:(i + 1) * per_micro]

    def all_sum(self, values: list[float]) -> list[float]:
        """Sums over the processes (the values themselves with one process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def visited_examples(self) -> list[int]:
        """Indices of the examples the run will train on, in file order (all of them unless
        max_steps stops it inside the first epoch): what a precomputed reference must cover."""
        n_micro = self.total_steps * self.cfg.grad_accum
        if n_micro >= self.micro_per_epoch:
            return list(range(len(self.recipe.examples)))
        perms: dict = {}
        return sorted({j for k in range(n_micro) for j in self._global_indices(k, perms)})

    def micro_batch(self, k: int):
        idx = self._indices(k)
        batch = self.recipe.collate([self.recipe.examples[j] for j in idx])
        return batch.to(self.accelerator.device) if hasattr(batch, "to") else batch

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict:
        if self.recipe.evaluate is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            res = {f"eval/{k}": v for k, v in self.recipe.evaluate(self.model).items()}
        self.model.train()
        self.metrics.write(step, res)
        self.log(f"[{self.recipe.name}] step {step}: " + ", ".join(
            f"{k[5:]}={v:.4g}" for k, v in res.items() if isinstance(v, float)))
        self._keep_best(step, res)
        return res

    def _keep_best(self, step: int, res: dict) -> None:
        export.keep_best(self, step, res)

    @contextlib.contextmanager
    def full_weights(self):
        """A block in which :meth:`export_model` is the consolidated model (sharded: gathered onto the
        main process; collective, every process enters it)."""
        if self._full_copy is None:
            with self._zero3_gathered():
                yield self.export_model()
            return
        with self._full_copy.gathered(self.model, self.accelerator.is_main_process) as view:
            self._export_view = view
            try:
                yield view
            finally:
                self._export_view = None

    def export_model(self):
        """The model to write out: the gathered copy inside :meth:`full_weights` under FSDP, else the model."""
        return self._export_view if self._export_view is not None else self.accelerator.unwrap_model(self.model)

    def _weights_finite(self) -> bool:
        if self.fsdp:
            return fsdp.weights_finite([p for p in self.model.parameters() if p.requires_grad])
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters() if p.requires_grad)

    def _check_finite(self, step: int, what: str) -> None:
        if not self._weights_finite():
            raise TrainingError(f"the weights are not finite (NaN/Inf) after step {step}; {what}. The last good "
                                f"checkpoint is {self.last_good or 'none'}; lower train.lr or check the data")

    def _save(self, step: int) -> None:
        """Checkpoint at ``step`` (never of non-finite weights); a failure is an error on every process."""
        self._check_finite(step, "no checkpoint written")
        if self.recipe.before_save is not None:
            self.recipe.before_save()
        if self.fsdp:
            return self._save_sharded(step)
        err = ""
        with self.full_weights():
            if self.accelerator.is_main_process:
                try:
                    self.last_good = save_checkpoint(
                        self.ckpt_dir, step, model=self.accelerator.unwrap_model(self.model),
                        optimizer=self.optimizer, scheduler=self.scheduler, state={"total_steps": self.total_steps},
                        extra=self.recipe.state, keep=self.cfg.save_total_limit,
                        export=export.checkpoint_exporter(self))
                except TrainingError as e:
                    err = str(e)
        self._agree(err)
        self.accelerator.wait_for_everyone()

    def _save_sharded(self, step: int) -> None:
        """FSDP checkpoint: every process writes its shard; the main process the model files (from the
        gathered weights), the shared states and the manifest, then publishes the directory."""
        main, err = self.accelerator.is_main_process, ""
        states, shapes = fsdp.shard_states(self.model, self.optimizer)
        with self.full_weights():
            if main:
                try:
                    begin_sharded(self.ckpt_dir, step, export=export.checkpoint_exporter(self))
                except TrainingError as e:
                    err = str(e)
            self._agree(err)
        self.accelerator.wait_for_everyone()
        try:
            write_shard(sharded_tmp(self.ckpt_dir, step), self.rank, self.world, states, shapes)
        except TrainingError as e:
            err = str(e)
        self._agree(err)
        del states
        if main:
            try:
                self.last_good = finish_sharded(self.ckpt_dir, step, self.world, scheduler=self.scheduler,
                                                state={"total_steps": self.total_steps}, extra=self.recipe.state,
                                                keep=self.cfg.save_total_limit)
            except TrainingError as e:
                err = str(e)
        self._agree(err)
        self.accelerator.wait_for_everyone()

    def _zero3_gathered(self):
        """A context in which every process holds the whole weights: under DeepSpeed ZeRO-3 the
        partitioned parameters gathered (a collective: every process enters it), else nothing."""
        from contextlib import nullcontext

        from ..models.forward import unwrap

        params = [p for p in unwrap(self.model).parameters() if hasattr(p, "ds_id")] if self.deepspeed else []
        if not params:
            return nullcontext()
        try:
            import deepspeed
        except ImportError:  # pragma: no cover - partitioned parameters come from DeepSpeed itself
            return nullcontext()
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _write_model(self, name: str, metrics: dict | None = None, step: int | None = None) -> str:
        return export.write_model(self, name, metrics, step)

    # ------------------------------------------------------------------ signals
    def _on_sigterm(self, signum, frame) -> None:
        self._term = True  # acted on at the end of the current step (no I/O inside a signal handler)

    def _on_sigint(self, signum, frame) -> None:
        if self._critical and not self._sigint_pending:  # mid-update: finish the step first
            self._sigint_pending = True
            return
        raise KeyboardInterrupt

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        return (signal.signal(signal.SIGTERM, self._on_sigterm), signal.signal(signal.SIGINT, self._on_sigint))

    @staticmethod
    def _restore_signals(old) -> None:
        if old is not None:
            signal.signal(signal.SIGTERM, old[0])
            signal.signal(signal.SIGINT, old[1])

    def _step_done(self, step: int) -> None:
        """The step's updates and metrics record are complete: a checkpoint may now be labelled with it."""
        self._done, self._critical = step, False
        if self._sigint_pending:
            self._sigint_pending = False
            raise KeyboardInterrupt

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run to the end; return ``{"initial": eval at step 0, "final": eval at the end}``."""
        old = self._install_signals()
        try:
            return self._train()
        finally:
            self.metrics.close()  # trackers end their run on failure too (idempotent)
            self._restore_signals(old)
            self._release()

    def _train(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        start = 0
        if cfg.resume:
            path = latest_checkpoint(self.ckpt_dir, self.log)
            if path is None and list_checkpoints(self.ckpt_dir):
                raise TrainingError(f"resume: no intact checkpoint in {self.ckpt_dir} (see the lines above); "
                                    "start over with --train.overwrite true")
            if path is None and os.path.isdir(os.path.join(cfg.output_dir, "final")):
                raise TrainingError(f"resume: {cfg.output_dir} holds a finished run (final/) and no checkpoint to "
                                    "continue from (train.save_optimizer false keeps none at the end); start over "
                                    "with --train.overwrite true, or train with --train.save_optimizer true")
            if path is None:
                self.log(f"[{self.recipe.name}] resume: no checkpoint in {self.ckpt_dir}; starting fresh")
                self.metrics.truncate_after(-1)  # records of a run killed before its first checkpoint
            else:
                if self.fsdp:
                    state, extra = load_sharded_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                                           scheduler=self.scheduler, rank=self.rank)
                else:
                    state, extra = load_checkpoint(path, model=acc.unwrap_model(self.model),
                                                   optimizer=self.optimizer, scheduler=self.scheduler)
                self.recipe.state.update(extra)
                start = state["step"]
                self.last_good = path
                self.metrics.truncate_after(start, self.log)
                self.log(f"[{self.recipe.name}] resumed from {path} (step {start}/{self.total_steps})")
        elif os.path.exists(self.metrics.path) and acc.is_main_process:
            os.remove(self.metrics.path)  # a fresh run starts a fresh metrics file
        self._done = start
        first_eval = last_eval = self.evaluate(0) if start == 0 else {}
        end = self.total_steps
        self.model.train()
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_steps, initial=start, desc=self.recipe.name,
                       dynamic_ncols=True, mininterval=1.0)
        try:
            for step in range(start, self.total_steps):
                rec = self.last_record = self._train_step(step)
                if (step + 1) % max(1, cfg.logging_steps) == 0 or step + 1 == self.total_steps:
                    self.metrics.write(step + 1, rec)
                self._step_done(step + 1)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec.get('train/loss', float('nan')):.4f}")
                if cfg.eval_steps and (step + 1) % cfg.eval_steps == 0 and step + 1 < self.total_steps:
                    last_eval = self.evaluate(step + 1)
                if cfg.save_steps and (step + 1) % cfg.save_steps == 0:
                    self._save(step + 1)
                term = self._term if self.world == 1 else self.all_sum([float(self._term)])[0] > 0
                if term:
                    if not (cfg.save_steps and (step + 1) % cfg.save_steps == 0):
                        self._save(step + 1)
                    self.log(f"[{self.recipe.name}] SIGTERM: saved checkpoint {self.last_good} after step "
                             f"{step + 1}; exiting")
                    raise Preempted(f"terminated by SIGTERM after step {step + 1}/{self.total_steps}: checkpoint "
                                    f"{self.last_good} saved; continue with --train.resume true")
                reason = self.recipe.should_stop() if self.recipe.should_stop is not None else ""
                if reason:
                    self.log(f"[{self.recipe.name}] early stop at step {step + 1}: {reason}")
                    end = step + 1
                    break
        except KeyboardInterrupt:
            if self._critical:  # abandoned inside an update: the weights are between two steps
                self.log(f"[{self.recipe.name}] interrupted inside step {self._done + 1}'s update: no checkpoint "
                         f"written; the last one is {self.last_good or 'none'}")
            else:
                self.log(f"[{self.recipe.name}] interrupted: saving a checkpoint of the {self._done} finished "
                         "steps before exiting")
                try:
                    self._save(self._done)
                    self.log(f"[{self.recipe.name}] saved {self.last_good}; continue with --train.resume true")
                except TrainingError as e:
                    self.log(f"[{self.recipe.name}] {e}")
            raise
        finally:
            if bar is not None:
                bar.close()
        final_eval = self.evaluate(end) if start < end or not last_eval else last_eval
        self._check_finite(end, "final/ not written")
        export.finish(self, end, final_eval)  # final/ + card; a resumable checkpoint only with save_optimizer
        self.metrics.close()
        return {"initial": first_eval, "final": final_eval}

    def _train_step(self, step: int) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        ks = range(step * cfg.grad_accum, (step + 1) * cfg.grad_accum)
        batches = [self.micro_batch(k) for k in ks]
        recs: list[dict] = []
        if self.recipe.iteration is not None:
            def update(mbs: list) -> dict:
                recs.append(self._update(mbs, step))
                return recs[-1]
            extra = self.recipe.iteration(self.model, batches, step, update)
        else:
            recs.append(self._update(batches, step))
            extra = {}
        for r in recs:
            r.pop("sums", None)  # raw totals are for the recipe, not the metrics log
        lr = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # a step whose updates were all filtered out is fine
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        dt = time.perf_counter() - t0
        rec: dict = {}
        for r in recs:  # mean over the updates of this step
            for k, v in r.items():
                rec[k] = rec.get(k, 0.0) + v / len(recs)
        tokens = sum(r.pop("_tokens", 0) for r in recs)
        rec.pop("_tokens", None)
        rec.update({"train/lr": lr, "train/epoch": (step + 1) * cfg.grad_accum / self.micro_per_epoch,
                    "train/step_time_s": dt})
        if self.recipe.iteration is None:
            rec["train/tokens_per_s"] = tokens / dt
        else:
            rec["train/update_tokens"] = float(tokens)  # tokens through forward+backward this step
        if self.world > 1 and extra:  # rollout metrics of each shard: mean over processes
            keys = sorted(k for k, v in extra.items() if isinstance(v, (int, float)))
            extra = dict(zip(keys, (v / self.world for v in self.all_sum([float(extra[k]) for k in keys]))))
        rec.update(extra)
        rec.setdefault("train/updates", float(len(recs)))
        if self.recipe.on_step_end is not None:
            self.recipe.on_step_end(step + 1, rec)
        rec["train/peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if torch.cuda.is_available():
            rec["train/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return rec

    def _update(self, batches: list, step: int) -> dict:
        """One optimizer update from ``batches`` (micro-batches, gradients accumulated).

        ``step(model, batch)`` returns a :class:`LossOutput`; the update's loss is
        Σ sum / Σ count + Σ extra, where ``extra`` is a term the recipe already normalised
        (e.g. PPO-ptx's SFT loss).
        """
        acc = self.accelerator
        counts = [float(self.recipe.count(b)) for b in batches]
        total = self.all_sum([sum(counts)])[0]  # items of the whole step, every process
        if total <= 0:
            raise TrainingError(f"step {step + 1}: the batch holds nothing to train on")
        loss_total, sums, weights, raw = 0.0, {}, {}, {}
        tokens = 0
        for i, (b, c) in enumerate(zip(batches, counts)):
            if self.deepspeed:  # DeepSpeed steps inside backward: only after the step's last micro-batch
                acc.gradient_state._set_sync_gradients(i == len(batches) - 1)
            out = self.recipe.step(self.model, b)
            if not isinstance(out, LossOutput):
                raise TypeError(f"recipe '{self.recipe.name}': step() must return a LossOutput "
                                f"(rlhfkit.train.common.LossOutput), got {type(out).__name__}")
            loss = out.sum / total
            if out.extra is not None:
                loss = loss + out.extra / self.world  # already a mean: average it over processes
            # data parallel averages gradients over processes; scaling by the process count
            # makes the update the gradient of (sum over every process) / total
            acc.backward(loss * self.world if self.world > 1 else loss)
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1}; stopping. "
                                    f"The last good checkpoint is {self.last_good or 'none'} (in {self.ckpt_dir}); lower the "
                                    "learning rate or check the data")
            loss_total += float(loss.detach())
            tokens += getattr(b, "num_real_tokens", 0)
            for k, v in out.metrics.items():  # metrics weighted by each micro-batch's item count
                sums[k] = sums.get(k, 0.0) + float(v) * c
                weights[k] = weights.get(k, 0.0) + c
            for k, v in out.sums.items():
                raw[k] = raw.get(k, 0.0) + float(v)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.fsdp and self.world > 1:
            fsdp.sync_replicated_grads(params, self.world)
        if self.fsdp:
            gnorm = fsdp.clip_grad_norm(params, self.cfg.max_grad_norm) if self.cfg.max_grad_norm > 0 else \
                float(fsdp.grad_norm(params))
        elif self.deepspeed:  # clipped and stepped by DeepSpeed in the last backward; its norm
            gnorm = float(acc.clip_grad_norm_(params, self.cfg.max_grad_norm) or 0.0)
        elif self.cfg.max_grad_norm > 0:
            gnorm = float(acc.clip_grad_norm_(params, self.cfg.max_grad_norm))
        else:
            grads = [p.grad.norm() for p in params if p.grad is not None]
            gnorm = float(torch.norm(torch.stack(grads))) if grads else 0.0
        if not math.isfinite(gnorm):
            raise TrainingError(f"non-finite gradient norm at step {step + 1}; stopping. The last "
                                f"good checkpoint is {self.last_good or 'none'} (in {self.ckpt_dir})")
        self._critical = True  # from the first weight change to the step's record: Ctrl-C waits
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        after = self.recipe.after_update(self.optimizer) if self.recipe.after_update is not None else None
        keys, rkeys = sorted(sums), sorted(raw)
        red = self.all_sum([loss_total, float(tokens)] + [sums[k] for k in keys] + [weights[k] for k in keys]
                           + [raw[k] for k in rkeys])
        rec = {"train/loss": red[0], "train/grad_norm": gnorm, "_tokens": red[1]}
        rec.update({f"train/{k}": red[2 + i] / red[2 + len(keys) + i] for i, k in enumerate(keys)})
        rec["sums"] = dict(zip(rkeys, red[2 + 2 * len(keys):]))
        rec.update({f"train/{k}": float(v) for k, v in (after or {}).items()})
        return rec

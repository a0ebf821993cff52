"""The ``ray`` engine: rollouts fanned out to Ray actors (the optional extra ``rlhfkit[ray]``).

``rollout.backend: ray`` starts ``rollout.ray_workers`` actors (``rollout.ray_address``: an
existing cluster, e.g. ``auto`` or ``ray://host:10001``; empty = a local Ray started by the
engine with ``ray_workers x ray_worker_cpus`` CPUs). Each actor holds a CPU copy of the policy
and an in-process engine on it (``rollout.ray_engine``: ``cpu`` or ``hf``, with the
``runtime`` section's settings), and samples a contiguous shard of every batch of prompts.

Sampling is the in-process engine's, row for row: the driver draws the one sampling seed of the
call from the caller's RNG (:func:`~rlhfkit.backends.base.base_seed`) and sends it to every
actor with its shard's first global row; each row then samples from its own generator
(:func:`~rlhfkit.backends.base.row_seed` of the seed and the row), so the tokens do not depend
on how the prompts are split between actors (or processes), and equal those of the in-process
engine for the same seed (up to float ties between batch shapes).

Weights: ``update_weights(model)`` puts the policy's state dict in Ray's object store once
(``ray.put``) and queues a load of that one object on every actor (``load_state_dict``, then
the actor's engine drops its sampling copy); it returns at once, the loads run while the driver
goes on, and the next ``generate`` waits for them (and reports a failed load). Actors run their
calls in order, so a rollout always samples from the last weights sent.

Rewards: :meth:`RayEngine.attach_rewards` sends every reward source that pickles (verifiers,
reward models, remote-reward clients) to the actors, which score their own shard right after
sampling it; a source that does not pickle (a user function: it holds its worker process) is
scored on the driver over the whole batch. The driver combines both
(:meth:`~rlhfkit.rewards.base.CombinedReward.score` with ``precomputed``), so weights, sanity
checks and the first-batch check are the same as without Ray.

Timings (:meth:`RayEngine.pop_timings`, logged with each rollout's metrics):
``rollout/ray_gen_seconds`` (the slowest actor's sampling), ``rollout/ray_score_seconds`` (the
slowest actor's scoring plus the driver's), ``rollout/ray_broadcast_seconds`` (``ray.put`` of
the weights plus the slowest actor's load, summed over the updates since the previous rollout)
and ``rollout/ray_wait_seconds`` (the driver's time in ``generate`` beyond the slowest actor's
sampling and scoring: transfers, (de)serialisation, scheduling, loads still running).

A dead actor, or one silent for ``rollout.ray_timeout`` seconds, ends the call with a
:class:`~rlhfkit.errors.TrainingError` naming the worker, never a hang.

The seeding and the timings are defined in docs/algorithms.md#ray-rollouts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ..errors import ConfigError, TrainingError
from ..models.forward import unwrap
from ..models.portable import pack_model
from .base import Rollout, RolloutEngine, RuntimeOptions, SamplingParams, base_seed

INSTALL_HINT = "pip install rlhfkit[ray]"
INNER_ENGINES = ("cpu", "hf")


def import_ray():
    """The ``ray`` module, or ConfigError with the install command."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"rollout.backend=ray needs the ray package, which is not installed: {INSTALL_HINT} "
                          f"(or use rollout.backend=cpu or hf)") from e
    return ray


@dataclass
class RayOptions:
    """Settings of the ``ray`` engine (the ``rollout.ray_*`` keys)."""

    workers: int = 2
    address: str = ""
    engine: str = "cpu"
    worker_cpus: int = 1
    timeout: float = 600.0

    def validate(self, p: str = "rollout.ray_") -> None:
        from ..config import check_choice, check_range

        for key, value in (("workers", self.workers), ("worker_cpus", self.worker_cpus)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{p}{key} must be an integer >= 1 (got {value!r})")
            check_range(p + key, value, lo=1, hi=1024)
        if not isinstance(self.address, str):
            raise ConfigError(f"{p}address must be a string: empty (a local Ray), 'auto' or HOST:PORT / "
                              f"ray://HOST:PORT (got {self.address!r})")
        check_choice(p + "engine", self.engine, INNER_ENGINES)
        check_range(p + "timeout", self.timeout, lo=0, lo_open=True)


class RolloutWorker:
    """One actor: a CPU copy of the policy, an in-process engine on it, and the reward sources
    sent to it (by index in the driver's :class:`~rlhfkit.rewards.base.CombinedReward`)."""

    def __init__(self, packed: dict, tokenizer, engine: str, batch_size: int, runtime: RuntimeOptions,
                 threads: int):
        from ..models.portable import unpack_model
        from . import make_engine

        torch.set_num_threads(max(1, int(threads)))
        self.model = unpack_model(packed).requires_grad_(False)
        self.engine = make_engine(engine, self.model, tokenizer, batch_size=batch_size, runtime=runtime)
        self.sources: dict = {}

    def ready(self) -> int:
        return os.getpid()

    def load_weights(self, state: dict) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            self.model.load_state_dict(state)
        self.engine.update_weights(self.model)
        return time.perf_counter() - t0

    def set_sources(self, sources: dict) -> None:
        self.sources = dict(sources)

    def generate(self, prompt_ids, params, base: int, row_offset: int, reward_rows=None):
        """The shard's rollout (rows from ``row_offset``) and, with ``reward_rows`` =
        ``(prompts, extras)`` of its rows, each held source's result: ``(rollout, {index:
        RewardResult}, scoring seconds)``."""
        ro = self.engine.generate_seeded(prompt_ids, params, base, row_offset)
        t0, results = time.perf_counter(), {}
        if reward_rows is not None:
            prompts, extras = reward_rows
            for i, src in self.sources.items():
                results[i] = src.score(list(prompts), list(ro.texts), list(extras))
        return ro, results, time.perf_counter() - t0


def shards(count: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges splitting ``count`` items into ``parts`` as evenly as
    possible (the first ``count % parts`` one longer); empty ranges are left out."""
    q, r = divmod(count, parts)
    out, start = [], 0
    for k in range(parts):
        end = start + q + (k < r)
        if end > start:
            out.append((start, end))
        start = end
    return out


class RayEngine(RolloutEngine):
    """``ray``: the in-process engine (``cpu`` / ``hf``) run by Ray actors on shards of the prompts."""

    name = "ray"
    shares_weights = False

    def __init__(self, model, tokenizer, batch_size: int = 64, runtime: RuntimeOptions | None = None,
                 options: RayOptions | None = None):
        from . import make_engine

        ray = import_ray()
        opts = options if options is not None else RayOptions()
        opts.validate()
        rt = runtime if runtime is not None else RuntimeOptions()
        rt.validate()
        m = unwrap(model)
        device = next(m.parameters()).device
        if device.type != "cpu":
            raise ConfigError(f"rollout.backend=ray runs its workers on the CPU; the policy is on {device} "
                              "(use rollout.backend=hf or vllm for a policy on a GPU)")
        if any(hasattr(mod, "lora_A") for mod in m.modules()):
            raise ConfigError("rollout.backend=ray does not take LoRA-wrapped policies; merge the adapters into "
                              "the model first, or use rollout.backend=cpu or hf")
        make_engine(opts.engine, m, tokenizer, batch_size=batch_size, runtime=rt)  # its checks, before any actor
        self.ray, self.options, self.runtime, self.tok = ray, opts, rt, tokenizer
        self.owns_ray = False
        if not ray.is_initialized():
            try:
                if opts.address:
                    ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=opts.workers * opts.worker_cpus, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"rollout.ray_address={opts.address!r}: cannot start or join a Ray cluster "
                                  f"({type(e).__name__}: {e})") from e
            self.owns_ray = True
        actor = ray.remote(num_cpus=opts.worker_cpus, max_restarts=0, max_task_retries=0)(RolloutWorker)
        model_ref = ray.put(pack_model(m))
        self.workers = [actor.remote(model_ref, tokenizer, opts.engine, int(batch_size), rt, opts.worker_cpus)
                        for _ in range(opts.workers)]
        self._get([w.ready.remote() for w in self.workers], "start")
        self._loads: list = []  # weight loads not yet waited for
        self.remote_sources: list[int] = []
        """Indices of the reward sources the actors score (the rest are scored on the driver)."""
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ actors
    def _get(self, refs: list, what: str, workers: list[int] | None = None) -> list:
        """The results of ``refs`` (one per worker in ``workers``, default all), or a
        TrainingError naming the worker that died or did not answer in time; an exception raised
        inside an actor is raised again here as itself."""
        ray, exc = self.ray, self.ray.exceptions
        workers = list(range(len(refs))) if workers is None else workers
        deadline = time.monotonic() + self.options.timeout
        out = []
        for k, ref in zip(workers, refs):
            try:
                out.append(ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
            except exc.GetTimeoutError:
                raise TrainingError(f"rollout.backend=ray: worker {k} of {len(self.workers)} did not {what} within "
                                    f"rollout.ray_timeout={self.options.timeout:g} s; raise rollout.ray_timeout "
                                    "if it is only slow, else check the Ray cluster (ray status)") from None
            except exc.RayActorError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise TrainingError(f"rollout.backend=ray: worker {k} of {len(self.workers)} died (while asked to "
                                    f"{what}): {first}") from None
            except exc.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, Exception):  # the actor's own error; its traceback is in e
                    raise cause from e
                raise
        return out

    def attach_rewards(self, rewards) -> tuple[list[str], list[str]]:
        """Send the sources of ``rewards`` (a :class:`~rlhfkit.rewards.base.CombinedReward`)
        that pickle to every actor; return ``(names scored in the actors, names scored on the
        driver)``."""
        import importlib

        cloudpickle = importlib.import_module("ray.cloudpickle")  # what Ray itself pickles with
        held = {}
        if not hasattr(rewards, "sources"):  # a scorer of one's own: called on the driver as it is
            return [], [getattr(rewards, "name", type(rewards).__name__)]
        for i, src in enumerate(rewards.sources):
            try:
                cloudpickle.dumps(src)
            except Exception:  # noqa: BLE001 - anything that does not pickle stays on the driver
                continue
            held[i] = src
        ref = self.ray.put(held)
        self._get([w.set_sources.remote(ref) for w in self.workers], "take the reward sources")
        self.remote_sources = sorted(held)
        names = rewards.names
        return [names[i] for i in self.remote_sources], [n for i, n in enumerate(names) if i not in held]

    def add_timing(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to ``rollout/ray_{key}_seconds`` (the driver adds its own scoring)."""
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def pop_timings(self) -> dict[str, float]:
        """The ``rollout/ray_*`` seconds accumulated since the last call (module docstring)."""
        out = {f"rollout/ray_{k}_seconds": v for k, v in self.timings.items()}
        self.timings = {}
        return out

    # ------------------------------------------------------------------ the contract
    def update_weights(self, model) -> None:
        t0 = time.perf_counter()
        state = {k: v.detach().to("cpu") for k, v in unwrap(model).state_dict().items()}
        ref = self.ray.put(state)  # one copy in the object store, read by every actor
        self._loads.append([w.load_weights.remote(ref) for w in self.workers])
        self.add_timing("broadcast", time.perf_counter() - t0)

    def _wait_loads(self) -> None:
        while self._loads:
            self.add_timing("broadcast", max(self._get(self._loads.pop(0), "load the new weights")))

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None, row_offset: int = 0) -> Rollout:
        return self.generate_scored(prompt_ids, params, generator, row_offset)[0]

    def generate_scored(self, prompt_ids: list[list[int]], params: SamplingParams,
                        generator: torch.Generator | None = None, row_offset: int = 0, reward_rows=None):
        """:meth:`generate`, and with ``reward_rows`` = ``(prompts, extras)`` (one per sampled
        row) the actors' results of their reward sources over all rows: ``(rollout, {source
        index: RewardResult})``."""
        from ..rewards.base import RewardResult

        t0 = time.perf_counter()
        base, n = base_seed(generator), max(1, params.n)
        self._wait_loads()
        parts = shards(len(prompt_ids), len(self.workers))
        refs = []
        for k, (a, b) in enumerate(parts):
            rows = None
            if reward_rows is not None and self.remote_sources:
                rows = (reward_rows[0][a * n:b * n], reward_rows[1][a * n:b * n])
            refs.append(self.workers[k].generate.remote([list(p) for p in prompt_ids[a:b]], params, base,
                                                        row_offset + a * n, rows))
        outs = self._get(refs, "sample its prompts", list(range(len(parts))))
        comps, logps, fins, texts = [], [], [], []
        results = {i: RewardResult([], []) for i in self.remote_sources} if reward_rows is not None else {}
        for (a, _), (ro, res, _) in zip(parts, outs):
            comps += ro.completion_ids
            logps += ro.logprobs
            fins += ro.finished
            texts += ro.texts
            for i, r in res.items():
                results[i].values.extend(r.values)
                results[i].errors.extend((row + a * n, msg) for row, msg in r.errors)
        wall = time.perf_counter() - t0
        slowest = max((ro.gen_seconds + s for ro, _, s in outs), default=0.0)
        self.add_timing("gen", max((ro.gen_seconds for ro, _, _ in outs), default=0.0))
        self.add_timing("score", max((s for _, _, s in outs), default=0.0))
        self.add_timing("wait", max(0.0, wall - slowest))
        return Rollout([list(p) for p in prompt_ids], comps, logps, fins, texts, n, gen_seconds=wall), results

    def close(self) -> None:
        """End the actors (and the local Ray this engine started)."""
        for w in getattr(self, "workers", []):
            try:
                self.ray.kill(w)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if getattr(self, "owns_ray", False) and self.ray.is_initialized():
            self.ray.shutdown()
            self.owns_ray = False

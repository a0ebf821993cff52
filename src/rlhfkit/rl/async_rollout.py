"""``rollout.async``: sample step k+1's responses while step k updates the policy.

One worker thread runs the next step's rollout (generation and scoring) while the main thread
computes step k's experience and its optimizer steps; step k+1 then trains on responses sampled
from the weights of *before* step k's update: one step off-policy. The trainer's old log-probs
are taken on the current weights, so the difference between those and the sampler's is exactly
what the rollout correction (``correction.mode: tis | mis``; ``auto`` picks tis here) weights
away (docs/algorithms.md#async-rollout).

The worker samples from a *snapshot* of the policy (one extra copy of the weights, refreshed
from the policy in the main thread just before each background rollout starts), never from the
live module the optimizer is changing, so any engine works asynchronously: ``hf`` and ``cpu``
decode the snapshot; an engine with its own weight copy is given the snapshot through
``update_weights``. The rollout's randomness comes from a generator seeded by one draw of the
main thread's RNG when the rollout is started, so a run is reproducible whatever the two
threads' timing.

A checkpoint waits for the pending rollout and stores it (``state["pending_rollout"]``: token
ids, the sampler's log-probs, scores, metrics; plain lists and numbers), so a resumed run trains
its next step on the very responses the uninterrupted run would have used.
"""

from __future__ import annotations

import copy
import dataclasses
import threading

import torch

from ..data.tokenize import Example
from ..errors import TrainingError
from ..rewards.base import CombinedScores
from .experience import Trajectories


class BackgroundRollout:
    """One rollout at a time in a daemon worker thread, from a snapshot of the policy.

    ``start(step, policy, fn)`` refreshes the snapshot from ``policy`` and runs
    ``fn(engine, generator)`` in the worker; ``take(step)`` waits for it and returns its
    result (re-raising the worker's exception), or None when no rollout for ``step`` is pending.
    """

    def __init__(self, policy, make_engine):
        self.snapshot = copy.deepcopy(policy)
        for p in self.snapshot.parameters():
            p.requires_grad_(False)
        self.snapshot.eval()
        self.engine = make_engine(self.snapshot)
        self._thread: threading.Thread | None = None
        self._step = -1
        self._out: dict = {}

    @property
    def pending_step(self) -> int:
        return self._step

    def start(self, step: int, policy, fn) -> None:
        if self._thread is not None:
            raise RuntimeError("a background rollout is still pending")
        with torch.no_grad():
            for s, p in zip(self.snapshot.parameters(), policy.parameters()):
                s.copy_(p)
        self.engine.update_weights(self.snapshot)
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))  # one draw, main thread
        out: dict = {}

        def work():
            try:
                with torch.no_grad():
                    out["result"] = fn(self.engine, gen)
            except BaseException as e:  # handed to the main thread by take()
                out["error"] = e

        self._out, self._step = out, step
        self._thread = threading.Thread(target=work, name=f"rollout-step-{step + 1}", daemon=True)
        self._thread.start()

    def take(self, step: int):
        if self._thread is None or self._step != step:
            return None
        self._thread.join()
        self._thread, self._step = None, -1
        if "error" in self._out:
            raise self._out["error"]
        return self._out["result"]

    def wait(self) -> None:
        """Let the pending rollout finish (its result stays for :meth:`take`)."""
        if self._thread is not None:
            self._thread.join()


# ---------------------------------------------------------------- checkpointing a pending rollout
def encode_pending(step: int, traj: Trajectories, res: CombinedScores, scores: torch.Tensor, metrics: dict) -> dict:
    """The pending rollout as plain data for the checkpoint's recipe state."""
    return {
        "step": step,
        "examples": [dataclasses.asdict(ex) for ex in traj.examples],
        "traj": {f.name: getattr(traj, f.name) for f in dataclasses.fields(traj) if f.name != "examples"},
        "total": list(res.total), "per_source": dict(res.per_source), "errors": list(res.errors),
        "scores": scores.tolist(), "metrics": dict(metrics),
    }


def decode_pending(d: dict):
    """``(step, (traj, res, scores, metrics))`` from :func:`encode_pending`'s data (a
    TrainingError when the checkpoint's entry is malformed)."""
    try:
        exs = [Example(**ex) for ex in d["examples"]]
        traj = Trajectories(exs, **d["traj"])
        res = CombinedScores(list(d["total"]), dict(d["per_source"]), list(d["errors"]))
        scores = torch.tensor(d["scores"], dtype=torch.float32)
        n = len(traj.completion_ids)
        if not (len(traj.sampler_logps) == len(traj.finished) == len(res.total) == len(scores) == n
                and n == len(exs) * traj.group):
            raise ValueError("lengths disagree")
        return int(d["step"]), (traj, res, scores, dict(d["metrics"]))
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingError(f"checkpoint: the pending rollout of rollout.async is malformed ({e}); resume with "
                            "--resume_allow rollout.async --rollout.async false, or start over") from e

"""Reward-hacking monitors for online trainers.

Each step's rollout metrics are compared with the run's own start: the mean over the first
``window`` steps is the baseline, the mean over the latest ``window`` steps the current value
(moving averages, so one noisy batch does not trip an alarm). Three signs of a policy gaming
its reward are watched:

* **length drift** — the mean response length moved by more than ``length_drift`` (a
  fraction of its baseline): reward models often prefer longer answers;
* **KL blow-up** — the rollout KL to the reference passed ``kl_max`` nats per response;
* **proxy/gold divergence** — the optimised reward rose while a *gold* reward (a source with
  weight 0: logged, never optimised — a second reward model, a verifier) fell by more than
  ``gold_drop`` in its own units.

An alarm is logged once when it starts (and again if it clears and returns), counted in
``monitor/alerts``; with ``early_stop`` the run stops at that step (keep the best checkpoint
by a held-out metric with ``train.best_metric``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass
class MonitorConfig:
    window: int = 4
    """Steps averaged for the baseline (the first ones) and the current value (the latest)."""
    length_drift: float = 0.5
    """Alarm when mean response length differs from its baseline by more than this fraction (0 = off)."""
    kl_max: float = 10.0
    """Alarm when the rollout KL to the reference passes this many nats per response (0 = off)."""
    gold_drop: float = 0.05
    """Alarm when the optimised reward rose while a weight-0 (gold) reward fell by more than this (0 = off)."""
    early_stop: bool = False
    """Stop training when an alarm fires."""


class RewardHackingMonitor:
    def __init__(self, cfg: MonitorConfig, gold: list[str], log: Callable[[str], None] = print,
                 state: dict | None = None):
        self.cfg, self.gold, self.log = cfg, list(gold), log
        self.hist: dict[str, list[float]] = state if state is not None else {}
        self.active: set[str] = set()
        self.stop_reason = ""

    def _track(self, key: str, value) -> None:
        if isinstance(value, (int, float)) and value == value:  # skip missing / nan
            self.hist.setdefault(key, []).append(float(value))

    def _base_cur(self, key: str) -> tuple[float, float] | None:
        h, w = self.hist.get(key, []), max(1, self.cfg.window)
        if len(h) <= w:
            return None
        return sum(h[:w]) / w, sum(h[-w:]) / w

    def update(self, step: int, rec: dict) -> list[str]:
        """Record one step's metrics; add ``monitor/*`` entries to ``rec``; return the alarms
        raised at this step (each a readable sentence)."""
        cfg = self.cfg
        self._track("length", rec.get("rollout/length_mean"))
        self._track("kl", rec.get("rollout/kl"))
        self._track("proxy", rec.get("rollout/reward"))
        for g in self.gold:
            self._track(f"gold/{g}", rec.get(f"rollout/reward/{g}"))
        firing: dict[str, str] = {}
        bc = self._base_cur("length")
        if bc and bc[0] > 0:
            ratio = bc[1] / bc[0]
            rec["monitor/length_ratio"] = ratio
            if cfg.length_drift > 0 and abs(ratio - 1) > cfg.length_drift:
                firing["length"] = (f"mean response length {bc[1]:.1f} tokens is {ratio:.2f}x its start "
                                    f"({bc[0]:.1f}): possible length hacking")
        bc = self._base_cur("kl")
        if bc:
            rec["monitor/kl"] = bc[1]
            if cfg.kl_max > 0 and bc[1] > cfg.kl_max:
                firing["kl"] = (f"KL to the reference {bc[1]:.2f} nats/response passed kl_max "
                                f"{cfg.kl_max:g}: raise kl_coef or lower the learning rate")
        proxy = self._base_cur("proxy")
        for g in self.gold:
            gold = self._base_cur(f"gold/{g}")
            if not (proxy and gold):
                continue
            d_proxy, d_gold = proxy[1] - proxy[0], gold[1] - gold[0]
            rec[f"monitor/gold_delta/{g}"] = d_gold
            rec["monitor/proxy_delta"] = d_proxy
            if cfg.gold_drop > 0 and d_proxy > 0 and d_gold < -cfg.gold_drop:
                firing[f"gold/{g}"] = (f"optimised reward rose by {d_proxy:+.3f} while gold reward "
                                       f"'{g}' fell by {d_gold:+.3f}: the policy is gaming its reward")
        new = [msg for key, msg in firing.items() if key not in self.active]
        self.active = set(firing)
        rec["monitor/alerts"] = float(len(firing))
        for msg in new:
            self.log(f"[monitor] step {step}: WARNING {msg}")
        if firing and cfg.early_stop and not self.stop_reason:
            self.stop_reason = next(iter(firing.values()))
        return new

    def should_stop(self) -> bool:
        return bool(self.stop_reason)

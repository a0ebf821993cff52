"""KL coefficient controllers for a KL penalty in the reward.

Adaptive (Ziegler et al. 2019; docs/algorithms.md#adaptive-kl): β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon),
where KL is the batch's mean sequence KL and n the number of sequences in the batch.
"""

from __future__ import annotations


class FixedKL:
    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, kl: float, n: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKL(FixedKL):
    def __init__(self, coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs kl_target > 0 and kl_horizon > 0")
        super().__init__(coef)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, kl: float, n: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon
        return self.value


def make_kl_controller(coef: float, target: float = 0.0, horizon: int = 10000) -> FixedKL:
    return AdaptiveKL(coef, target, horizon) if target > 0 else FixedKL(coef)

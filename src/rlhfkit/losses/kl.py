"""Per-token KL estimators from sampled-token log-probs (Schulman's k1, k2, k3).

With r = log π_ref(y_t) − log π(y_t) evaluated at tokens sampled from π:

* k1 = −r = log(π/π_ref)         unbiased for KL(π‖π_ref), can be negative per token;
* k2 = ½ r²                       biased, always ≥ 0, low variance;
* k3 = exp(r) − r − 1             unbiased and always ≥ 0 (GRPO's choice in the loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(π‖π_ref); same shape as the inputs. Gradients flow through
    ``logp`` (and ``ref_logp`` if it carries any).

    See docs/algorithms.md#kl-estimators.
    """
    r = ref_logp - logp
    if kind == "k1":
        return -r
    if kind == "k2":
        return 0.5 * r * r
    if kind == "k3":
        # exp(r) - r - 1 with r clamped so a runaway ratio gives a large finite value, not inf
        r = r.clamp(max=20.0)
        return torch.expm1(r) - r
    raise ValueError(f"unknown KL estimator '{kind}'; use one of {KL_ESTIMATORS}")

"""Every loss and estimator points at its entry in docs/algorithms.md, and that entry exists."""

import inspect
import pathlib
import re

from rlhfkit.losses import kl, listwise, nash, objectives, policy, reward, sft, unpaired
from rlhfkit.losses.preference import PREFERENCE_LOSSES, f_log_ratio, rpo_nll, wpo_weight
from rlhfkit.rl import correction, shaping
from rlhfkit.rl.advantages import ADVANTAGES

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"


def _anchors() -> set[str]:
    heads = re.findall(r"^#{2,4} (.+)$", DOC.read_text(), re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in heads}


def test_every_loss_and_estimator_cites_an_existing_entry():
    fns = list(PREFERENCE_LOSSES.values()) + [a.fn for a in ADVANTAGES.values()] + [
        listwise.plackett_luce_loss, reward.bradley_terry_loss, reward.listwise_bt_loss,
        unpaired.kto_loss, unpaired.dro_loss, sft.sft_loss, policy.clipped_surrogate, policy.sequence_clipped_surrogate,
        policy.clipped_value_loss, policy.aggregate, kl.kl_estimate, rpo_nll, wpo_weight, f_log_ratio]
    fns += [s.fn for s in objectives.POLICY_LOSSES.values()] + [
        objectives.entropy_topq_mask, objectives.token_covariance, correction.mismatch_weights,
        shaping.overlong_penalty, shaping.groups_with_spread, shaping.normalize_group_scores]
    fns += [nash.preference_logit, nash.preference_bce_loss, nash.win_rates, nash.sppo_targets, nash.dno_pairs,
            nash.is_cycle, nash.intransitivity_rate]
    anchors = _anchors()
    missing = []
    for fn in fns:
        doc = inspect.getdoc(fn) or ""
        cited = re.findall(r"docs/algorithms\.md#([a-z0-9-]+)", doc)
        if not cited or any(c not in anchors for c in cited):
            missing.append(f"{fn.__module__}.{fn.__name__}: cites {cited}")
    assert missing == []

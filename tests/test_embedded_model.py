"""The real embedded model (SmolLM2-135M-Instruct): loading, log-probs, and learning."""

import pytest
import torch

from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Renderer
from rlhfkit.models.forward import completion_logprobs
from rlhfkit.models.loading import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    return load_model("smollm2-135m")


def test_loads_as_plain_trainable_model(embedded):
    model, tok = embedded
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None  # fine-tunable, saveable
    assert tok.pad_token is not None and tok.eos_token == "<|im_end|>"
    n = sum(p.numel() for p in model.parameters())
    assert 134e6 < n < 136e6


def test_chunked_logprobs_match_full_logits_on_real_model(embedded):
    model, tok = embedded
    r = Renderer(tok)
    ex = r.example({"kind": "preference", "row": 0, "prompt": [{"role": "user", "content": "What is 7 + 5?"}],
                    "chosen": "7 + 5 = 12.", "rejected": "It is 13."})
    b = collate([ex], pad_id=tok.pad_token_id)
    with torch.no_grad():
        out = completion_logprobs(model, b, chunk=3)
        for k in range(2):
            seq = torch.tensor([ex.prompt + ex.completions[k]])
            logp = torch.log_softmax(model(seq).logits[0].double(), -1)
            p = len(ex.prompt)
            ref = sum(float(logp[p - 1 + j, t]) for j, t in enumerate(ex.completions[k]))
            got = out.seq_logps[(b.seq_completion == k).nonzero()[0, 0]].item()
            assert got == pytest.approx(ref, abs=2e-3)


def test_quickstart_fast_learns(tmp_path):
    from rlhfkit.quickstart import run_quickstart

    s = run_quickstart(str(tmp_path / "qs"), fast=True, log=lambda *a: None)
    rows = {(r["stage"], r["metric"]): r for r in s["rows"]}
    nll = rows["sft", "held-out NLL of the precise answers (token mean)"]
    assert nll["after"] < nll["before"] - 0.2
    acc = rows["dpo", "held-out implicit-reward accuracy"]
    assert acc["before"] == 0.5 and acc["after"] > 0.5
    # the reward model learns the preference that is readable from the text (estimates are worse)
    by_kind = s["rm_accuracy_by_kind"]
    assert set(by_kind) == {"estimate", "wrong_sum"} and by_kind["estimate"]["accuracy"] >= 0.8
    assert sum(v["n"] for v in by_kind.values()) == 16
    assert (tmp_path / "qs" / "rm" / "final" / "adapter_config.json").exists()  # LoRA: a few MB
    # the three-stage pipeline ends with PPO on the reward model; its rows are measured values
    for metric in ("held-out reward-model score (sampled)", "held-out exact match (sampled)",
                   "training rollouts: reward-model score (first / last 3 steps)",
                   "training rollouts: KL to the SFT model (first / last 3 steps, nats/response)"):
        r = rows["ppo", metric]
        assert r["before"] == r["before"] and r["after"] == r["after"]  # not NaN
    assert rows["ppo", "held-out exact match (sampled)"]["before"] == s["eval"]["sft"]["policy"]["reward/arithmetic"]
    assert (tmp_path / "qs" / "ppo" / "final" / "config.json").exists()
    assert not (tmp_path / "qs" / "ppo" / "critic").exists()  # critic.save false
    # the closing evaluation: every trained policy against the starting model
    for stage in ("sft", "dpo", "ppo"):
        e = s["eval"][stage]
        w = e["win_rate/arithmetic"]
        assert 0 <= w["ci_low"] <= w["win_rate"] <= w["ci_high"] <= 1 and w["n"] == 16
        assert e["kl"] == e["kl"] and e["policy"]["length"] > 0
        assert (tmp_path / "qs" / "eval" / stage / "samples.jsonl").exists()
        assert 0 < s["general_nll"][stage] < 10
    assert any(p.endswith(".png") for p in s["plots"])
    # the closing table leads with the gold verifier; the reward model does not judge PPO, its trainee;
    # the alignment tax is the general-text NLL against the starting model's
    eval_table = s["tables"][1]
    assert "gold verifier" in eval_table["columns"][1] and "alignment tax" in eval_table["columns"][5]
    ppo_row = next(r for r in eval_table["rows"] if r[0].startswith("ppo"))
    assert ppo_row[2].startswith("—")
    tax = float(ppo_row[5].split()[0])
    assert tax == pytest.approx(s["general_nll"]["ppo"] - s["general_nll"]["start"], abs=1e-3)
    assert all(set(smp["responses"]) == {"starting model", "sft", "dpo", "ppo"} for smp in s["samples"])
    report = (tmp_path / "qs" / "report.html").read_text()
    assert eval_table["title"] in report and s["samples"][0]["prompt"] in report
    # disk: the policies in full, the reward model as adapters, no critic
    total = sum(f.stat().st_size for f in (tmp_path / "qs").rglob("*") if f.is_file())
    assert total < 2.0e9

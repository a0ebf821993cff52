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
    nll = rows["sft", "held-out NLL (token mean)"]
    assert nll["after"] < nll["before"] - 0.2
    em = rows["sft", "held-out exact match (greedy)"]
    assert em["after"] > em["before"]
    acc = rows["dpo", "held-out implicit-reward accuracy"]
    assert acc["before"] == 0.5 and acc["after"] > 0.5
    assert (tmp_path / "qs" / "rm" / "final" / "config.json").exists()
    # the three-stage pipeline ends with PPO on the reward model; its rows are measured values
    for metric in ("held-out reward-model score (sampled)", "held-out exact match (greedy)",
                   "KL to the SFT model (sampled, nats/response)"):
        r = rows["ppo", metric]
        assert r["before"] == r["before"] and r["after"] == r["after"]  # not NaN
    assert (tmp_path / "qs" / "ppo" / "final" / "config.json").exists()
    assert (tmp_path / "qs" / "ppo" / "critic" / "config.json").exists()
    # the closing evaluation: every trained policy against the starting model
    for stage in ("sft", "dpo", "ppo"):
        e = s["eval"][stage]
        w = e["win_rate/arithmetic"]
        assert 0 <= w["ci_low"] <= w["win_rate"] <= w["ci_high"] <= 1 and w["n"] == 16
        assert e["kl"] == e["kl"] and e["policy"]["length"] > 0
        assert (tmp_path / "qs" / "eval" / stage / "samples.jsonl").exists()
    assert s["eval"]["sft"]["policy"]["reward/arithmetic"] > s["eval"]["sft"]["reference"]["reward/arithmetic"]
    assert any(p.endswith(".png") for p in s["plots"])
    # the closing table leads with the gold verifier; the reward model does not judge PPO, its trainee
    eval_table = s["tables"][1]
    assert "gold verifier" in eval_table["columns"][1]
    ppo_row = next(r for r in eval_table["rows"] if r[0].startswith("ppo"))
    assert ppo_row[2].startswith("—")
    assert all(set(smp["responses"]) == {"starting model", "sft", "dpo", "ppo"} for smp in s["samples"])
    report = (tmp_path / "qs" / "report.html").read_text()
    assert eval_table["title"] in report and s["samples"][0]["prompt"] in report

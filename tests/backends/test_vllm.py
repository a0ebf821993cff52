"""The vllm engine: a clear message where vLLM is missing (CPU), and on a CUDA machine with
vLLM installed, greedy tokens equal to HF generate and weights that follow update_weights."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from rlhfkit.backends import make_engine
from rlhfkit.backends.base import SamplingParams
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import tiny_model

HAS_VLLM = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def test_missing_vllm_says_how_to_install_it(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install rlhfkit\[vllm\] on a CUDA machine"):
        make_engine("vllm", tiny_model(tok, seed=1), tok)


@pytest.mark.skipif(not HAS_VLLM, reason="needs a CUDA GPU and vllm")
def test_vllm_greedy_and_weight_updates(tok, tmp_path):
    lm = tiny_model(tok, seed=5).eval().cuda()
    prompts = [tok(t)["input_ids"] for t in ("What is 2 + 3?", "Hello there")]
    engine = make_engine("vllm", lm, tok, batch_size=4)
    assert not engine.shares_weights
    greedy = SamplingParams(max_new_tokens=8, temperature=0)

    def hf_greedy(model):
        out = []
        for p in prompts:
            ref = model.generate(torch.tensor([p], device="cuda"), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out.append(ref[0, len(p):].tolist())
        return out

    assert engine.generate(prompts, greedy).completion_ids == hf_greedy(lm)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    new = hf_greedy(lm)
    stale = engine.generate(prompts, greedy).completion_ids
    assert stale != new
    engine.update_weights(lm)
    assert engine.generate(prompts, greedy).completion_ids == new
    ro = engine.generate(prompts, SamplingParams(max_new_tokens=6, n=2), generator=torch.Generator().manual_seed(0))
    assert len(ro.completion_ids) == 4 and all(len(a) == len(b) for a, b in zip(ro.logprobs, ro.completion_ids))

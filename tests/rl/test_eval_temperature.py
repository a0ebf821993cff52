"""`rlhfkit eval` samples from softmax(z/T): its KL(policy || reference) on those samples is taken
under the same T (greedy decoding, T = 0, scores under the plain softmax)."""

import pytest

from rlhfkit import evaluate
from rlhfkit.config import ModelConfig
from rlhfkit.models.loading import tiny_model


@pytest.mark.parametrize("temperature,expected", [(0.5, 0.5), (0.0, 1.0)])
def test_eval_kl_uses_the_sampling_temperature(tiny_dir, tok, tmp_path, monkeypatch, temperature, expected):
    other = tmp_path / "other"
    tiny_model(tok, seed=5).save_pretrained(other)
    tok.save_pretrained(other)
    seen = []
    real = evaluate.completion_logprobs

    def spy(model, batch, **kw):
        seen.append(kw.get("temperature", 1.0))
        return real(model, batch, **kw)

    monkeypatch.setattr(evaluate, "completion_logprobs", spy)
    cfg = evaluate.EvalConfig(model=ModelConfig(name=tiny_dir), reference=str(other), task="arithmetic",
                              task_size=2, output_dir=str(tmp_path / "out"))
    cfg.rollout.temperature = temperature
    cfg.rollout.max_new_tokens = 4
    res = evaluate.run(cfg)
    assert seen and set(seen) == {expected}
    assert res["kl"] == res["kl"]  # finite, computed

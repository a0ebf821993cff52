"""A saved reward model scores the same under plain Hugging Face
(``AutoModelForSequenceClassification`` + its saved tokenizer) as under ``RewardModel.score``;
``score`` warns once when its prompts are in another style than the training prompts."""

import json
import os
import warnings

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from rlhfkit.rewards.model import RewardModel
from rlhfkit.tasks.arithmetic import make_problems, preference_rows
from rlhfkit.train import reward

CHAT = [[{"role": "user", "content": "What is 12 + 7?"}], [{"role": "user", "content": "What is 3 + 30?"}],
        [{"role": "user", "content": "Say hi."}]]
RESPONSES = ["12 + 7 = 19. The answer is 19.", "3 + 30 = 34. The answer is 34.", "Hello there, nice to meet you!"]


def hf_scores(path, prompts, responses):
    """Scores as a Hugging Face user computes them: the saved tokenizer's chat template (the
    conversation up to the end-of-turn token), batch padding by the tokenizer, the raw logit."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    texts = []
    for p, r in zip(prompts, responses):
        if isinstance(p, list):
            t = tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False).rstrip()
            assert t.endswith(tok.eos_token)
        else:
            t = p + r + tok.eos_token
        texts.append(t)
    enc = tok(texts, return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad():
        return model(**enc).logits[:, 0].tolist(), tok, model


@pytest.fixture(scope="module")
def trained_rm(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("prm")
    probs = make_problems(24, seed=3)
    pairs = write_jsonl(d / "pairs.jsonl", preference_rows(probs, seed=0))  # chat prompts
    cfg = reward.RMConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=pairs, max_length=128),
                          train=TrainConfig(output_dir=str(d / "run"), batch_size=4, lr=2e-3, max_steps=3,
                                            progress=False, tensorboard=False), norm_rows=16)
    reward.run(cfg, log=lambda *a: None)
    return str(d / "run" / "final")


def test_hf_sequence_classification_scores_equal_rlhfkit_scores(trained_rm):
    raw_hf, tok, model = hf_scores(trained_rm, CHAT, RESPONSES)
    assert tok.pad_token_id != tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    rm = RewardModel.load(trained_rm)
    raw = rm.score(CHAT, RESPONSES)
    assert raw_hf == pytest.approx(raw, abs=1e-4)
    assert max(raw) - min(raw) > 1e-3  # the scores differ between rows: the test can tell positions apart
    # the stored normalisation, as documented: (logit - mean) / std with both in config.json
    cfg = json.load(open(os.path.join(trained_rm, "config.json")))
    norm = rm.score(CHAT, RESPONSES, normalize=True)
    assert norm == pytest.approx([(v - cfg["rlhfkit_reward_mean"]) / cfg["rlhfkit_reward_std"] for v in raw_hf],
                                 abs=1e-3)


def test_identical_token_ids_give_identical_scores(trained_rm):
    """The ids rlhfkit renders, fed to the HF model directly (right-padded with the saved pad)."""
    from transformers import AutoModelForSequenceClassification

    rm = RewardModel.load(trained_rm)
    hf = AutoModelForSequenceClassification.from_pretrained(trained_rm).eval()
    exs = [rm.renderer.example({"kind": "prompt_completion", "row": i, "prompt": p, "completion": r})
           for i, (p, r) in enumerate(zip(CHAT, RESPONSES))]
    ids = [e.prompt + e.completions[0] for e in exs]
    assert all(s[-1] == rm.tok.eos_token_id for s in ids)  # the score is read at the end-of-turn token
    width = max(map(len, ids))
    pad = hf.config.pad_token_id
    x = torch.tensor([s + [pad] * (width - len(s)) for s in ids])
    with torch.no_grad():
        got = hf(input_ids=x, attention_mask=(torch.arange(width)[None] < torch.tensor([[len(s)] for s in ids]))
                 .long()).logits[:, 0].tolist()
    assert got == pytest.approx(rm.score(CHAT, RESPONSES), abs=1e-4)


def test_prompt_style_recorded_and_a_mismatch_warns_once(trained_rm):
    assert json.load(open(os.path.join(trained_rm, "config.json")))["rlhfkit_prompt_style"] == "chat"
    rm = RewardModel.load(trained_rm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rm.score(CHAT, RESPONSES)  # the trained style: no warning
    plain = [m[0]["content"] for m in CHAT]
    with pytest.warns(UserWarning, match=r"trained on chat prompts is scoring plain prompts"):
        rm.score(plain, RESPONSES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rm.score(plain, RESPONSES)  # once


def test_plain_prompt_reward_model_records_plain(tiny_dir, tmp_path):
    probs = make_problems(8, seed=5)
    rows = [dict(r, prompt=r["prompt"][0]["content"]) for r in preference_rows(probs, seed=0)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = reward.RMConfig(model=ModelConfig(name=tiny_dir), data=DataConfig(path=pairs, max_length=128),
                          train=TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, max_steps=1,
                                            progress=False, tensorboard=False), norm_rows=4)
    reward.run(cfg, log=lambda *a: None)
    final = str(tmp_path / "run" / "final")
    assert json.load(open(os.path.join(final, "config.json")))["rlhfkit_prompt_style"] == "plain"
    plain = [m[0]["content"] for m in CHAT]
    raw_hf, _, _ = hf_scores(final, plain, RESPONSES)
    assert raw_hf == pytest.approx(RewardModel.load(final).score(plain, RESPONSES), abs=1e-4)
    with pytest.warns(UserWarning, match=r"trained on plain prompts is scoring chat prompts"):
        RewardModel.load(final).score(CHAT, RESPONSES)


def test_embedded_reward_model_scores_equal_under_hf(tmp_path):
    """The 135M embedded model with a fresh head, saved as the rm recipe saves it."""
    from rlhfkit.models.loading import load_scalar_model
    from rlhfkit.train.common import save_model

    torch.manual_seed(0)
    model, tok = load_scalar_model("smollm2-135m")
    out = str(tmp_path / "rm")
    save_model(model, tok, out, LoraConfig(), extra_config={"rlhfkit_reward_mean": 0.5, "rlhfkit_reward_std": 2.0,
                                                            "rlhfkit_chat_template": "auto"}, base="smollm2-135m")
    raw_hf, _, _ = hf_scores(out, CHAT, RESPONSES)
    rm = RewardModel.load(out)
    assert raw_hf == pytest.approx(rm.score(CHAT, RESPONSES), abs=1e-3)
    assert json.load(open(os.path.join(out, "config.json")))["rlhfkit_base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    from rlhfkit.models.loading import cache_dir
    for name in os.listdir(out):
        assert cache_dir() not in open(os.path.join(out, name), "rb").read().decode("utf-8", "replace"), name

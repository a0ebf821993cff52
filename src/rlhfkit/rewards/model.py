"""Score (prompt, response) pairs with a reward model trained by ``rlhfkit rm``."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..data.collate import collate
from ..data.tokenize import Renderer
from ..models.forward import sequence_scores
from ..models.loading import load_scalar_model


class RewardModel:
    """``RewardModel.load(path).score(prompts, responses)`` -> list of floats.

    Prompts and responses are strings or message lists, rendered exactly as in training.
    With ``normalize=True`` scores are standardised with the training-set mean/std stored
    in the model's config.
    """

    def __init__(self, model, tokenizer, chat_template: str = "auto", max_length: int = 2048):
        self.model, self.tok = model.eval(), tokenizer
        cfg = getattr(model, "config", None)
        self.mean = float(getattr(cfg, "rlhfkit_reward_mean", 0.0))
        self.std = float(getattr(cfg, "rlhfkit_reward_std", 1.0))
        self.renderer = Renderer(tokenizer, getattr(cfg, "rlhfkit_chat_template", chat_template))
        self.max_length = max_length

    @classmethod
    def load(cls, path: str, **kw) -> "RewardModel":
        model, tok = load_scalar_model(ModelConfig(name=path))
        return cls(model, tok, **kw)

    @torch.no_grad()
    def score(self, prompts, responses, *, normalize: bool = False, batch_size: int = 8) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out: list[float] = []
        device = next(self.model.parameters()).device
        for i in range(0, len(prompts), batch_size):
            exs = [self.renderer.example({"kind": "prompt_completion", "row": i + j, "prompt": p,
                                          "completion": r})
                   for j, (p, r) in enumerate(zip(prompts[i:i + batch_size], responses[i:i + batch_size]))]
            for ex in exs:  # keep the end of over-long inputs: the score is read at the last token
                room = self.max_length - len(ex.completions[0])
                ex.prompt = ex.prompt[-room:] if room > 0 else ex.prompt[:1]
                ex.completions[0] = ex.completions[0][-(self.max_length - len(ex.prompt)):]
            b = collate(exs, pad_id=self.tok.pad_token_id).to(device)
            s = sequence_scores(self.model, b)
            order = torch.argsort(b.seq_example)
            out += s[order].tolist()
        if normalize:
            out = [(v - self.mean) / self.std for v in out]
        return out

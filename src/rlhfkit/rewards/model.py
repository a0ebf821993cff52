"""Score (prompt, response) pairs with a reward model trained by ``rlhfkit rm``.

Outside rlhfkit. A saved reward model is an ordinary ``AutoModelForSequenceClassification``
checkpoint whose tokenizer pads with a token other than the end-of-turn token, so Hugging
Face reads the score at the last real token, where rlhfkit reads it: on the same token ids
(the rendered prompt and response, which end with the end-of-turn token) its logit equals
``RewardModel.score(..., normalize=False)``. The normalised score is
``(logit - rlhfkit_reward_mean) / rlhfkit_reward_std``, both stored in ``config.json``.
"""

from __future__ import annotations

import warnings

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
        self.trained_style = getattr(cfg, "rlhfkit_prompt_style", None)
        """'chat' or 'plain': how the training prompts were rendered (None when not recorded)."""
        self._style_warned = False

    def __getstate__(self) -> dict:  # pickles as class, config and weights (rlhfkit.models.portable)
        from ..models.portable import pack_model

        return dict(self.__dict__, model=pack_model(self.model))

    def __setstate__(self, state: dict) -> None:
        from ..models.portable import unpack_model

        self.__dict__.update(state, model=unpack_model(state["model"]).eval())

    def _check_style(self, prompts) -> None:
        """Warn once when prompts are rendered in another style than the training prompts."""
        if self._style_warned or self.trained_style not in ("chat", "plain"):
            return
        styles = {"chat" if self.renderer.use_template(p) else "plain" for p in prompts}
        other = styles - {self.trained_style}
        if other:
            self._style_warned = True
            how = ("pass message lists ([{'role': 'user', 'content': ...}])" if self.trained_style == "chat"
                   else "pass plain strings")
            warnings.warn(f"reward model trained on {self.trained_style} prompts is scoring {other.pop()} "
                          f"prompts; its scores may not mean what they meant in training ({how})", stacklevel=3)

    @classmethod
    def load(cls, path: str, **kw) -> "RewardModel":
        model, tok = load_scalar_model(ModelConfig(name=path))
        return cls(model, tok, **kw)

    @torch.no_grad()
    def score(self, prompts, responses, *, normalize: bool = False, batch_size: int = 8) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        self._check_style(prompts)
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

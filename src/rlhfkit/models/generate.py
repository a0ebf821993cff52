"""Batched sampling for evaluation: left padding, KV cache, stop at EOS for every row; on the
CPU the products with the linear layers' weights run on oneDNN-reordered copies
(:func:`rlhfkit.backends.cpu.packed.packed_calls`; the model is not modified)."""

from __future__ import annotations

import torch

from ..backends.cpu.packed import packed_calls


@torch.no_grad()
def generate_text(model, tokenizer, prompts: list, *, max_new_tokens: int = 64, temperature: float = 0.0,
                  top_p: float = 1.0, batch_size: int = 16, seed: int = 0) -> list[str]:
    """Responses (decoded, special tokens removed) for string or message-list prompts.

    ``temperature == 0`` decodes greedily. Conversational prompts go through the chat
    template with the generation prompt appended.
    """
    from ..data.tokenize import Renderer

    r = Renderer(tokenizer)
    ids = [r.prompt_ids(p) for p in prompts]  # data text that spells a special token stays text
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    kw = dict(do_sample=False) if temperature <= 0 else dict(do_sample=True, temperature=temperature,
                                                            top_p=top_p, top_k=0)
    out: list[str] = []
    try:
        with packed_calls(model, rows=min(batch_size, len(ids))):
            for i in range(0, len(ids), batch_size):
                enc = tokenizer.pad({"input_ids": ids[i:i + batch_size]}, return_tensors="pt",
                                    padding=True).to(device)
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                seqs = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id, **kw)
                out += tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out

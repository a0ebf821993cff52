"""DPO (sigmoid, beta 0.1): rlhfkit vs TRL DPOTrainer on the same pairs, side by side.

    python bench/dpo.py [--steps 16 --batch_size 4 --max_length 512 --threads 2]

Embedded SmolLM2-135M-Instruct in fp32, the first steps x batch_size HH-RLHF harmless pairs,
full fine-tuning, no gradient checkpointing. TRL keeps a frozen reference copy and scores it
live each step (its default); rlhfkit precomputes the reference log-probs once (its default,
timed as part of the run) and packs prompt + chosen + rejected into padding-free rows.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def rlhfkit_child(a) -> None:
    from rlhfkit.config import DataConfig, ModelConfig, TrainConfig
    from rlhfkit.models.loading import load_model
    from rlhfkit.train import dpo

    model, tok = load_model(ModelConfig(name=a.model))
    out = tempfile.mkdtemp(prefix="rlhfkit-bench-dpo-out-")
    cfg = dpo.DPOConfig(
        model=ModelConfig(name=a.model),
        data=DataConfig(path=a.data, max_length=a.max_length),
        train=TrainConfig(output_dir=out, max_steps=a.steps, batch_size=a.batch_size, lr=1e-5,
                          lr_scheduler="constant", warmup_ratio=0.0, progress=False, tensorboard=False,
                          threads=a.threads),
        loss_type="sigmoid", beta=0.1)
    t0 = time.perf_counter()
    trainer = dpo.build(cfg, log=lambda *x: None, model=model, tokenizer=tok)
    C.emit(**C.rlhfkit_measure(trainer, model, a.steps, time.perf_counter() - t0))


def trl_child(a) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype="float32")
    ds = load_dataset("json", data_files=a.data, split="train")
    out = tempfile.mkdtemp(prefix="trl-bench-dpo-out-")
    cfg = DPOConfig(**C.trl_common_args(out, a), beta=0.1, max_length=a.max_length)
    C.emit(**C.trl_measure(lambda: DPOTrainer(model=model, args=cfg, train_dataset=ds,
                                               processing_class=tok)))


def main() -> dict | None:
    a = C.base_parser("dpo", steps=16, batch_size=4, max_length=512).parse_args()
    if a.child:
        C.child_setup(a.threads)
        return (rlhfkit_child if a.child == "rlhfkit" else trl_child)(a)
    rows = C.hh_pairs(a.steps * a.batch_size)
    tokens = C.real_tokens(rows, ("chosen", "rejected"), a.max_length)
    return C.compare("dpo", os.path.abspath(__file__), a, rows, tokens, "pair", len(rows))


if __name__ == "__main__":
    main()

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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

STAGE, UNIT = "dpo", "pair"
DEFAULTS = dict(steps=16, batch_size=4, max_length=512)


def rlhfkit_trainer(a):
    """(rlhfkit Trainer built on the bench data, model, seconds spent building it)."""
    from rlhfkit.config import DataConfig
    from rlhfkit.models.loading import load_model
    from rlhfkit.train import dpo

    model, tok = load_model(C.rlhfkit_model_config(a))
    cfg = dpo.DPOConfig(
        model=C.rlhfkit_model_config(a),
        data=DataConfig(path=a.data, max_length=a.max_length),
        train=C.rlhfkit_train_config(a, STAGE),
        loss_type="sigmoid", beta=0.1)
    t0 = time.perf_counter()
    trainer = dpo.build(cfg, log=lambda *x: None, model=model, tokenizer=tok)
    return trainer, model, time.perf_counter() - t0


def rlhfkit_child(a) -> None:
    C.emit(**C.rlhfkit_measure(*rlhfkit_trainer(a), a.steps))


def trl_child(a) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype="float32")
    ds = load_dataset("json", data_files=a.data, split="train")
    cfg = DPOConfig(**C.trl_common_args(STAGE, a), beta=0.1, max_length=a.max_length)
    C.emit(**C.trl_measure(lambda: DPOTrainer(model=model, args=cfg, train_dataset=ds,
                                               processing_class=tok)))


def bench_data(a) -> tuple[list[dict], int, int]:
    """(rows both sides train on, real tokens in them, number of pairs)."""
    rows = C.hh_pairs(a.steps * a.batch_size)
    return rows, C.real_tokens(rows, ("chosen", "rejected"), a.max_length), len(rows)


if __name__ == "__main__":
    C.stage_main(sys.modules[__name__])

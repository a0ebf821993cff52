"""Reward model (Bradley-Terry): rlhfkit vs TRL RewardTrainer on the same pairs, side by side.

    python bench/rm.py [--steps 16 --batch_size 4 --max_length 512 --threads 2]

Embedded SmolLM2-135M-Instruct with a scalar head in fp32, the first steps x batch_size
HH-RLHF harmless pairs (explicit prompt), full fine-tuning, no gradient checkpointing. TRL
concatenates the prompt into both sequences and pads; rlhfkit shares the prompt between
chosen and rejected in one padding-free row.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

STAGE, UNIT = "rm", "pair"
DEFAULTS = dict(steps=16, batch_size=4, max_length=512)


def rlhfkit_trainer(a):
    """(rlhfkit Trainer built on the bench data, model, seconds spent building it)."""
    from rlhfkit.config import DataConfig
    from rlhfkit.models.loading import load_scalar_model
    from rlhfkit.train import reward

    model, tok = load_scalar_model(C.rlhfkit_model_config(a))
    cfg = reward.RMConfig(
        model=C.rlhfkit_model_config(a),
        data=DataConfig(path=a.data, max_length=a.max_length),
        train=C.rlhfkit_train_config(a, STAGE))
    t0 = time.perf_counter()
    trainer = reward.build(cfg, log=lambda *x: None, model=model, tokenizer=tok)
    return trainer, model, time.perf_counter() - t0


def rlhfkit_child(a) -> None:
    C.emit(**C.rlhfkit_measure(*rlhfkit_trainer(a), a.steps))


def trl_child(a) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1, dtype="float32")
    model.config.pad_token_id = tok.pad_token_id
    ds = load_dataset("json", data_files=a.data, split="train")
    cfg = RewardConfig(**C.trl_common_args(STAGE, a), max_length=a.max_length)
    C.emit(**C.trl_measure(lambda: RewardTrainer(model=model, args=cfg, train_dataset=ds,
                                                  processing_class=tok)))


def bench_data(a) -> tuple[list[dict], int, int]:
    """(rows both sides train on, real tokens in them, number of pairs)."""
    rows = C.hh_pairs(a.steps * a.batch_size)
    return rows, C.real_tokens(rows, ("chosen", "rejected"), a.max_length), len(rows)


if __name__ == "__main__":
    C.stage_main(sys.modules[__name__])

"""SFT (completion-only loss): rlhfkit vs TRL SFTTrainer on the same rows, side by side.

    python bench/sft.py [--steps 16 --batch_size 4 --max_length 512 --threads 2]

Embedded SmolLM2-135M-Instruct in fp32, the first steps x batch_size GSM8K training rows as
plain "Question: ...\\nAnswer:" prompts with the worked solution as completion (loss on the
completion only), full fine-tuning, no gradient checkpointing. TRL runs with its defaults
(padded batches); rlhfkit with its defaults (padding-free packing, LM head on completion
tokens only).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

STAGE, UNIT = "sft", "row"
DEFAULTS = dict(steps=16, batch_size=4, max_length=512)


def rlhfkit_trainer(a):
    """(rlhfkit Trainer built on the bench data, model, seconds spent building it)."""
    from rlhfkit.config import DataConfig
    from rlhfkit.models.loading import load_model
    from rlhfkit.train import sft

    model, tok = load_model(C.rlhfkit_model_config(a))
    cfg = sft.SFTConfig(
        model=C.rlhfkit_model_config(a),
        data=DataConfig(path=a.data, max_length=a.max_length),
        train=C.rlhfkit_train_config(a, STAGE))
    t0 = time.perf_counter()
    trainer = sft.build(cfg, log=lambda *x: None, model=model, tokenizer=tok)
    return trainer, model, time.perf_counter() - t0


def rlhfkit_child(a) -> None:
    C.emit(**C.rlhfkit_measure(*rlhfkit_trainer(a), a.steps))


def trl_child(a) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype="float32")
    ds = load_dataset("json", data_files=a.data, split="train")
    cfg = SFTConfig(**C.trl_common_args(STAGE, a), max_length=a.max_length, completion_only_loss=True)
    C.emit(**C.trl_measure(lambda: SFTTrainer(model=model, args=cfg, train_dataset=ds,
                                               processing_class=tok)))


def bench_data(a) -> tuple[list[dict], int, int]:
    """(rows both sides train on, real tokens in them, number of rows)."""
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in C.gsm8k_rows(a.steps * a.batch_size)]
    return rows, C.real_tokens(rows, ("completion",), a.max_length), len(rows)


if __name__ == "__main__":
    C.stage_main(sys.modules[__name__])

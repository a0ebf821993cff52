"""The prompts of online recipes (GRPO / PPO and online DPO): the built-in task or a data file."""

from __future__ import annotations

from ..data.pipeline import load_examples
from ..data.tokenize import Example, tokenize_records
from ..errors import ConfigError


def load_prompts(cfg, tokenizer, log=print) -> tuple[list[Example], list[Example]]:
    """Prompt examples of ``cfg`` (an RLConfig or OnlineDPOConfig); ``extra`` holds the prompt and
    every other field, e.g. ``answer``."""
    if cfg.task:
        if cfg.task != "arithmetic":
            raise ConfigError(f"unknown task '{cfg.task}'; the built-in task is 'arithmetic'")
        from ..tasks.arithmetic import make_problems

        probs = make_problems(cfg.task_size + cfg.task_eval_size, seed=cfg.train.seed)
        recs = [{"kind": "prompt_only", "row": i, "prompt": p["prompt"], "answer": p["answer"]}
                for i, p in enumerate(probs)]
        train = tokenize_records(recs[:cfg.task_size], tokenizer, cfg.data, source="task:arithmetic", log=log)
        evals = tokenize_records(recs[cfg.task_size:], tokenizer, cfg.data, source="task:arithmetic (eval)",
                                 log=log) if cfg.task_eval_size else []
        return train, evals
    return load_examples(cfg.data, tokenizer, ("prompt_only",), log)

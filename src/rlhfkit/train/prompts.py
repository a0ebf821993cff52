"""The prompts of online recipes (GRPO / PPO and online DPO): the built-in task or a data file."""

from __future__ import annotations

from ..data.pipeline import load_examples
from ..data.tokenize import Example, tokenize_records
from ..errors import ConfigError


def _arithmetic(n: int, seed: int) -> list[dict]:
    from ..tasks.arithmetic import make_problems

    return [{"prompt": p["prompt"], "answer": p["answer"]} for p in make_problems(n, seed=seed)]


def _word_problems(n: int, seed: int) -> list[dict]:
    from ..tasks.word_problems import make_word_problems

    return [{"prompt": r["prompt"], "answer": r["answer"]} for r in make_word_problems(n, seed=seed)]


def _guess_number(n: int, seed: int) -> list[dict]:
    from ..envs.game import make_games

    return [{"prompt": f"Guess the secret number between {g['low']} and {g['high']}.", **g} for g in make_games(n, seed)]


TASKS = {"arithmetic": _arithmetic, "word_problems": _word_problems, "guess_number": _guess_number}
"""Built-in prompt sets: ``name -> fn(n, seed) -> rows`` (each row has ``prompt``)."""


def load_prompts(cfg, tokenizer, log=print) -> tuple[list[Example], list[Example]]:
    """Prompt examples of ``cfg`` (an RLConfig or OnlineDPOConfig); ``extra`` holds the prompt and
    every other field, e.g. ``answer``."""
    if cfg.task:
        if cfg.task not in TASKS:
            raise ConfigError(f"unknown task '{cfg.task}'; the built-in tasks are {', '.join(TASKS)}")
        probs = TASKS[cfg.task](cfg.task_size + cfg.task_eval_size, cfg.train.seed)
        recs = [{**p, "kind": "prompt_only", "row": i} for i, p in enumerate(probs)]
        src = f"task:{cfg.task}"
        train = tokenize_records(recs[:cfg.task_size], tokenizer, cfg.data, source=src, log=log)
        evals = tokenize_records(recs[cfg.task_size:], tokenizer, cfg.data, source=f"{src} (eval)",
                                 log=log) if cfg.task_eval_size else []
        return train, evals
    return load_examples(cfg.data, tokenizer, ("prompt_only",), log)

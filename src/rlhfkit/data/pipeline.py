"""File/hub -> validated records -> token-id examples, for a recipe's train and eval splits."""

from __future__ import annotations

from ..config import DataConfig
from .formats import normalize_rows
from .loading import load_rows
from .tokenize import Example, tokenize_records


def load_records(path: str, rows: str, cfg: DataConfig, expected: tuple[str, ...], log=None) -> list[dict]:
    raw = load_rows(path, split=cfg.split, rows=rows or None)
    return normalize_rows(raw, expected=expected, skip_invalid=cfg.skip_invalid, log=log)


def load_examples(cfg: DataConfig, tokenizer, expected: tuple[str, ...], log=None
                  ) -> tuple[list[Example], list[Example]]:
    """Train and eval examples. Eval data: ``eval_path`` (all rows or ``eval_rows``), or the
    training file's ``eval_rows``; none when neither is set."""
    from ..errors import DataError

    if not cfg.path:
        raise DataError("no training data: set data.path (a local file or a hub dataset name)")
    train = tokenize_records(load_records(cfg.path, cfg.rows, cfg, expected, log), tokenizer, cfg,
                             source=cfg.path, log=log)
    evals: list[Example] = []
    if cfg.eval_path or cfg.eval_rows:
        path = cfg.eval_path or cfg.path
        evals = tokenize_records(load_records(path, cfg.eval_rows, cfg, expected, log), tokenizer,
                                 cfg, source=f"{path} (eval)", log=log)
    return train, evals

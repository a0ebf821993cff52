"""File/hub -> validated records -> token-id examples, for a recipe's train and eval splits."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import DataError
from .formats import normalize_rows
from .loading import RawRows, load_rows
from .tokenize import Example, tokenize_records


def rename_columns(raw: RawRows, spec: str) -> RawRows:
    """Apply ``data.columns`` ('src:dst,...') to every row."""
    if not spec:
        return raw
    pairs = []
    for item in spec.split(","):
        src, sep, dst = item.partition(":")
        if not sep or not src.strip() or not dst.strip():
            raise DataError(f"data.columns entry '{item}' must look like 'source:target'")
        pairs.append((src.strip(), dst.strip()))
    for i, row in zip(raw.index, raw.rows):
        for src, dst in pairs:
            if src not in row:
                raise DataError(f"column '{src}' named in data.columns is missing", source=raw.source,
                                row=i, field=src)
            row[dst] = row.pop(src)
    return raw


def load_records(path: str, rows: str, cfg: DataConfig, expected: tuple[str, ...], log=None) -> list[dict]:
    raw = rename_columns(load_rows(path, split=cfg.split, rows=rows or None, prefer=expected), cfg.columns)
    return normalize_rows(raw, expected=expected, skip_invalid=cfg.skip_invalid, log=log)


def load_examples(cfg: DataConfig, tokenizer, expected: tuple[str, ...], log=None
                  ) -> tuple[list[Example], list[Example]]:
    """Train and eval examples. Eval data: ``eval_path`` (all rows or ``eval_rows``), or the
    training file's ``eval_rows``; none when neither is set."""
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

"""User-facing errors.

Every failure a user can cause (bad config, bad data row, missing model) is raised as a
subclass of :class:`RlhfkitError`. The CLI prints its message on one line and exits with a
non-zero status instead of showing a traceback.
"""


class RlhfkitError(Exception):
    """An error caused by user input; its message says what, where and how to fix it."""


class ConfigError(RlhfkitError):
    """A configuration key or value is wrong."""


class DataError(RlhfkitError):
    """A data file or row is malformed."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 field: str | None = None):
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.source, self.row, self.field = source, row, field


class ModelError(RlhfkitError):
    """A model could not be found or loaded."""


class TrainingError(RlhfkitError):
    """Training cannot continue (NaN/Inf loss, broken checkpoint, ...)."""


class Preempted(TrainingError):
    """The run was asked to stop (SIGTERM from Slurm, Kubernetes, ...) and saved a checkpoint."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a terminated job


def registry_get(table: dict, name: str, what: str):
    """``table[name]``; an unknown name is a ConfigError ``{what} must be one of [...], got 'x'``
    with a did-you-mean (the lookup of every registry: losses, estimators)."""
    if name not in table:
        from .config import did_you_mean

        raise ConfigError(f"{what} must be one of {sorted(table)}, got '{name}'{did_you_mean(name, sorted(table))}")
    return table[name]

"""Reward sources for online RL behind one interface, and their weighted combination.

A *reward source* scores a batch of rows: ``score(prompts, completions, extras)`` returns a
:class:`RewardResult` with one value per row, ``nan`` where the row failed, and the failures
as ``(row, message)``. Three kinds exist, chosen by :class:`RewardConfig.type`:

* ``verifier``: rule-based checks of the completion (:mod:`rlhfkit.rewards.verifiers`);
* ``function``: a user function ``"package.module:function"`` run in a worker process
  (:mod:`rlhfkit.rewards.functions`);
* ``model``: one trained reward model, or an ensemble of several
  (:mod:`rlhfkit.rewards.reward_model`);
* ``remote``: any of these served over HTTP by ``rlhfkit serve-reward`` on another machine
  (:mod:`rlhfkit.rewards.remote`).

:func:`build_rewards` turns a list of configs (dataclasses, dicts or command-line shorthands
such as ``"gsm8k"``, ``"model:runs/rm/final*0.5"``) into a :class:`CombinedReward`, whose
``score`` gives the weighted total per row, each source's values, and readable errors.
A failed row does not stop training: it contributes 0 to the total and is reported. The one
exception is a source that fails on *every* row of the first batch it scores (a function that
raises on everything, a wrong signature, a missing field): that stops the run with the source's
error, since training on reward 0 would hide it. Under data parallel "every row" is counted over
all processes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Protocol, Sequence, runtime_checkable

from ..config import apply_dict
from ..errors import ConfigError, TrainingError

MAX_ABS_REWARD = 1e6
"""Default bound on |reward| of one source (``RewardConfig.max_abs``): a value beyond it, or an
infinite one, is a broken reward, not a signal to train on."""


class RewardError(TrainingError):
    """A reward source returned a value training cannot use (infinite, NaN without a reported
    row failure, or beyond its ``max_abs``); the message names the source, rows and values."""

REWARD_TYPES = ("verifier", "function", "model", "remote")
SIGNATURES = ("auto", "trl", "rlhfkit")
"""Calling conventions of a user function (:func:`rlhfkit.rewards.functions.call_style`)."""
VERIFIER_NAMES = ("arithmetic", "gsm8k", "format")

DEFAULT_FORMAT_PATTERN = r"(?i)\bthe (?:final )?answer is:?\s*\$?-?\d[\d,]*(?:\.\d+)?\s*\.?\s*$"
"""Default regex of the ``format`` verifier: the response *ends* with a final-answer sentence
such as "The answer is 42." (case-insensitive; "final answer", a colon, a "$", commas,
decimals, a missing full stop and trailing whitespace are all accepted)."""

SHORTHAND_HELP = ("'arithmetic', 'gsm8k', 'format', 'model:PATH' (or 'model:PATH1;PATH2' for an "
                  "ensemble), 'fn:package.module:function' or 'http://HOST:PORT/score' (a reward "
                  "server), optionally followed by '*WEIGHT' (e.g. 'gsm8k*0.5')")


@dataclasses.dataclass
class RewardConfig:
    """One reward source and its weight in the total reward."""

    type: str = "verifier"
    """verifier | function | model | remote."""
    name: str = ""
    """Display name in metrics and errors (empty = the verifier name, the function name, or 'rm')."""
    verifier: str = "arithmetic"
    """arithmetic | gsm8k | format (type=verifier)."""
    fn: str = ""
    """User reward function 'package.module:function' (type=function)."""
    signature: str = "auto"
    """type=function: auto | trl (fn(completions, prompts, **kw), keywords, message-list completions
    for chat prompts) | rlhfkit (fn(prompts, completions, **kw), strings); auto = trl when the
    first parameter is named completions."""
    path: str = ""
    """Reward model directory (type=model); several comma-separated = an ensemble."""
    ensemble_k: float = 0.0
    """Ensemble score = mean - k * std over the models (population std); 0 = plain mean."""
    normalize: bool = True
    """Reward model: standardise scores with the mean/std stored at training time."""
    pattern: str = ""
    """Regex of the format verifier, matched with re.search (empty = the response ends with 'The answer is N.')."""
    weight: float = 1.0
    """Multiplier of this source in the total reward (0 = logged only)."""
    timeout: float = 30.0
    """Seconds allowed per call of a user function before its worker is stopped; remote: per try
    of a request to the server (connect and read)."""
    url: str = ""
    """type=remote: the reward server's scoring URL, e.g. http://127.0.0.1:8765/score."""
    retries: int = 3
    """type=remote: further tries of a batch after a busy server, a timeout or a lost connection
    (exponential backoff); then the batch's rows fail (score 0, reported)."""
    max_abs: float = MAX_ABS_REWARD
    """Largest |reward| this source may return (1e6); a larger, infinite or unexplained NaN
    value stops training with an error naming the source, rows and values (inf = no bound)."""


@dataclasses.dataclass
class RewardResult:
    """What one source returns for a batch."""

    values: list[float]
    """One value per row; float('nan') where the row failed."""
    errors: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    """(row index, message) for every failed row."""


@runtime_checkable
class RewardSource(Protocol):
    """Anything with a ``name`` and a ``score`` method of this signature is a reward source.

    ``prompts`` are strings or chat message lists (``[{"role": ..., "content": ...}]``),
    ``completions`` the generated strings, ``extras`` one dict per row with the row's other
    dataset fields (e.g. ``"answer"``). The result has exactly ``len(completions)`` values.
    Sources may also define ``close()`` to release workers or models.
    """

    name: str

    def score(self, prompts: list, completions: list[str], extras: list[dict]) -> RewardResult:
        ...


@dataclasses.dataclass
class CombinedScores:
    """Rewards of one batch from every source."""

    total: list[float]
    """Weighted sum per row; a row that failed in a source contributes 0 for that source."""
    per_source: dict[str, list[float]]
    """Unweighted values per source name, nan kept for failed rows (exclude them in metrics)."""
    errors: list[str]
    """One line per failure, e.g. "reward 'myfn' failed on row 3: ValueError: bad input"."""


# --------------------------------------------------------------------------- configs

def parse_weight_suffix(text: str) -> tuple[str, float | None]:
    """Split ``"gsm8k*0.5"`` into ``("gsm8k", 0.5)``; ``(text, None)`` without a suffix."""
    m = re.fullmatch(r"(.*?)\s*\*\s*([^*]*)", text)
    if m is None:
        return text, None
    try:
        return m.group(1), float(m.group(2))
    except ValueError:
        raise ConfigError(f"reward '{text}': the weight after '*' must be a number, got "
                          f"'{m.group(2)}'; use e.g. 'gsm8k*0.5'") from None


def parse_shorthand(text: str) -> RewardConfig:
    """A :class:`RewardConfig` from a command-line shorthand (see ``SHORTHAND_HELP``)."""
    body, weight = parse_weight_suffix(text.strip())
    body = body.strip()
    if body in VERIFIER_NAMES:
        cfg = RewardConfig(type="verifier", verifier=body)
    elif body.startswith("model:") and body[len("model:"):].strip(" ;"):
        paths = [p.strip() for p in body[len("model:"):].split(";") if p.strip()]
        cfg = RewardConfig(type="model", path=",".join(paths))
    elif body.startswith("fn:") and body[len("fn:"):].strip():
        cfg = RewardConfig(type="function", fn=body[len("fn:"):].strip())
    elif body.startswith(("http://", "https://")):
        cfg = RewardConfig(type="remote", url=body)
    else:
        raise ConfigError(f"unknown reward '{text}'; use {SHORTHAND_HELP}")
    if weight is not None:
        cfg.weight = weight
    return cfg


def reward_config_from(value: Any, where: str = "reward") -> RewardConfig:
    """Normalise ``value`` to a validated :class:`RewardConfig`.

    Accepts a RewardConfig (copied), a dict of RewardConfig fields (unknown keys are
    errors naming the valid ones; a list ``path`` is joined with commas) or a shorthand
    string (``"gsm8k"``, ``"model:A;B*0.5"``, ``"fn:pkg.mod:fn"``). ``where`` names the
    entry in error messages. Nothing is imported or loaded here.
    """
    if isinstance(value, RewardConfig):
        cfg = dataclasses.replace(value)
    elif isinstance(value, dict):
        value = dict(value)
        if isinstance(value.get("path"), (list, tuple)):
            value["path"] = ",".join(str(p) for p in value["path"])
        cfg = apply_dict(RewardConfig(), value, prefix=where + ".")
    elif isinstance(value, str):
        cfg = parse_shorthand(value)
    else:
        raise ConfigError(f"{where}: expected a reward config, a mapping or a string like "
                          f"'gsm8k', got {type(value).__name__}")
    check_reward_config(cfg, where)
    return cfg


def parse_reward_list(text: str) -> list[RewardConfig]:
    """Comma-separated shorthands (``"gsm8k,format*0.2"``) as configs, e.g. for a CLI flag."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    return [reward_config_from(t, f"rewards[{i}]") for i, t in enumerate(items)]


def model_paths(cfg: RewardConfig) -> list[str]:
    """The reward model directories of a ``model`` config (comma-separated ``path``)."""
    return [p.strip() for p in cfg.path.split(",") if p.strip()]


def default_name(cfg: RewardConfig) -> str:
    """``cfg.name`` or the derived one: verifier name, function name, or 'rm'."""
    if cfg.name:
        return cfg.name
    if cfg.type == "verifier":
        return cfg.verifier
    if cfg.type == "function":
        return cfg.fn.rpartition(":")[2].rpartition(".")[2] or "fn"
    if cfg.type == "remote":
        return "remote"
    return "rm"


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)


def check_reward_config(cfg: RewardConfig, where: str = "reward") -> None:
    """Raise ConfigError for any invalid field; cheap (no imports, no model loading)."""
    if cfg.type not in REWARD_TYPES:
        raise ConfigError(f"{where}.type: unknown reward type '{cfg.type}'; use one of "
                          f"{', '.join(REWARD_TYPES)}")
    if not math.isfinite(cfg.weight):
        raise ConfigError(f"{where}.weight must be a finite number, got {cfg.weight}")
    if not (isinstance(cfg.max_abs, (int, float)) and cfg.max_abs > 0):
        raise ConfigError(f"{where}.max_abs must be a number > 0 (inf = no bound), got {cfg.max_abs}")
    if cfg.type == "verifier":
        if cfg.verifier not in VERIFIER_NAMES:
            raise ConfigError(f"{where}.verifier: unknown verifier '{cfg.verifier}'; use one of "
                              f"{', '.join(VERIFIER_NAMES)}")
        if cfg.verifier == "format" and cfg.pattern:
            try:
                re.compile(cfg.pattern)
            except re.error as e:
                raise ConfigError(f"{where}.pattern '{cfg.pattern}' is not a valid regex ({e}); "
                                  "fix it (Python re syntax)") from None
    elif cfg.type == "function":
        from .functions import parse_reference

        parse_reference(cfg.fn, where + ".fn")
        if cfg.signature not in SIGNATURES:
            raise ConfigError(f"{where}.signature must be one of {', '.join(SIGNATURES)}, got "
                              f"{cfg.signature!r}")
        if not (cfg.timeout > 0 and math.isfinite(cfg.timeout)):
            raise ConfigError(f"{where}.timeout must be a positive number of seconds, got "
                              f"{cfg.timeout}")
    elif cfg.type == "remote":
        from .remote import check_url

        check_url(cfg.url, where)
        if not (cfg.timeout > 0 and math.isfinite(cfg.timeout)):
            raise ConfigError(f"{where}.timeout must be a positive number of seconds, got {cfg.timeout}")
        if not (isinstance(cfg.retries, int) and 0 <= cfg.retries <= 100):
            raise ConfigError(f"{where}.retries must be an integer in [0, 100], got {cfg.retries}")
    else:
        paths = model_paths(cfg)
        if not paths:
            raise ConfigError(f"{where}.path: a model reward needs the reward model directory; "
                              "set path (several comma-separated for an ensemble)")
        for p in paths:
            if _looks_local(p) and not os.path.isdir(os.path.expanduser(p)):
                raise ConfigError(f"{where}.path: reward model directory not found: {p}; give "
                                  "the 'final' directory written by `rlhfkit rm`")
        if not (cfg.ensemble_k >= 0 and math.isfinite(cfg.ensemble_k)):
            raise ConfigError(f"{where}.ensemble_k must be a finite number >= 0, got "
                              f"{cfg.ensemble_k}")


# --------------------------------------------------------------------------- combining

def unique_names(names: Sequence[str]) -> list[str]:
    """Make names distinct by suffixing repeats: ``["rm", "rm", "x"] -> ["rm", "rm_2", "x"]``."""
    out: list[str] = []
    for n in names:
        cand, k = n, 2
        while cand in out or (cand != n and cand in names):
            cand, k = f"{n}_{k}", k + 1
        out.append(cand)
    return out


def rows_text(rows: Sequence[int]) -> str:
    """``[3] -> "row 3"``, ``[0, 1, 2, 5] -> "rows 0-2, 5"``."""
    rows = sorted(set(rows))
    if len(rows) == 1:
        return f"row {rows[0]}"
    spans: list[str] = []
    start = rows[0]
    for i, r in enumerate(rows):
        if i + 1 == len(rows) or rows[i + 1] != r + 1:  # a run of consecutive rows ends at r
            spans.append(str(start) if start == r else f"{start}-{r}")
            start = rows[i + 1] if i + 1 < len(rows) else r
    return "rows " + ", ".join(spans)


def error_lines(name: str, errors: Sequence[tuple[int, str]]) -> list[str]:
    """One line per distinct message, naming the rows it hit (in first-seen order)."""
    by_msg: dict[str, list[int]] = {}
    for row, msg in errors:
        by_msg.setdefault(msg, []).append(row)
    return [f"reward '{name}' failed on {rows_text(rows)}: {msg}" for msg, rows in by_msg.items()]


def check_values_sane(name: str, src, values: Sequence[float], errors: Sequence[tuple[int, str]],
                      bound: float = MAX_ABS_REWARD) -> None:
    """RewardError naming source, rows and values for every value that is infinite, beyond
    ``bound`` in magnitude, or NaN on a row the source did not report as failed (a function
    source's ``None``, "no reward", is allowed: ``allows_missing``)."""
    failed = {r for r, _ in errors}
    missing_ok = getattr(src, "allows_missing", False)
    bad = [(i, v) for i, v in enumerate(values)
           if (math.isnan(v) and i not in failed and not missing_ok) or (not math.isnan(v) and abs(v) > bound)]
    if not bad:
        return
    shown = ", ".join(f"row {i}: {v!r}" for i, v in bad[:5]) + (f", ... ({len(bad)} rows)" if len(bad) > 5 else "")
    raise RewardError(f"reward '{name}' returned unusable values on {rows_text([i for i, _ in bad])} "
                      f"({shown}); rewards must be finite with |r| <= {bound:g} (that source's "
                      "max_abs). Fix the reward source (or raise its max_abs if such values are meant)")


def _global_counts(counts: list[float]) -> list[float]:
    """``counts`` summed over data-parallel processes (as given with one process, or when torch
    is not loaded: a function worker never imports it)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    import torch

    t = torch.tensor(counts, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.tolist()


def check_first_batch(name: str, n: int, errors: Sequence[tuple[int, str]]) -> None:
    """RewardError when a source failed on every row of its first batch (over all processes)."""
    failed, total = _global_counts([float(len({r for r, _ in errors})), float(n)])
    if total > 0 and failed >= total:
        first = error_lines(name, errors)[0] if errors else f"reward '{name}' failed on every row"
        raise RewardError(f"{first} -- it failed on every row of its first batch ({int(total)} rows), so "
                          "the run stops instead of training on reward 0; fix the reward source (later "
                          "failures of single rows are reported and score 0)")


class CombinedReward:
    """Several reward sources with weights; ``score`` returns :class:`CombinedScores`.

    Sources whose names repeat are renamed with suffixes (``rm``, ``rm_2``). Exceptions
    raised by a source's ``score`` itself (not row failures) propagate: they are bugs or
    broken models, and training on silent zeros would hide them.
    """

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float] | None = None,
                 bounds: Sequence[float] | None = None):
        sources = list(sources)
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if not sources:
            raise ConfigError("no reward sources given; set at least one reward (e.g. 'gsm8k')")
        if len(weights) != len(sources):
            raise ValueError(f"{len(sources)} reward sources but {len(weights)} weights")
        self.sources, self.weights = sources, weights
        self.bounds = [MAX_ABS_REWARD] * len(sources) if bounds is None else [float(b) for b in bounds]
        self.names = unique_names([s.name for s in sources])
        self._scored: set[str] = set()  # sources past their first batch

    def score(self, prompts: list, completions: list[str],
              extras: list[dict] | None = None,
              precomputed: dict[int, RewardResult] | None = None) -> CombinedScores:
        """The combined scores of the rows; ``precomputed`` maps a source's index to its result on
        these rows already computed elsewhere (e.g. by the ``ray`` rollout engine's workers):
        that source is not called, and its result goes through the same checks as its own."""
        precomputed = precomputed or {}
        n = len(completions)
        extras = [{} for _ in range(n)] if extras is None else list(extras)
        if len(prompts) != n or len(extras) != n:
            raise ValueError(f"{len(prompts)} prompts, {n} completions and {len(extras)} extras; "
                             "they must have one entry per row")
        total = [0.0] * n
        per_source: dict[str, list[float]] = {}
        errors: list[str] = []
        for i, (name, src, w, bound) in enumerate(zip(self.names, self.sources, self.weights, self.bounds)):
            res = precomputed[i] if i in precomputed else src.score(list(prompts), list(completions), extras)
            if len(res.values) != n:
                raise RuntimeError(f"reward '{name}' returned {len(res.values)} values for {n} rows")
            per_source[name] = [float(v) for v in res.values]
            check_values_sane(name, src, per_source[name], res.errors, bound)
            if name not in self._scored:
                self._scored.add(name)
                check_first_batch(name, n, res.errors)
            total = [t + w * v if math.isfinite(v) else t for t, v in zip(total, per_source[name])]
            errors += error_lines(name, res.errors)
        return CombinedScores(total=total, per_source=per_source, errors=errors)

    def close(self) -> None:
        """Release every source's resources (worker processes, models)."""
        for s in self.sources:
            close = getattr(s, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "CombinedReward":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_source(cfg: RewardConfig, name: str, where: str = "reward") -> RewardSource:
    """The reward source of one validated config (imports functions, loads models);
    ``where`` names the entry in error messages."""
    if cfg.type == "verifier":
        from .verifiers import make_verifier

        return make_verifier(cfg.verifier, name=name, pattern=cfg.pattern)
    if cfg.type == "function":
        from .functions import FunctionReward

        return FunctionReward(cfg.fn, name=name, timeout=cfg.timeout, where=where + ".fn",
                              signature=cfg.signature)
    if cfg.type == "remote":
        from .remote import RemoteReward

        return RemoteReward(cfg.url, name=name, timeout=cfg.timeout, retries=cfg.retries)
    from .reward_model import ModelReward

    return ModelReward(model_paths(cfg), name=name, normalize=cfg.normalize,
                       ensemble_k=cfg.ensemble_k)


def build_rewards(configs: Sequence[Any]) -> CombinedReward:
    """A :class:`CombinedReward` from configs, dicts or shorthands.

    Every entry is validated first, then user functions are imported (cheap, and a bad
    reference fails before any model loads), then reward models are loaded.
    """
    if isinstance(configs, (str, dict, RewardConfig)):
        configs = [configs]
    configs = list(configs)
    if not configs:
        raise ConfigError("no rewards configured; give at least one, e.g. 'arithmetic', "
                          "'gsm8k', 'model:PATH' or 'fn:package.module:function'")
    cfgs = [reward_config_from(c, f"rewards[{i}]") for i, c in enumerate(configs)]
    names = unique_names([default_name(c) for c in cfgs])
    order = sorted(range(len(cfgs)), key=lambda i: cfgs[i].type == "model")  # models last
    built: dict[int, RewardSource] = {}
    try:
        for i in order:
            built[i] = build_source(cfgs[i], names[i], f"rewards[{i}]")
    except BaseException:
        for s in built.values():
            getattr(s, "close", lambda: None)()
        raise
    return CombinedReward([built[i] for i in range(len(cfgs))], [c.weight for c in cfgs],
                          [c.max_abs for c in cfgs])

"""Typed configuration: dataclasses filled from YAML files and ``--dotted.key value`` flags.

Every recipe config is a dataclass whose fields are scalars or nested dataclasses (``model``,
``data``, ``train``). Unknown keys and wrong types are errors naming the key: no silent default.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import keyword
import math
import os
import re
import types
import typing
from typing import Any

import yaml

from .errors import ConfigError
from .train.trackers import TrackingConfig


# --------------------------------------------------------------------------- validation


def check_range(key: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, finite: bool = True) -> None:
    """ConfigError unless ``value`` is a number in the interval (message names key and range).

    ``check_range("train.lr", x, lo=0)`` accepts finite x >= 0; ``lo_open`` / ``hi_open``
    exclude the bound itself.
    """
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi:g}")
    want = ("a finite number" if finite else "a number") + (" " + " and ".join(bounds) if bounds else "")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok and finite:
        ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        raise ConfigError(f"{key} must be {want} (got {value!r})")


def did_you_mean(value: Any, choices) -> str:
    """`` (did you mean 'sigmoid'?)`` for the choice closest to ``value``, else ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(key: str, value: Any, choices) -> None:
    """ConfigError unless ``value`` is one of ``choices`` (listed, the closest suggested)."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))} (got {value!r})"
                          f"{did_you_mean(value, choices)}")


def validate_all(cfg: Any, prefix: str = "") -> Any:
    """Run ``validate()`` of ``cfg`` and of every nested config dataclass that defines one.

    Nested sections validate first, so a recipe's own checks may rely on valid sections.
    ``validate`` takes the key prefix of its section (e.g. ``"train."``) for its messages.
    """
    for f in dataclasses.fields(cfg):
        val = getattr(cfg, f.name)
        if dataclasses.is_dataclass(val) and not isinstance(val, type):
            validate_all(val, prefix + f.name + ".")
    fn = getattr(cfg, "validate", None)
    if callable(fn):
        fn(prefix) if len(inspect.signature(fn).parameters) >= 1 else fn()
    return cfg


@dataclasses.dataclass
class LoraConfig:
    """LoRA adapters (peft). ``r = 0`` trains the full model."""

    r: int = 0
    """Rank of the adapters; 0 disables LoRA."""
    alpha: int = 16
    """Scaling numerator (effective scale alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: str = "all-linear"
    """Comma-separated module names, or 'all-linear'."""
    merge: bool = False
    """Merge the adapters into the base weights when saving the final model."""

    def validate(self, p: str = "lora.") -> None:
        check_range(p + "r", self.r, lo=0)
        check_range(p + "alpha", self.alpha, lo=0, lo_open=True)
        check_range(p + "dropout", self.dropout, lo=0, hi=1, hi_open=True)


@dataclasses.dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    """HF directory, hub name, .gguf file, or 'smollm2-135m' (the embedded default)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    freeze_layers: int = 0
    """Freeze the embeddings and the first N transformer layers (no gradients through them)."""
    trust_remote_code: bool = False
    """Allow model code from the model directory/hub to run (off unless asked)."""
    attn_implementation: str = "sdpa"
    """sdpa | eager | flash_attention_2."""
    segment_attention: bool = True
    """With sdpa: packed rows attend one sample block at a time (rlhfkit.models.segments), the same
    results up to float summation order."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them: much
    less memory for long sequences and big batches, about a third more compute."""
    gradient_checkpointing_every: int = 1
    """With gradient_checkpointing: checkpoint every N-th layer only (less recompute, less memory saved)."""

    def validate(self, p: str = "model.") -> None:
        check_choice(p + "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        check_choice(p + "attn_implementation", self.attn_implementation,
                     ("sdpa", "eager", "flash_attention_2"))
        check_range(p + "freeze_layers", self.freeze_layers, lo=0)
        check_range(p + "gradient_checkpointing_every", self.gradient_checkpointing_every, lo=1)


@dataclasses.dataclass
class DataConfig:
    path: str = ""
    """A .jsonl/.json/.parquet/.csv file (optionally .gz) or a hub dataset name."""
    split: str = "train"
    """Split to use for hub datasets."""
    rows: str = ""
    """Row range 'start:stop' in file order (empty = all)."""
    eval_path: str = ""
    """Held-out data (empty = same file as path, with eval_rows)."""
    eval_rows: str = ""
    """Row range of the held-out data (empty with no eval_path = no evaluation)."""
    columns: str = ""
    """Rename fields before format detection, 'src:dst,...' (e.g. 'question:prompt,answer:completion')."""
    max_length: int = 1024
    """Longest prompt + completion in tokens."""
    max_prompt_length: int = 0
    """Longest prompt in tokens (0 = max_length - 1; a larger value is capped at max_length - 1,
    so lowering max_length alone keeps a valid setting)."""
    prompt_truncation: str = "drop"
    """Over-long prompts: 'drop' the row (counted in the log) or cut from the 'left' (keep the last turns)."""
    completion_truncation: str = "right"
    """Over-long completions: cut the end ('right') or 'drop' the row."""
    chat_template: str = "auto"
    """'auto' (conversational rows use the model's template, plain strings do not) | 'always' | 'never'."""
    skip_invalid: bool = False
    """Skip malformed rows (counted in the log) instead of stopping with an error."""

    def __post_init__(self) -> None:
        in_memory_paths(self)

    def validate(self, p: str = "data.") -> None:
        in_memory_paths(self)
        for key in ("path", "eval_path"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{p}{key} must be a file path, a hub dataset name, a datasets.Dataset or "
                                  f"a list of dicts (got {type(getattr(self, key)).__name__})")
        check_range(p + "max_length", self.max_length, lo=2)
        check_range(p + "max_prompt_length", self.max_prompt_length, lo=0)
        check_choice(p + "prompt_truncation", self.prompt_truncation, ("drop", "left"))
        check_choice(p + "completion_truncation", self.completion_truncation, ("right", "drop"))
        check_choice(p + "chat_template", self.chat_template, ("auto", "always", "never"))


def in_memory_paths(data: "DataConfig") -> None:
    """Replace an in-memory ``path`` / ``eval_path`` (rows) by its ``memory:<sha256>`` handle."""
    from .data.loading import is_in_memory, register_rows

    for key in ("path", "eval_path"):
        value = getattr(data, key)
        if is_in_memory(value):
            setattr(data, key, register_rows(value, f"data.{key}"))


@dataclasses.dataclass
class TrainConfig(TrackingConfig):
    output_dir: str = "runs/run"
    """Run directory: metrics.jsonl, checkpoints/, final/."""
    epochs: float = 1.0
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Optimizer steps (0 = derived from epochs)."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    """Fraction of the steps with linear warm-up."""
    lr_scheduler: str = "cosine"
    """cosine | linear | constant."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    return_freed_memory: bool = False
    """Give freed tensor memory back to the OS at once (glibc: blocks from 1 MiB get their own
    mapping) instead of keeping it in the heap: lower peak RSS, more allocator time. Linux/glibc only."""
    fused_optimizer: bool = True
    """AdamW as one fused kernel per parameter (no whole-model temporaries; the same update
    within float rounding); false = PyTorch's default AdamW implementation for the device."""
    eval_steps: int = 0
    """Evaluate every N steps (0 = only at the start and end)."""
    eval_batch_size: int = 8
    save_steps: int = 0
    """Checkpoint every N steps (0 = only at the end)."""
    save_total_limit: int = 2
    """Checkpoints kept."""
    save_optimizer: bool = False
    """Also keep a resumable checkpoint (optimizer, scheduler, RNG) when the run ends (false: only final/);
    checkpoints of save_steps and those written on SIGTERM / Ctrl-C always hold the full state."""
    push_to_hub: bool = False
    """Upload final/ to the Hugging Face Hub as hub_model_id at the end (`hf auth login` or HF_TOKEN)."""
    hub_model_id: str = ""
    """Hub repository for push_to_hub: 'name' (under your account) or 'owner/name'."""
    resume: bool = False
    """Continue from the last good checkpoint in output_dir."""
    overwrite: bool = False
    """A fresh run into an output_dir that holds another run (metrics, checkpoints, final/) first deletes it; without it that is an error."""
    resume_allow: str = ""
    """Comma-separated config keys a resume may change (e.g. 'max_steps,eval_steps'); any other difference from the recorded run is an error."""
    seed: int = 42
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over the processes (FSDP2, one unit per
    transformer block) instead of replicating them (DDP); checkpoints are then written per process
    and resume on another number of processes. On by itself under an accelerate FSDP config."""
    packing: bool = True
    """Padding-free packing with per-sample attention masks (and a shared prompt for pairs/lists)."""
    pack_length: int = 0
    """Tokens per packed row (0 = max_length)."""
    logprob_chunk: int = 1024
    """Tokens per chunk when computing log-probs from hidden states."""
    threads: int = 0
    """torch CPU threads (0 = torch default)."""
    best_metric: str = ""
    """Keep the model with the best value of this evaluation metric in output_dir/best (e.g. 'sampled/reward')."""
    best_mode: str = "max"
    """'max' or 'min': which direction of best_metric is better."""
    logging_steps: int = 1
    progress: bool = True
    """Show a progress bar."""

    def validate(self, p: str = "train.") -> None:
        check_range(p + "lr", self.lr, lo=0)
        check_range(p + "weight_decay", self.weight_decay, lo=0)
        check_range(p + "warmup_ratio", self.warmup_ratio, lo=0, hi=1)
        check_range(p + "epochs", self.epochs, lo=0, lo_open=True)
        check_range(p + "max_grad_norm", self.max_grad_norm, lo=0)
        for key, lo in (("max_steps", 0), ("batch_size", 1), ("grad_accum", 1), ("eval_steps", 0),
                        ("eval_batch_size", 1), ("save_steps", 0), ("save_total_limit", 1),
                        ("threads", 0), ("logprob_chunk", 1), ("pack_length", 0),
                        ("logging_steps", 1)):
            check_range(p + key, getattr(self, key), lo=lo)
        check_choice(p + "lr_scheduler", self.lr_scheduler, ("cosine", "linear", "constant"))
        check_choice(p + "best_mode", self.best_mode, ("max", "min"))
        self.validate_tracking(p)  # report_to, log_completions (rlhfkit.train.trackers)
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError(f"{p}push_to_hub needs {p}hub_model_id ('name' or 'owner/name'), e.g. "
                              f"--{p}hub_model_id my-rm")
        if self.hub_model_id and not re.fullmatch(r"([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]{0,95}",
                                                  self.hub_model_id):
            raise ConfigError(f"{p}hub_model_id must be 'name' or 'owner/name' (letters, digits, '-', "
                              f"'_', '.'; at most 96 characters per part), got {self.hub_model_id!r}")


# --------------------------------------------------------------------------- parsing

def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def key_of(name: str) -> str:
    """The config key of a field: a Python keyword is spelt with a trailing _ (``async_`` is ``async``)."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


LIST_STRING_KEYS = ("loss_type",)  # string keys that also take a YAML list (comma-joined)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        try:
            if typ is int:
                if isinstance(value, int):
                    return value
                if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                    return int(value)  # exact, no detour through float
                f = float(value)
                if f != int(f):
                    raise ValueError
                return int(f)
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {value!r}") from None
    if typ is str:
        if isinstance(value, list) and key.rpartition(".")[2] in LIST_STRING_KEYS and all(isinstance(v, str) for v in value):
            return ",".join(value)  # e.g. loss_type: [sigmoid, sft], TRL's list form
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects a string, got {type(value).__name__}")
        return "" if value is None else str(value)
    if origin is list:
        if value is None:  # `--key ''` / `key:` with no value: the empty list
            value = []
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (item,) = typing.get_args(typ) or (str,)
        if dataclasses.is_dataclass(item):  # e.g. reward specs: mappings become dataclasses,
            return [apply_dict(item(), v, f"{key}[{i}].") if isinstance(v, dict) else v  # strings stay
                    for i, v in enumerate(value)]                                      # shorthand
        return [_coerce(v, item, key) for v in value]
    return value


def _unknown(key: str, valid: list[str], root: Any = None) -> ConfigError:
    """Unknown key: suggests the closest key here, or the closest TRL alias of ``root`` (a
    recipe config class) with the key it stands for."""
    from .aliases import MOVED_KEYS
    if key in MOVED_KEYS:  # a key that moved to another section: say where it went
        return ConfigError(f"config key '{key}' is now '{MOVED_KEYS[key]}' (the engine's speed switches: runtime:)")
    name, prefix = key.split(".")[-1], key.rpartition(".")[0]
    names: dict[str, str] = {v: "" for v in valid}  # candidate -> what it stands for
    if root is not None:
        from .aliases import aliases_for

        for a in aliases_for(root).values():
            if not prefix or a.target.startswith(prefix + "."):
                names.setdefault(a.name, f" (TRL's name for {a.target})")
    close = difflib.get_close_matches(name, list(names), n=1)
    hint = f" (did you mean '{close[0]}'{names[close[0]]}?)" if close else ""
    if not close and not prefix and root is not None:  # e.g. 'lr' at the top level: train.lr
        from .aliases import _fields

        for sec, t in _fields(root).items():
            if dataclasses.is_dataclass(t) and name in _fields(t):
                hint = f" (did you mean '{sec}.{name}'?)"
                break
    return ConfigError(f"unknown config key '{key}'{hint}; valid keys here: {', '.join(valid)}")


def apply_dict(cfg: Any, values: dict, prefix: str = "", root: Any = None) -> Any:
    """Fill dataclass ``cfg`` in place from a nested dict; unknown keys raise ConfigError
    (``root``: the recipe config class, for suggesting TRL aliases)."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '(top)'}' must be a mapping")
    types_ = _field_types(type(cfg))
    names = {key_of(n): n for n in types_}
    root = root if root is not None else (type(cfg) if not prefix else None)
    for key, value in values.items():
        full = prefix + str(key)
        if key not in names:
            raise _unknown(full, list(names), root)
        current = getattr(cfg, names[key])
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, full + ".", root)
        else:
            setattr(cfg, names[key], _coerce(value, types_[names[key]], full))
    return cfg


def set_dotted(cfg: Any, key: str, value: Any) -> None:
    """``set_dotted(cfg, "train.lr", "1e-5")`` with type checking."""
    parts = key.split(".")
    if isinstance(value, str) and not _target_is_str(cfg, parts):
        try:
            value = yaml.safe_load(value)  # "1e-5" -> 1e-05, "true" -> True
        except yaml.YAMLError:
            pass
    nested: dict = {}
    cur = nested
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    apply_dict(cfg, nested)


def _target_is_str(cfg: Any, parts: list[str]) -> bool:
    obj = cfg
    for p in parts[:-1]:
        obj = getattr(obj, p, None)
        if not dataclasses.is_dataclass(obj):
            return False
    return _field_types(type(obj)).get(parts[-1]) is str


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses a mapping with the same key twice (instead of keeping the
    last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {seen[key] + 1}, again at line "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # safe: no arbitrary objects
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a recipe must be a mapping of keys")
    return data


def build_config(cls, config_path: str | None = None, overrides: list[tuple[str, str]] = ()) -> Any:
    """Defaults <- YAML file <- ``--key value`` overrides; TRL key names are accepted as aliases
    (:mod:`rlhfkit.aliases`)."""
    from .aliases import finish, nested, translate, translate_overrides

    cfg = cls()
    layers = []
    if config_path:
        layers.append(translate(cls, load_yaml(config_path), config_path))
        apply_dict(cfg, nested(layers[-1]))
    layers.append(translate_overrides(cls, list(overrides)))
    for key, (value, _) in layers[-1].given.items():
        set_dotted(cfg, key, value)
    finish(cfg, layers)
    return validate_all(cfg)


def to_dict(cfg: Any) -> dict:
    """The config as plain data (an in-memory dataset as its ``memory:<sha256>`` handle)."""
    _in_memory_everywhere(cfg)
    return dataclasses.asdict(cfg, dict_factory=lambda kv: {key_of(k): v for k, v in kv})


def _in_memory_everywhere(cfg: Any) -> None:
    if isinstance(cfg, DataConfig):
        in_memory_paths(cfg)
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        for f in dataclasses.fields(cfg):
            _in_memory_everywhere(getattr(cfg, f.name))


def describe(cls, prefix: str = "", inst: Any = None) -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field, for ``--help`` output (defaults as the recipe
    sets them, e.g. its own output_dir and lr)."""
    import ast

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # base classes first, so subclasses may re-document
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
            body = tree.body[0].body
            for a, b in zip(body, body[1:]):
                if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(
                        getattr(b, "value", None), ast.Constant) and isinstance(b.value.value, str):
                    docs[a.target.id] = " ".join(b.value.value.split())
        except (OSError, TypeError, SyntaxError):
            pass
    out = []
    inst = cls() if inst is None else inst
    for f in dataclasses.fields(cls):
        val = getattr(inst, f.name)
        if dataclasses.is_dataclass(val):
            out += describe(type(val), prefix + f.name + ".", val)
        else:
            out.append((prefix + key_of(f.name), repr(val), docs.get(f.name, "")))
    return out

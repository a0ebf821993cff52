"""TRL key names accepted as aliases of rlhfkit's config keys, in YAML and on the command line.

A TRL user's config is flat (``learning_rate: 1e-5``, ``beta: 0.04``); rlhfkit's is sectioned
(``train.lr``, ``kl_coef``). :data:`ALIASES` is the one table of TRL names whose meaning is the
same as an rlhfkit key (with the value conversion where TRL spells a value differently). An
alias applies to a recipe only where its target key exists and the name is not the recipe's
own key at that level (DPO's ``beta`` is DPO's own key; in GRPO TRL's ``beta`` is the KL
coefficient, ``kl_coef``). It is accepted at the top level or inside the target's section
(``train.learning_rate``).

Within one layer (one YAML file, or the command line) an alias and its native key, or two
aliases of one key, with different values are an error naming both; across layers the usual
order holds (defaults <- YAML <- command line).

A few aliases are resolved once every layer is applied, because their meaning depends on other
keys (see :func:`finish`): for the online-RL recipes TRL's ``per_device_train_batch_size``
counts completions, rlhfkit's ``train.batch_size`` prompts (``batch_size = per_device_train_
batch_size / num_generations``); TRL's ``epsilon`` (``cliprange``) also sets the upper clip
unless ``epsilon_high`` is given; ``reward_weights`` sets the weights of the final reward list;
``use_peft: true`` without ``lora_r`` uses TRL's default rank 16.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from .errors import ConfigError


MOVED_KEYS = {f"rollout.{k}": f"runtime.{k}" for k in ("packed_weights", "lean_decode", "shared_prefill")}
"""Keys that moved to another section (old -> new): an old config naming one is told where it went."""


def _max_steps(v):
    return 0 if v in (-1, "-1") else v  # TRL: -1 = derived from epochs; rlhfkit: 0


def _scheduler(v):
    return "constant" if v == "constant_with_warmup" else v


def _none_is_zero(v):
    return 0 if v is None else v


def _tis_or_none(v):
    if isinstance(v, str) and v.lower() in ("tis", "mis", "none", "auto"):
        return v.lower()
    truthy = v is True or (isinstance(v, str) and v.lower() in ("true", "1", "yes"))
    return "tis" if truthy else "none"


def _dtype(v):
    if v == "auto":
        raise ConfigError("torch_dtype/dtype 'auto' is not supported; give float32, bfloat16 or float16")
    return v


def _modules(v):
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def _f_divergence(v):
    from .losses.preference import TRL_F_DIVERGENCES

    return TRL_F_DIVERGENCES.get(v, v) if isinstance(v, str) else v


def _is_rl(cls) -> bool:
    return any(f.name == "advantage" for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class Alias:
    name: str
    """The TRL key."""
    target: str
    """The rlhfkit key it sets (dotted)."""
    note: str = ""
    """How the meaning maps (for the documentation table)."""
    convert: Callable[[Any], Any] | None = None
    """Value conversion (TRL spelling -> rlhfkit spelling)."""
    when: Callable[[type], bool] | None = None
    """Recipes it applies to (default: every recipe that has ``target``)."""
    deferred: bool = False
    """Resolved by :func:`finish` after every layer (its meaning depends on other keys)."""


ALIASES: tuple[Alias, ...] = (
    Alias("model_name_or_path", "model.name"),
    Alias("torch_dtype", "model.dtype", "float32 | bfloat16 | float16 ('auto' is refused)", _dtype),
    Alias("dtype", "model.dtype", "as torch_dtype", _dtype),
    Alias("attn_implementation", "model.attn_implementation"),
    Alias("trust_remote_code", "model.trust_remote_code"),
    Alias("gradient_checkpointing", "model.gradient_checkpointing"),
    Alias("lora_r", "model.lora.r", "LoRA rank (rlhfkit: r > 0 turns LoRA on)"),
    Alias("lora_alpha", "model.lora.alpha"),
    Alias("lora_dropout", "model.lora.dropout"),
    Alias("lora_target_modules", "model.lora.target_modules", "a list becomes 'a,b,c'", _modules),
    Alias("use_peft", "model.lora.r", "true: LoRA with lora_r (TRL's default 16); false: full model",
          deferred=True),
    Alias("dataset_name", "data.path", "a hub dataset name or a local file"),
    Alias("dataset_train_split", "data.split"),
    Alias("max_length", "data.max_length", "prompt + completion tokens"),
    Alias("max_prompt_length", "data.max_prompt_length",
          "prompt tokens; longer prompts follow data.prompt_truncation (default: drop the row; "
          "TRL cuts from the left = 'left')"),
    Alias("learning_rate", "train.lr"),
    Alias("per_device_train_batch_size", "train.batch_size",
          "per process; GRPO/PPO: TRL counts completions, rlhfkit prompts, so batch_size = "
          "per_device_train_batch_size / num_generations", when=lambda c: not _is_rl(c)),
    Alias("per_device_train_batch_size", "train.batch_size", "completions / num_generations",
          when=_is_rl, deferred=True),
    Alias("per_device_eval_batch_size", "train.eval_batch_size"),
    Alias("gradient_accumulation_steps", "train.grad_accum",
          "micro-batches per optimizer step (GRPO/PPO: prompts per step = batch_size x grad_accum)"),
    Alias("num_train_epochs", "train.epochs"),
    Alias("max_steps", "train.max_steps", "TRL's -1 (off) becomes 0", _max_steps),
    Alias("lr_scheduler_type", "train.lr_scheduler",
          "cosine | linear | constant (constant_with_warmup = rlhfkit's constant; rlhfkit's schedules "
          "always warm up for warmup_ratio)", _scheduler),
    Alias("warmup_ratio", "train.warmup_ratio"),
    Alias("weight_decay", "train.weight_decay"),
    Alias("max_grad_norm", "train.max_grad_norm"),
    Alias("seed", "train.seed"),
    Alias("output_dir", "train.output_dir"),
    Alias("logging_steps", "train.logging_steps"),
    Alias("eval_steps", "train.eval_steps"),
    Alias("save_steps", "train.save_steps"),
    Alias("save_total_limit", "train.save_total_limit"),
    Alias("packing", "train.packing"),
    Alias("report_to", "train.report_to"),
    Alias("push_to_hub", "train.push_to_hub"),
    Alias("hub_model_id", "train.hub_model_id"),
    # online RL (GRPO / PPO) and online DPO
    Alias("max_completion_length", "rollout.max_new_tokens"),
    Alias("max_new_tokens", "rollout.max_new_tokens"),
    Alias("response_length", "rollout.max_new_tokens", "TRL PPO"),
    Alias("num_generations", "rollout.num_generations"),
    Alias("temperature", "rollout.temperature"),
    Alias("top_p", "rollout.top_p"),
    Alias("top_k", "rollout.top_k", "None becomes 0 (off)", _none_is_zero),
    Alias("beta", "kl_coef", "GRPO: the KL coefficient (DPO/KTO's beta is their own key)"),
    Alias("epsilon", "clip_eps_low", "also the upper clip unless epsilon_high is given", deferred=True),
    Alias("epsilon_high", "clip_eps_high"),
    Alias("cliprange", "clip_eps_low", "TRL PPO; also the upper clip unless epsilon_high is given",
          deferred=True),
    Alias("cliprange_value", "critic.value_clip"),
    Alias("vf_coef", "critic.vf_coef"),
    Alias("num_ppo_epochs", "num_iterations"),
    Alias("num_mini_batches", "num_minibatches"),
    Alias("loss_type", "loss_agg", "GRPO: grpo | dr_grpo | dapo"),
    Alias("mask_truncated_completions", "mask_truncated"),
    Alias("importance_sampling_level", "importance_level", "token | sequence (GSPO-style sequence ratio: "
          "policy_loss gspo)"),
    Alias("top_entropy_quantile", "entropy_top_q", "train on the top-q highest-entropy tokens"),
    Alias("vllm_importance_sampling_correction", "correction.mode", "true -> tis, false -> none", _tis_or_none),
    Alias("vllm_importance_sampling_cap", "correction.cap"),
    Alias("log_completions", "train.log_completions", "true: every logging step (train.logging_steps), "
          "false: off; rlhfkit writes them to RUN_DIR/completions.jsonl", deferred=True),
    Alias("num_completions_to_print", "train.log_completions_rows", "rows logged per step"),
    Alias("sft_model_path", "model.name", "TRL PPO"),
    Alias("reward_model_path", "rewards", "TRL PPO: one reward model directory",
          lambda v: [{"type": "model", "path": v}]),
    Alias("reward_funcs", "rewards", "TRL import paths 'pkg.module.function' (called with TRL's "
          "signature), reward model directories, or rlhfkit rewards", lambda v: reward_funcs(v)),
    Alias("reward_weights", "rewards", "one weight per entry of reward_funcs/rewards", deferred=True),
    # reward modelling
    Alias("center_rewards_coefficient", "center_rewards_coef"),
    # DPO
    Alias("f_divergence_type", "f_divergence", "reverse_kl | forward_kl | js_divergence (= js) | alpha_divergence "
          "(= alpha); applies to every loss that takes it", _f_divergence),
    Alias("f_alpha_divergence_coef", "f_alpha", "TRL's coefficient a is 1 − α of the paper: f_alpha = 1 − a, read "
          "only with the α-divergence (as TRL)", deferred=True),
)


# --------------------------------------------------------------------------- reward_funcs

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def reward_funcs(value: Any) -> list:
    """TRL's ``reward_funcs`` entries as rlhfkit reward entries.

    ``pkg.module.function`` (TRL's import path) and ``pkg.module:function`` are user functions
    called with TRL's signature; a path with a ``/`` is a reward model directory; rlhfkit
    shorthands (``arithmetic``, ``fn:...``, ``model:...``, ``*WEIGHT``) and mappings pass through.
    """
    from .rewards.base import SHORTHAND_HELP, VERIFIER_NAMES, parse_weight_suffix

    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"reward_funcs must be a list of reward functions, got {value!r}")
    out: list = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            out.append({"signature": "trl", **item} if item.get("type") == "function" else item)
            continue
        text = str(item).strip()
        body, weight = parse_weight_suffix(text)
        body = body.strip()
        entry: dict
        if body in VERIFIER_NAMES or body.startswith(("model:", "fn:")):
            out.append(text)
            continue
        if ":" in body:
            entry = {"type": "function", "fn": body, "signature": "trl"}
        elif _DOTTED.fullmatch(body):
            mod, _, fn = body.rpartition(".")
            entry = {"type": "function", "fn": f"{mod}:{fn}", "signature": "trl"}
        elif "/" in body:
            entry = {"type": "model", "path": body}
        else:
            raise ConfigError(f"reward_funcs[{i}] '{text}': not an import path 'module.function', a reward "
                              f"model directory, or an rlhfkit reward ({SHORTHAND_HELP}); TRL's built-in "
                              "reward functions are not available, write them as a module")
        if weight is not None:
            entry["weight"] = weight
        out.append(entry)
    return out


# --------------------------------------------------------------------------- lookup

def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_class(cls, path: list[str]):
    """The dataclass at ``path`` inside ``cls`` (None if there is none)."""
    for p in path:
        t = _fields(cls).get(p)
        if not (isinstance(t, type) and dataclasses.is_dataclass(t)):
            return None
        cls = t
    return cls


def target_type(cls, target: str):
    """Type of the dotted key ``target`` in ``cls``; None if the recipe has no such key."""
    parts = target.split(".")
    sec = _section_class(cls, parts[:-1])
    return None if sec is None else _fields(sec).get(parts[-1])


def aliases_for(cls) -> dict[str, Alias]:
    """The aliases that apply to recipe ``cls``, by TRL name."""
    out: dict[str, Alias] = {}
    top = _fields(cls)
    for a in ALIASES:
        if a.name in top or target_type(cls, a.target) is None:
            continue
        if a.when is not None and not a.when(cls):
            continue
        out[a.name] = a
    return out


def alias_at(cls, key: str) -> Alias | None:
    """The alias a dotted ``key`` names (``learning_rate`` or ``train.learning_rate``), if any."""
    parts = key.split(".")
    sec = _section_class(cls, parts[:-1])
    if sec is None or parts[-1] in _fields(sec):
        return None
    a = aliases_for(cls).get(parts[-1])
    if a is None or (len(parts) > 1 and not a.target.startswith(".".join(parts[:-1]) + ".")):
        return None
    return a


def aliases_of(cls, target: str) -> list[str]:
    """TRL names of ``target`` in recipe ``cls`` (for help and suggestions)."""
    return sorted({a.name for a in aliases_for(cls).values() if a.target == target})


# --------------------------------------------------------------------------- translation

@dataclass
class Layer:
    """What one layer (a YAML file or the command line) set, after translating its aliases."""

    where: str
    given: dict[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    """Native key -> (value, how it was written)."""
    deferred: dict[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    """Deferred alias name -> (value, how it was written)."""


def _same(cls, target: str, a: Any, b: Any) -> bool:
    from .config import _coerce

    typ = target_type(cls, target)
    try:
        return _coerce(a, typ, target) == _coerce(b, typ, target)
    except ConfigError:
        return a == b


def _put(cls, layer: Layer, target: str, value: Any, written: str) -> None:
    if target in layer.given:
        old, old_written = layer.given[target]
        if not _same(cls, target, old, value):
            raise ConfigError(f"{layer.where}: '{old_written}' ({old!r}) and '{written}' ({value!r}) both set "
                              f"{target} with different values; keep one of them")
    layer.given[target] = (value, written)


def _apply_alias(cls, layer: Layer, a: Alias, value: Any, written: str) -> None:
    if a.deferred:
        layer.deferred[a.name] = (value, written)
        if a.name in ("epsilon", "cliprange"):
            _put(cls, layer, a.target, value, written)
        return
    _put(cls, layer, a.target, a.convert(value) if a.convert else value, written)


def translate(cls, data: dict, where: str) -> Layer:
    """Translate the aliases of a YAML mapping; the native keys are in ``Layer.given``
    (unknown keys stay, for :func:`rlhfkit.config.apply_dict` to report)."""
    layer = Layer(where)

    def walk(sec, d: dict, prefix: str) -> None:
        fields = _fields(sec)
        for key, value in d.items():
            full = prefix + str(key)
            t = fields.get(key)
            if isinstance(t, type) and dataclasses.is_dataclass(t) and isinstance(value, dict):
                walk(t, value, full + ".")
                continue
            a = alias_at(cls, full) if key not in fields else None
            if a is not None:
                _apply_alias(cls, layer, a, value, full)
            else:
                _put(cls, layer, full, value, full)

    if isinstance(data, dict):
        walk(cls, data, "")
    return layer


def translate_overrides(cls, overrides, where: str = "command line") -> Layer:
    """The same for ``--key value`` pairs (values stay strings; a converted alias value is parsed
    as YAML first). A native key given twice keeps the last value, as before."""
    layer = Layer(where)
    for key, value in overrides:
        a = alias_at(cls, key)
        if a is None:
            if layer.given.get(key, (None, "--" + key))[1] == "--" + key:  # repeated: the last one wins
                layer.given.pop(key, None)
            _put(cls, layer, key, value, "--" + key)
            continue
        if a.convert is not None or a.deferred:
            try:
                value = yaml.safe_load(value) if isinstance(value, str) and target_type(cls, a.target) is not str \
                    else value
            except yaml.YAMLError:
                pass
        _apply_alias(cls, layer, a, value, "--" + key)
    return layer


def nested(layer: Layer) -> dict:
    """``Layer.given`` as a nested mapping for :func:`rlhfkit.config.apply_dict`."""
    out: dict = {}
    for key, (value, _) in layer.given.items():
        parts = key.split(".")
        cur = out
        for p in parts[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):  # e.g. 'train: 3' and 'train.lr': apply_dict reports it
                break
            cur = nxt
        else:
            cur[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- deferred aliases

def _last(layers: list[Layer], name: str):
    for i in range(len(layers) - 1, -1, -1):
        if name in layers[i].deferred:
            return i, layers[i].deferred[name]
    return None, None


def _set_later(layers: list[Layer], i: int, target: str) -> bool:
    return any(target in layer.given for layer in layers[i + 1:])


def finish(cfg, layers: list[Layer]) -> None:
    """Resolve the deferred aliases on the filled config (before validation)."""
    from .config import _coerce

    i, got = _last(layers, "per_device_train_batch_size")
    if got is not None and not _set_later(layers, i, "train.batch_size"):
        value, written = got
        n = _coerce(value, int, written)
        G = cfg.rollout.num_generations
        if n < 1 or n % G:
            raise ConfigError(f"{written} = {n}: TRL counts completions per device, rlhfkit prompts "
                              f"(train.batch_size = {written} / rollout.num_generations); give a positive "
                              f"multiple of num_generations ({G}), or set train.batch_size (prompts)")
        if "train.batch_size" in layers[i].given and cfg.train.batch_size != n // G:
            raise ConfigError(f"{layers[i].where}: '{written}' ({n} completions = {n // G} prompts of "
                              f"{G}) and 'train.batch_size' ({cfg.train.batch_size} prompts) disagree; "
                              "keep one of them")
        cfg.train.batch_size = n // G
    for name in ("epsilon", "cliprange"):
        i, got = _last(layers, name)
        if got is not None and not any("clip_eps_high" in layer.given for layer in layers):
            cfg.clip_eps_high = cfg.clip_eps_low
    i, got = _last(layers, "use_peft")
    if got is not None:
        value, written = got
        on = _coerce(value, bool, written)
        r_given = any("model.lora.r" in layer.given for layer in layers)
        if on and not r_given:
            cfg.model.lora.r = 16
        elif not on and cfg.model.lora.r > 0:
            raise ConfigError(f"{written} is false but model.lora.r / lora_r is {cfg.model.lora.r}; "
                              "remove one of them")
    i, got = _last(layers, "log_completions")
    if got is not None and not _set_later(layers, i, "train.log_completions"):
        value, written = got
        cfg.train.log_completions = max(1, cfg.train.logging_steps) if _coerce(value, bool, written) else 0
    i, got = _last(layers, "reward_weights")
    if got is not None:
        _reward_weights(cfg, *got)
    i, got = _last(layers, "f_alpha_divergence_coef")
    if got is not None:
        _f_alpha_coef(cfg, layers, i, *got)


def _f_alpha_coef(cfg, layers: list[Layer], i: int, value: Any, written: str) -> None:
    """TRL's α-divergence coefficient a: f′(u) = (u^(a−1) − 1)/(a − 1), the paper's
    (1 − u^(−α))/α with α = 1 − a. Like TRL, it is read only when the divergence is alpha."""
    from .config import _coerce

    a = _coerce(value, float, written)
    if cfg.f_divergence not in ("alpha", "alpha_divergence"):
        return
    if not 0 < a < 1:
        raise ConfigError(f"{written} = {a:g}: TRL's coefficient a is 1 − α of the α-divergence, and rlhfkit's "
                          "f_alpha = 1 − a must lie in (0, 1); give 0 < a < 1 (a → 1 is reverse KL: "
                          "f_divergence_type: reverse_kl)")
    alpha = round(1.0 - a, 12)  # 0.7 gives 0.3, not 0.30000000000000004
    if _set_later(layers, i, "f_alpha"):
        return
    if "f_alpha" in layers[i].given and abs(cfg.f_alpha - alpha) > 1e-12:
        raise ConfigError(f"{layers[i].where}: '{written}' ({a:g}, i.e. f_alpha {alpha:g}) and 'f_alpha' "
                          f"({cfg.f_alpha:g}) disagree; keep one of them")
    cfg.f_alpha = alpha


def _reward_weights(cfg, value: Any, written: str) -> None:
    from .config import _coerce
    from .rewards.base import reward_config_from

    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{written} must be a list of numbers, one per reward, got {value!r}")
    weights = [_coerce(w, float, f"{written}[{k}]") for k, w in enumerate(value)]
    if len(weights) != len(cfg.rewards):
        raise ConfigError(f"{written} has {len(weights)} weights for {len(cfg.rewards)} rewards; give one "
                          "weight per entry of reward_funcs / rewards")
    out = []
    for k, (entry, w) in enumerate(zip(cfg.rewards, weights)):
        rc = reward_config_from(entry, f"rewards[{k}]")
        if rc.weight != 1.0 and rc.weight != w:
            raise ConfigError(f"rewards[{k}] has weight {rc.weight:g} and {written}[{k}] is {w:g}; keep one "
                              "of them")
        rc.weight = w
        out.append(rc)
    cfg.rewards = out


# --------------------------------------------------------------------------- documentation

def markdown_table() -> str:
    """The alias table as Markdown (README)."""
    rows = ["| TRL key | rlhfkit key | notes |", "|---|---|---|"]
    seen = set()
    for a in ALIASES:
        if (a.name, a.target) in seen:
            continue
        seen.add((a.name, a.target))
        note = a.note.replace("|", "\\|")
        rows.append(f"| `{a.name}` | `{a.target}` | {note} |")
    return "\n".join(rows)

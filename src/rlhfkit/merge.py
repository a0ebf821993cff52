"""``rlhfkit merge``: combine fine-tuned models (or LoRA adapters) of one base into one model.

Each fine-tuned model i gives a task vector δ_i = θ_i − θ_base per tensor (a LoRA adapter is
folded into the base with peft's ``merge_and_unload`` first). The methods (formulas and
conventions in docs/algorithms.md#model-merging):

* ``linear``: θ = θ_base + λ Σ_i w_i δ_i (default w_i = 1/N: the average of the models);
* ``ties``: trim each δ_i to its top-``density`` entries by magnitude, elect a sign per entry,
  take the weighted mean of the entries that agree with it (TIES-Merging, Yadav et al. 2023);
* ``dare``: drop each entry of δ_i with probability 1 − density, rescale the survivors by
  1/density, then ``linear`` (DARE, Yu et al. 2023); ``dare_ties``: DARE's drop, then TIES's
  election and mean;
* ``slerp``: spherical interpolation of the weights of exactly two models at ``t``.

λ is ``scale``. Arithmetic is float32; the result is cast to ``dtype`` (``auto``: the base's)
and written to ``output_dir`` (``save_pretrained`` safetensors, the base's tokenizer and
``rlhfkit_merge.json``), atomically.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os

import torch

from .config import ModelConfig, check_choice, check_range, validate_all
from .errors import ConfigError, ModelError

METHODS = ("linear", "ties", "dare", "dare_ties", "slerp")
MARKER = "rlhfkit_merge.json"
_SOURCES = "an HF model directory, a LoRA adapter directory, a .gguf file, a hub name or 'smollm2-135m'"


@dataclasses.dataclass
class MergeConfig:
    base: str = ""
    """The base model all others were fine-tuned from (HF directory, hub name, .gguf, 'smollm2-135m')."""
    models: list[str] = dataclasses.field(default_factory=list)
    """Fine-tuned model or LoRA adapter directories of base: runs/a/final,runs/b/final or a YAML list."""
    method: str = "linear"
    """linear | ties | dare | dare_ties | slerp."""
    weights: list[float] = dataclasses.field(default_factory=list)
    """One weight per model (empty = 1/N each); not used by slerp."""
    density: float = 0.5
    """ties/dare: fraction of each task vector's entries kept, in (0, 1]."""
    scale: float = 1.0
    """λ: the combined task vector is multiplied by it (not used by slerp)."""
    t: float = 0.5
    """slerp: 0 = the first model, 1 = the second."""
    seed: int = 0
    """dare/dare_ties: seed of the random drop."""
    output_dir: str = "runs/merge"
    """Where the merged model is written (replaced if it holds an earlier merge)."""
    dtype: str = "auto"
    """auto (the base's dtype) | float32 | bfloat16 | float16."""

    def validate(self, p: str = "") -> None:
        check_choice(p + "method", self.method, METHODS)
        _check_source(p + "base", self.base)
        if not self.models:
            raise ConfigError(f"{p}models must list at least 1 fine-tuned model or adapter directory, "
                              f"e.g. --{p}models runs/a/final,runs/b/final")
        for i, m in enumerate(self.models):
            _check_source(f"{p}models[{i}]", m)
        if self.method == "slerp" and len(self.models) != 2:
            raise ConfigError(f"{p}method slerp interpolates exactly 2 models; {p}models has "
                              f"{len(self.models)}")
        if self.weights:
            if self.method == "slerp":
                raise ConfigError(f"{p}weights are not used by slerp (it takes {p}t in [0, 1]); leave them empty")
            if len(self.weights) != len(self.models):
                raise ConfigError(f"{p}weights has {len(self.weights)} values but {p}models has "
                                  f"{len(self.models)}; give one weight per model, or none (1/N each)")
            ties = self.method in ("ties", "dare_ties")
            for i, w in enumerate(self.weights):
                check_range(f"{p}weights[{i}]", w, lo=0 if ties else None, lo_open=ties)
        check_range(p + "density", self.density, lo=0, hi=1, lo_open=True)
        check_range(p + "scale", self.scale, lo=0, lo_open=True)
        check_range(p + "t", self.t, lo=0, hi=1)
        check_range(p + "seed", self.seed, lo=0)
        check_choice(p + "dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        if not self.output_dir:
            raise ConfigError(f"{p}output_dir is empty; give the directory to write the merged model to")
        out = os.path.realpath(self.output_dir)
        for key, src in [("base", self.base)] + [(f"models[{i}]", m) for i, m in enumerate(self.models)]:
            if os.path.exists(src) and os.path.realpath(src) == out:
                raise ConfigError(f"{p}output_dir '{self.output_dir}' is {p}{key} itself; write the merge elsewhere")


def _check_source(key: str, name) -> None:
    """ConfigError for an empty name or a local path that does not exist (hub names pass)."""
    from .models.loading import EMBEDDED_ALIASES

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key} is empty; give {_SOURCES}")
    if name.lower() in EMBEDDED_ALIASES or os.path.isdir(name):
        return
    if os.path.isfile(name):
        if name.endswith(".gguf"):
            return
        raise ConfigError(f"{key}: '{name}' is a file; give {_SOURCES}")
    if name.endswith(".gguf") or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"{key}: model directory not found: {name}; give {_SOURCES}")


# --------------------------------------------------------------------------- combine functions
# Pure functions of float32 tensors of one parameter; docs/algorithms.md#model-merging.

def linear(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ_i w_i δ_i (docs/algorithms.md#model-merging)."""
    out = torch.zeros_like(deltas[0])
    for w, d in zip(weights, deltas):
        out.add_(d, alpha=w)
    return out


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's trim: δ with all but its k = round(density · numel) largest-magnitude entries set
    to 0 (entries tied with the k-th largest magnitude are all kept)."""
    n = delta.numel()
    k = min(n, max(1, int(density * n + 0.5)))
    if k >= n:
        return delta.clone()
    mag = delta.abs()
    threshold = torch.kthvalue(mag.flatten(), n - k + 1).values
    return torch.where(mag >= threshold, delta, torch.zeros_like(delta))


def elect_and_mean(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """TIES's sign election and disjoint mean: γ = sign(Σ_i w_i δ_i) per entry; the result is
    Σ_{i∈A} w_i δ_i / Σ_{i∈A} w_i over A = {i : δ_i ≠ 0 and sign(δ_i) = γ} (0 where A is empty);
    with equal weights the plain mean over A, the paper's disjoint mean."""
    elected = torch.sign(linear(deltas, weights))
    num, den = torch.zeros_like(deltas[0]), torch.zeros_like(deltas[0])
    for w, d in zip(weights, deltas):
        agree = (torch.sign(d) == elected) & (d != 0)
        num += torch.where(agree, d * w, 0.0)
        den += agree.to(d.dtype) * w
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def ties(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023): trim each δ_i, then elect_and_mean (docs/algorithms.md#model-merging)."""
    return elect_and_mean([trim(d, density) for d in deltas], weights)


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE's drop and rescale: each entry kept with probability density (uniform draw <
    density), kept entries divided by density, so the expectation is δ."""
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def dare(deltas: list[torch.Tensor], weights: list[float], density: float,
         generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2023): dare_drop each δ_i, then linear (docs/algorithms.md#model-merging)."""
    return linear([dare_drop(d, density, generator) for d in deltas], weights)


def dare_ties(deltas: list[torch.Tensor], weights: list[float], density: float,
              generator: torch.Generator) -> torch.Tensor:
    """DARE's drop, then TIES's sign election and disjoint mean (docs/algorithms.md#model-merging)."""
    return elect_and_mean([dare_drop(d, density, generator) for d in deltas], weights)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, colinear: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two weight tensors (docs/algorithms.md#model-merging):
    Ω = arccos(⟨a, b⟩ / (‖a‖‖b‖)) of the flattened tensors, result sin((1−t)Ω)/sin Ω · a +
    sin(tΩ)/sin Ω · b; (1−t)·a + t·b when |cos Ω| > colinear or a norm is below eps."""
    na, nb = a.norm().item(), b.norm().item()
    cos = (a.flatten() @ b.flatten()).item() / (na * nb) if na > eps and nb > eps else 1.0
    if abs(cos) > colinear:
        return (1 - t) * a + t * b
    omega = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(omega)
    return (math.sin((1 - t) * omega) / s) * a + (math.sin(t * omega) / s) * b


# --------------------------------------------------------------------------- loading
def _same_source(a: str, b: str) -> bool:
    from .models.loading import EMBEDDED_ALIASES

    def canon(x: str) -> str:
        if x.lower() in EMBEDDED_ALIASES:
            return "<embedded>"
        return os.path.realpath(x) if os.path.exists(x) else x.rstrip("/")
    return canon(a) == canon(b)


def _safetensors_kw(path: str) -> dict:
    """Refuse pickle fallbacks for a local directory that has safetensors files."""
    return {"use_safetensors": True} if os.path.isdir(path) and glob.glob(os.path.join(path, "*.safetensors")) else {}


def _load(key: str, name: str, base: str) -> torch.nn.Module:
    """A full model in float32: a model directory as it is, an adapter folded into its base."""
    from transformers import AutoModelForCausalLM

    from .models.loading import _adapter_base, _load_pretrained, resolve_model_path

    try:
        path = resolve_model_path(name)
        adapter_of = _adapter_base(path) if os.path.isdir(path) else None
        if adapter_of is not None:
            if key == "base":
                raise ConfigError(f"base '{name}' is a LoRA adapter directory; give the full model it "
                                  f"adapts ('{adapter_of}') as base and the adapter in models")
            if not _same_source(adapter_of, base):
                raise ConfigError(f"{key}: the LoRA adapter '{name}' adapts '{adapter_of}', not base "
                                  f"'{base}'; merge adapters of one base (set base to '{adapter_of}')")
            if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
                raise ConfigError(f"{key}: '{name}' has no adapter_model.safetensors (only safetensors "
                                  "adapters are loaded); re-save the adapter with save_pretrained")
        kw = _safetensors_kw(resolve_model_path(base) if adapter_of is not None else path)
        mcfg = ModelConfig(name=name, dtype="float32", segment_attention=False)
        model = _load_pretrained(AutoModelForCausalLM, name, mcfg, **kw)
    except ModelError as e:
        raise ConfigError(f"{key}: {e}") from e
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: could not load '{name}': {msg}; give {_SOURCES} (of base '{base}')") from e
    return model.eval()


def _out_dtype(cfg: MergeConfig) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    from transformers import AutoConfig

    from .models.loading import resolve_model_path
    try:
        d = AutoConfig.from_pretrained(resolve_model_path(cfg.base))
        d = getattr(d, "dtype", None) or getattr(d, "torch_dtype", None)
    except (OSError, ValueError, ModelError):
        d = None
    d = getattr(torch, d, None) if isinstance(d, str) else d
    return d if isinstance(d, torch.dtype) and d.is_floating_point else torch.float32


# --------------------------------------------------------------------------- run
@torch.no_grad()
def merge_state(cfg: MergeConfig, base: dict[str, torch.Tensor], models: list[dict[str, torch.Tensor]]) -> dict:
    """Overwrite the floating tensors of the state dict ``base`` in place with the merge of
    ``models`` (tensors that share storage are merged once, so tied weights stay tied)."""
    n = len(models)
    weights = list(cfg.weights) or [1.0 / n] * n
    gen = torch.Generator().manual_seed(cfg.seed)
    done: set[int] = set()
    tensors = kept = changed = 0
    extra = [(i, k) for i, sd in enumerate(models) for k in sd if k not in base]
    if extra:
        raise ConfigError(f"models[{extra[0][0]}] ({cfg.models[extra[0][0]]}) has a tensor '{extra[0][1]}' "
                          "that base lacks; merging needs models of the same architecture")
    for key, b in base.items():
        for i, sd in enumerate(models):
            if key not in sd:
                raise ConfigError(f"models[{i}] ({cfg.models[i]}) has no tensor '{key}' that base has; "
                                  "merging needs models of the same architecture")
            if sd[key].shape != b.shape:
                raise ConfigError(f"tensor '{key}' has shape {tuple(b.shape)} in base ({cfg.base}) but "
                                  f"{tuple(sd[key].shape)} in models[{i}] ({cfg.models[i]}); merging "
                                  "needs models of the same architecture and size")
        if not b.is_floating_point() or (b.numel() and b.data_ptr() in done):
            continue  # integer buffers keep the base's values; a tied alias was merged already
        if b.numel():
            done.add(b.data_ptr())
        tensors += 1
        b32 = b.float()
        if cfg.method == "slerp":
            b.copy_(slerp(models[0][key].float(), models[1][key].float(), cfg.t))
            continue
        deltas = [sd[key].float() - b32 for sd in models]
        if cfg.method == "linear":
            combined = linear(deltas, weights)
        else:
            sparse = [trim(d, cfg.density) if cfg.method == "ties" else dare_drop(d, cfg.density, gen)
                      for d in deltas]
            changed += sum(int((d != 0).sum()) for d in deltas)
            kept += sum(int((s != 0).sum()) for s in sparse)
            combined = linear(sparse, weights) if cfg.method == "dare" else elect_and_mean(sparse, weights)
        b.copy_(b32 + cfg.scale * combined)
    out = {"method": cfg.method, "models": n, "tensors": tensors, "weights": weights}
    if cfg.method in ("ties", "dare", "dare_ties"):
        out["kept_fraction"] = kept / changed if changed else 1.0
    return out


def run(cfg: MergeConfig, log=print) -> dict:
    """Load, merge and write ``cfg.output_dir``; returns the summary (method, models, tensors
    merged, kept_fraction for ties/dare, output_dir)."""
    from .models.loading import load_tokenizer, portable_path
    from .train.checkpoint import atomic_dir

    validate_all(cfg)
    out_dir = cfg.output_dir
    if os.path.isfile(out_dir) or (os.path.isdir(out_dir) and os.listdir(out_dir)
                                   and not os.path.isfile(os.path.join(out_dir, MARKER))):
        raise ConfigError(f"output_dir '{out_dir}' exists and is not an earlier merge; choose another "
                          "output_dir or remove it")
    dtype = _out_dtype(cfg)
    base = _load("base", cfg.base, cfg.base)
    try:
        tok = load_tokenizer(cfg.base)
    except (ModelError, OSError, ValueError) as e:
        log(f"merge: no tokenizer saved ({str(e).splitlines()[0]})")
        tok = None
    models = [_load(f"models[{i}]", m, cfg.base).state_dict() for i, m in enumerate(cfg.models)]
    summary = merge_state(cfg, base.state_dict(), models)
    del models
    base.to(dtype)
    with atomic_dir(out_dir) as tmp:
        base.save_pretrained(tmp, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp)
        record = {**dataclasses.asdict(cfg), **summary, "base": portable_path(cfg.base),
                  "models": [portable_path(m) for m in cfg.models], "dtype": str(dtype).replace("torch.", ""),
                  "output_dir": portable_path(out_dir)}
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(record, f, indent=2)
    summary["output_dir"] = out_dir
    kept = f", kept {summary['kept_fraction']:.1%} of the changed entries" if "kept_fraction" in summary else ""
    log(f"merge: {cfg.method} of {len(cfg.models)} model(s) onto {cfg.base}: {summary['tensors']} tensors"
        f"{kept}; written to {out_dir} ({str(dtype).replace('torch.', '')})")
    return summary

"""What a run leaves behind: ``final/`` and ``best/`` (``recipe.save`` plus a model card),
model files in checkpoints (loadable by ``from_pretrained``), the optional push of ``final/``
to the Hugging Face Hub, and the one line that says how much was written and where the model is.

``final/`` holds the model only; a resumable checkpoint (optimizer, scheduler, RNG) is also
kept at the end only with ``train.save_optimizer`` (checkpoints under ``save_steps`` and on
SIGTERM / Ctrl-C always hold the full state)."""

from __future__ import annotations

import dataclasses
import json
import os

from ..config import LoraConfig
from ..errors import TrainingError
from . import modelcard


def run_config(trainer):
    """The recipe's whole config (a dataclass) or the CLI's, or None."""
    from .loop import RUN_CONFIG

    full = trainer.recipe.config if trainer.recipe.config is not None else RUN_CONFIG.get()
    return full if full is not None and dataclasses.is_dataclass(full) else None


def _base(config) -> dict | None:
    from ..models.loading import base_model_info

    name = getattr(getattr(config, "model", None), "name", None)
    return base_model_info(name) if name else None


def _run_record(trainer) -> dict:
    """The run as ``run.json`` recorded it when the run started (the training examples' fingerprint
    before a recipe attached anything to them, e.g. precomputed reference log-probs)."""
    from .rundir import read_record

    try:
        rec = read_record(trainer.cfg.output_dir)
    except TrainingError:
        rec = None
    return rec or trainer._record()


def write_model(trainer, name: str, metrics: dict | None = None, step: int | None = None) -> str:
    """``recipe.save`` and the model card into ``output_dir/name`` atomically: a temp dir renamed over
    the old one (nothing of an earlier model, e.g. full weights beside new LoRA adapters, survives)."""
    from .checkpoint import atomic_dir

    path = os.path.join(trainer.cfg.output_dir, name)
    config = run_config(trainer)
    try:
        with atomic_dir(path) as tmp:
            trainer.recipe.save(trainer.export_model(), tmp)
            if config is not None:
                adapters = os.path.isfile(os.path.join(tmp, "adapter_config.json"))
                modelcard.write_card(tmp, config=config, name=f"{os.path.basename(trainer.cfg.output_dir)}/{name}",
                                     base=_base(config), record=_run_record(trainer), metrics=metrics or {},
                                     step=step, total_steps=trainer.total_steps, adapters=adapters)
    except (OSError, RuntimeError) as e:
        raise TrainingError(f"could not write {path}: {getattr(e, 'strerror', None) or e}; free disk space or fix "
                            f"permissions; the last good checkpoint is {trainer.last_good or 'none'}") from e
    return path


def keep_best(trainer, step: int, res: dict) -> None:
    """With train.best_metric: save the model to output_dir/best when the held-out metric
    improves (best.json records the step and value)."""
    cfg = trainer.cfg
    if not cfg.best_metric or trainer.recipe.save is None:
        return
    key = cfg.best_metric if cfg.best_metric.startswith("eval/") else "eval/" + cfg.best_metric
    if key not in res:
        raise TrainingError(f"train.best_metric '{cfg.best_metric}' is not among the evaluation "
                            f"metrics: {sorted(k[5:] for k in res)}")
    v, best = float(res[key]), trainer.recipe.state.get("best_value")
    if best is not None and (v <= best if cfg.best_mode == "max" else v >= best):
        return
    if not trainer._weights_finite():
        return  # never keep non-finite weights as the best model
    trainer.recipe.state["best_value"] = v
    with trainer.full_weights():  # FSDP: gathered on every process, written by the main one
        if trainer.accelerator.is_main_process:
            path = write_model(trainer, "best", res, step)
            with open(os.path.join(cfg.output_dir, "best.json"), "w") as f:
                json.dump({"step": step, "metric": key, "value": v}, f)
            trainer.log(f"[{trainer.recipe.name}] best {key}={v:.4g} at step {step}: saved {path}")
    trainer.accelerator.wait_for_everyone()


def checkpoint_exporter(trainer):
    """A function writing the model files of the trained model into a checkpoint directory (as in
    final/: config + safetensors, or LoRA adapter files; a PPO critic in ``critic/``), or None
    when the run has no recorded model config."""
    config = run_config(trainer)
    model_cfg = getattr(config, "model", None)
    if model_cfg is None or not getattr(model_cfg, "name", ""):
        return None

    def export(path: str) -> None:
        from ..models.loading import load_tokenizer
        from .common import _save_model

        if getattr(trainer, "_export_tok", None) is None:
            trainer._export_tok = load_tokenizer(model_cfg.name, model_cfg.trust_remote_code)
        lora = dataclasses.replace(model_cfg.lora, merge=False)  # checkpoints keep adapters as adapters
        m = trainer.export_model()
        parts = [(m.policy, path), (m.critic, os.path.join(path, "critic"))] if hasattr(m, "critic") and \
            hasattr(m, "policy") else [(m, path)]
        for part, where in parts:
            if where != path and not hasattr(part, "save_pretrained"):
                continue  # a plain head (DRO's value head): its weights are in the checkpoint state
            os.makedirs(where, exist_ok=True)
            _save_model(part, trainer._export_tok, where, lora if hasattr(part, "peft_config") else LoraConfig(),
                        config if where == path else None, base=model_cfg.name)
    return export


def push_to_hub(folder: str, repo_id: str, log) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created if needed, private=False); one
    clear line when offline, without a token, or refused. Returns the repo URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise TrainingError("train.push_to_hub needs huggingface_hub: pip install huggingface_hub") from e
    try:
        api = HfApi()
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=getattr(url, "repo_id", repo_id), repo_type="model",
                          commit_message="rlhfkit: upload final model")
    except Exception as e:  # offline mode, no token, network, permissions: all end the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ("the Hub is unreachable in offline mode (HF_HUB_OFFLINE=1)" if "offline" in first.lower() else first)
        raise TrainingError(f"train.push_to_hub: could not push {folder} to {repo_id}: {hint}. The model is intact "
                            f"at {folder}; log in with `hf auth login` (or set HF_TOKEN) and upload it with "
                            f"`hf upload {repo_id} {folder}`") from e
    log(f"pushed {folder} to https://huggingface.co/{repo_id}")
    return str(url)


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                pass
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def finish(trainer, end: int, final_eval: dict) -> None:
    """The end of a run: a resumable checkpoint only with train.save_optimizer, final/ with its
    card, the optional push, and one line: bytes in the output dir and the final model's path."""
    cfg, acc, name = trainer.cfg, trainer.accelerator, trainer.recipe.name
    if cfg.save_optimizer or trainer.recipe.save is None:
        try:
            trainer._save(end)
        except TrainingError as e:
            if trainer.recipe.save is None:
                raise
            trainer.log(f"[{name}] {e}; writing final/ anyway")
    path = None
    with trainer.full_weights():  # FSDP / ZeRO-3: the consolidated weights
        if trainer.recipe.save is not None and acc.is_main_process:
            path = write_model(trainer, "final", final_eval, end)
    acc.wait_for_everyone()
    if acc.is_main_process:
        trainer.log(f"[{name}] wrote {human_bytes(dir_bytes(cfg.output_dir))} ({dir_bytes(cfg.output_dir)} bytes) "
                    f"to {cfg.output_dir}; final model: {path or trainer.last_good or 'none'}")
        if path and cfg.push_to_hub:
            push_to_hub(path, cfg.hub_model_id, trainer.log)


def save_final(model, tokenizer, cfg, examples, metrics: dict, log, step: int | None = None) -> str:
    """``final/`` of a recipe that runs its own loop (online DPO): the model, its card (data
    fingerprint of ``examples``), the bytes line and the optional push."""
    from ..config import to_dict
    from .checkpoint import atomic_dir
    from .common import _save_model
    from .rundir import examples_fingerprint, file_fingerprints

    out = cfg.train.output_dir
    path = os.path.join(out, "final")
    config = to_dict(cfg)
    record = {"config": config, "data": {"files": file_fingerprints(config), "examples": examples_fingerprint(examples)}}
    try:
        with atomic_dir(path) as tmp:
            _save_model(model, tokenizer, tmp, cfg.model.lora, cfg)
            modelcard.write_card(tmp, config=cfg, name=f"{os.path.basename(out)}/final", base=_base(cfg),
                                 record=record, metrics=metrics, step=step, total_steps=step,
                                 adapters=os.path.isfile(os.path.join(tmp, "adapter_config.json")))
    except (OSError, RuntimeError) as e:
        raise TrainingError(f"could not write {path}: {getattr(e, 'strerror', None) or e}; free disk space or fix "
                            "permissions") from e
    log(f"wrote {human_bytes(dir_bytes(out))} ({dir_bytes(out)} bytes) to {out}; final model: {path}")
    if cfg.train.push_to_hub:
        push_to_hub(path, cfg.train.hub_model_id, log)
    return path

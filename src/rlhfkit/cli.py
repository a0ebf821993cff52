"""``rlhfkit <command> --config recipe.yaml --section.key value ...``"""

from __future__ import annotations

import argparse
import logging
import os
import sys

COMMANDS = {
    "sft": ("rlhfkit.train.sft", "SFTConfig", "supervised fine-tuning (completion-only loss)"),
    "rm": ("rlhfkit.train.reward", "RMConfig", "reward model (Bradley-Terry, pairs or ranked lists)"),
    "pm": ("rlhfkit.train.pm", "PMConfig", "general preference model P(A > B | x) from pairs (antisymmetric, "
           "BCE); held-out accuracy, calibration, intransitivity"),
    "dpo": ("rlhfkit.train.dpo", "DPOConfig", "direct alignment: DPO, IPO, SimPO, ORPO, TDPO, ... "
            "(loss_type) on pairs or ranked lists"),
    "kto": ("rlhfkit.train.kto", "KTOConfig", "KTO on thumbs-up/down rows (or pairs split into them)"),
    "negatives": ("rlhfkit.train.negatives", "NegativesConfig", "alignment from prompts and undesired responses "
                  "only: NPO on them, or DPO/KTO against generated desired responses (objective)"),
    "dro": ("rlhfkit.train.dro", "DROConfig", "DRO (direct reward optimisation): single completions with a "
            "scalar reward or thumbs up/down, a learned value V(x), a squared loss"),
    "grpo": ("rlhfkit.train.rl", "RLConfig", "online RL without a critic: GRPO (default), Dr.GRPO, DAPO, "
             "RLOO, REINFORCE++ (advantage)"),
    "ppo": ("rlhfkit.train.rl", "PPOConfig", "PPO with a critic, a reward model/verifier and a KL-penalised "
            "reward (GAE, clipped surrogate and value loss, PPO-ptx)"),
    "online-dpo": ("rlhfkit.train.online_dpo", "OnlineDPOConfig", "online / iterative DPO: rounds of "
                   "sample -> label (verifier, reward model, function) -> DPO update"),
    "sppo": ("rlhfkit.train.nash", "SPPOConfig", "SPPO: self-play against a preference model (rlhfkit pm); "
             "log-ratios regressed on eta*(win-rate - 1/2) per iteration"),
    "dno": ("rlhfkit.train.nash", "DNOConfig", "DNO (batched on-policy): the preference model picks best-vs-worst "
            "sampled pairs, DPO-family loss against the iteration's policy"),
    "label": ("rlhfkit.label", "LabelConfig", "AI feedback: judge response pairs with an LLM (both orders) "
              "or reward sources and write preference data"),
    "eval": ("rlhfkit.evaluate", "EvalConfig", "evaluate a policy (rewards, win-rate vs a reference with a "
             "95 percent interval, KL, length, verifier accuracy) or a reward model (pair accuracy, "
             "calibration)"),
    "merge": ("rlhfkit.merge", "MergeConfig", "merge fine-tuned models or LoRA adapters of one base: linear, "
              "TIES, DARE, SLERP"),
    "serve-reward": ("rlhfkit.serve_reward", "ServeRewardConfig", "serve reward sources (reward model, "
                     "verifier, function) over HTTP with batching and a bounded queue; train with "
                     "--rewards http://HOST:PORT/score"),
}


def _overrides(rest: list[str], command: str) -> list[tuple[str, str]]:
    from .errors import ConfigError

    out, i = [], 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ConfigError(f"unexpected argument '{tok}'; overrides look like --train.lr 1e-5 "
                              f"(see `rlhfkit {command} --help`)")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            value, i = rest[i + 1], i + 2
        else:
            value, i = "true", i + 1  # a bare flag: --train.resume
        out.append((key.replace("-", "_"), value))
    return out


def _show(value) -> str:
    """A default as a user writes it in YAML: ``true``, ``1e-05``, ``""``, ``[arithmetic]``."""
    import dataclasses

    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        default = type(value)()
        changed = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                   if getattr(value, f.name) != getattr(default, f.name)}
        if type(value).__name__ == "RewardConfig" and value.type == "verifier" and set(changed) <= {"verifier", "weight"}:
            return value.verifier + (f"*{value.weight:g}" if value.weight != 1.0 else "")
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in changed.items()) + "}"
    return str(value)


def _config_help(cls) -> str:
    """Every key grouped by section, with its default as YAML and its TRL names."""
    from .aliases import aliases_of
    from .config import describe

    lines = ["configuration keys (YAML or --key value; TRL's names for a key are accepted too):"]
    inst, section = cls(), None
    entries = describe(cls)
    top = {}  # section groups in order of first appearance; a sub-section after its parent's keys
    for key, _, _ in entries:
        top.setdefault(key.split(".")[0] if "." in key else "", len(top))
    entries.sort(key=lambda e: (top[e[0].split(".")[0] if "." in e[0] else ""], e[0].count(".")))
    for key, _, doc in entries:
        sec = key.rpartition(".")[0] or "recipe"
        if sec != section:
            section = sec
            lines.append(f"\n{sec}:")
        obj = inst
        for part in key.split("."):
            obj = getattr(obj, part) if hasattr(obj, part) else getattr(obj, part + "_")  # async -> async_
        trl = aliases_of(cls, key)
        extra = f"; TRL: {', '.join(trl)}" if trl else ""
        lines.append(f"  --{key} (default {_show(obj)}{extra})" + (f"\n      {doc}" if doc else ""))
    return "\n".join(lines)


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("rlhfkit")
    except (ImportError, PackageNotFoundError):  # pragma: no cover - run from a source tree
        return "unknown"


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    import importlib

    from .errors import RlhfkitError

    parser = argparse.ArgumentParser(
        prog="rlhfkit", description="The RLHF system on Hugging Face models: SFT, reward models, "
        "and more. Every training command takes --config recipe.yaml plus --section.key value "
        "overrides.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rlhfkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, cls_name, doc) in COMMANDS.items():
        p = sub.add_parser(name, help=doc, add_help=False, description=doc)
        p.add_argument("--config", help="YAML recipe")
        p.add_argument("-h", "--help", action="store_true")
    q = sub.add_parser("quickstart", help="the whole pipeline on the embedded model, offline (CPU, minutes)")
    q.add_argument("--output_dir", default="runs/quickstart")
    q.add_argument("--threads", type=int, default=0)
    q.add_argument("--fast", action="store_true", help="fewer rows and steps (a smoke run)")
    pl = sub.add_parser("plot", help="PNG curves (reward, KL, length, loss, accuracy) from a run's metrics")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default="", help="output folder (default RUN_DIR/plots)")
    pl.add_argument("--smooth", type=float, default=0.0, help="EMA weight in [0, 1) for training curves, "
                    "the raw series faint behind (default 0 = off; 0.6 is a good start)")
    rp = sub.add_parser("report", help="one self-contained HTML file (tables, curves, sample responses) "
                        "for a run dir or a quickstart dir")
    rp.add_argument("run_dir")
    rp.add_argument("--out", default="", help="output file (default RUN_DIR/report.html)")
    rp.add_argument("--smooth", type=float, default=0.6, help="EMA weight in [0, 1) for training curves "
                    "(default 0.6; 0 = off)")
    ins = sub.add_parser("inspect", help="data-quality report of a preference file (pairs, listwise, thumbs): "
                         "ties, strength, length bias, duplicates, near-duplicates, prompt diversity, lengths")
    ins.add_argument("data", help="a .jsonl/.json/.parquet/.csv file (optionally .gz), a hub dataset name or a "
                     "studio project studio://DIR::PROJECT (its export plus agreement and label statistics)")
    ins.add_argument("--out", default="", help="folder for report.json and PNG plots (default: none, print only)")
    ins.add_argument("--rows", default="", help="row range 'start:stop' in file order (default all)")
    ins.add_argument("--split", default="train", help="split of a hub dataset (default train)")
    ins.add_argument("--columns", default="", help="rename fields first, 'src:dst,...' (as data.columns)")
    ins.add_argument("--strict", action="store_true", help="stop at the first row training would refuse "
                     "(default: count such rows, each with training's message, and leave them out)")
    ins.add_argument("--tokenizer", default="", help="also measure lengths in this model's tokens, e.g. "
                     "smollm2-135m (default: characters and words only)")
    ins.add_argument("--near_dup_threshold", type=float, default=0.9,
                     help="Jaccard similarity in (0, 1] of word-3-gram shingles (default 0.9)")
    sub.add_parser("configs", add_help=False, help="the recipes shipped with rlhfkit: list | show NAME | "
                   "path NAME (run one with --config NAME)")
    sub.add_parser("studio", add_help=False, help="human feedback: a labelling web app (pairwise, ranking, "
                   "thumbs, rating) whose labels export in the trainers' formats: studio serve | user | "
                   "project | export")
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _setup_logging()
    try:
        if args.command == "quickstart":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            from .quickstart import run_quickstart
            run_quickstart(args.output_dir, threads=args.threads, fast=args.fast)
            return 0
        if args.command == "plot":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            from .plot import plot_run
            plot_run(args.run_dir, args.out, smooth=args.smooth)
            return 0
        if args.command == "inspect":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            from .inspect import run_inspect
            run_inspect(args.data, out=args.out, tokenizer=args.tokenizer, rows=args.rows, split=args.split,
                        columns=args.columns, strict=args.strict,
                        near_dup_threshold=args.near_dup_threshold)
            return 0
        if args.command == "configs":
            from .shipped import main as configs_main
            return configs_main(rest)
        if args.command == "report":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            from .report import write_report
            write_report(args.run_dir, args.out or None, smooth=args.smooth)
            return 0
        if args.command == "studio":
            from .studio.cli import run as studio_run
            return studio_run(rest)
        mod_name, cls_name, doc = COMMANDS[args.command]
        module = importlib.import_module(mod_name)
        cls = getattr(module, cls_name)
        if args.help:
            print(f"usage: rlhfkit {args.command} [--config FILE] [--section.key VALUE ...]\n\n{doc}\n")
            print(_config_help(cls))
            return 0
        from .config import build_config
        from .shipped import resolve_config
        cfg = build_config(cls, resolve_config(args.config), _overrides(rest, args.command))
        from .train.loop import RUN_CONFIG
        token = RUN_CONFIG.set(cfg)  # recorded in each run dir, compared on resume
        try:
            module.run(cfg)
        finally:
            RUN_CONFIG.reset(token)
        return 0
    except RlhfkitError as e:
        print(f"rlhfkit {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"rlhfkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

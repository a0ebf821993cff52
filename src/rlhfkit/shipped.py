"""The recipes shipped inside the package (``rlhfkit/configs/*.yaml``, ``configs/accelerate/*.yaml``).

``rlhfkit configs list`` names them with the one-line description on each file's first line,
``rlhfkit configs show NAME`` prints one (to copy and edit), ``rlhfkit configs path NAME`` prints
where it is installed (e.g. for ``accelerate launch --config_file``), and ``--config NAME`` runs
one by its bare name. Shipped recipes read hub datasets; a line ``# offline: --data.path ...``
near the top names the local copy to pass instead when there is no network.
"""

from __future__ import annotations

import os
from importlib import resources

from .errors import ConfigError

SUFFIX = ".yaml"


def configs_dir() -> str:
    """The installed folder of the shipped recipes."""
    return str(resources.files("rlhfkit") / "configs")


def shipped_names() -> list[str]:
    """Every shipped config by name: ``sft_gsm8k``, ..., ``accelerate/fsdp`` (sorted, recipes first)."""
    root = configs_dir()
    out = []
    for sub in ("", "accelerate"):
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            out += sorted(os.path.join(sub, n[:-len(SUFFIX)]).replace(os.sep, "/")
                          for n in os.listdir(d) if n.endswith(SUFFIX))
    return out


def shipped_path(name: str) -> str:
    """The file of shipped config ``name`` (``sft_gsm8k`` or ``sft_gsm8k.yaml``); ConfigError if none."""
    base = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    names = shipped_names()
    if base not in names:
        from .config import did_you_mean

        raise ConfigError(f"no shipped config named '{name}'{did_you_mean(base, names)}; "
                          f"`rlhfkit configs list` shows them all")
    return os.path.join(configs_dir(), *base.split("/")) + SUFFIX


def description(path: str) -> str:
    """The first comment line of a config file, without its '#'."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line.strip():
                break
    return ""


def resolve_config(value: str | None) -> str | None:
    """``--config`` as given: a path that exists wins; a bare name (no path separator, no such file)
    is a shipped config; anything else is returned unchanged (and reported missing by the loader)."""
    if not value or os.path.exists(value) or "/" in value or os.sep in value:
        return value
    try:
        return shipped_path(value)
    except ConfigError as e:
        raise ConfigError(f"config file not found: {value}, and {e}") from None


def main(argv: list[str]) -> int:
    """``rlhfkit configs list | show NAME | path NAME``."""
    import argparse

    p = argparse.ArgumentParser(prog="rlhfkit configs", description="the recipes shipped with rlhfkit")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="every shipped config with its one-line description")
    for action, doc in (("show", "print a shipped config (copy it to edit)"),
                        ("path", "print where a shipped config is installed")):
        sp = sub.add_parser(action, help=doc)
        sp.add_argument("name", help="a name from `rlhfkit configs list`, e.g. sft_gsm8k")
    args = p.parse_args(argv)
    if args.action in (None, "list"):
        names = shipped_names()
        width = max(map(len, names), default=0)
        for n in names:
            print(f"{n:<{width}}  {description(shipped_path(n))}")
        return 0
    path = shipped_path(args.name)
    if args.action == "path":
        print(path)
    else:
        with open(path, encoding="utf-8") as f:
            print(f.read(), end="")
    return 0

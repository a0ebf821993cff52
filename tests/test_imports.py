"""Every module of the package imports (catches syntax errors and broken imports early)."""

import importlib
import pkgutil

import rlhfkit


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(rlhfkit.__path__, "rlhfkit.")]
    assert "rlhfkit.train.loop" in names and "rlhfkit.cli" in names
    for name in names:
        importlib.import_module(name)

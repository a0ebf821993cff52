"""train.return_freed_memory: freed tensor memory leaves the process at once (glibc)."""

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from rlhfkit.train import loop, sft
from test_recipes import data, quiet, sft_cfg  # noqa: F401  (module fixture)

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "gnu_get_libc_version"),
    reason="needs glibc")

PROBE = """
import sys, torch
from rlhfkit.train.loop import return_freed_memory
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "on":
    assert return_freed_memory()
torch.empty(2**22).fill_(1)  # a freed 16 MiB block: glibc's own threshold rises above 2 MiB
big, pins = [], []
for _ in range(100):
    big.append(torch.ones(2**19))  # 2 MiB each, 200 MiB in all
    pins.append(torch.ones(2**14)) # 64 KiB live blocks between them, so the heap cannot shrink
before = rss_mb()
big.clear()
print(before - rss_mb())
"""


def returned_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_blocks_leave_the_process_only_with_the_switch():
    assert returned_mb("off") < 50     # glibc's default keeps them resident in the heap
    assert returned_mb("on") > 180     # all 200 MiB go back


def test_the_trainer_applies_the_switch(tiny_dir, data, tmp_path, monkeypatch):  # noqa: F811
    calls = []
    monkeypatch.setattr(loop, "return_freed_memory", lambda: calls.append(1) or True)
    sft.build(sft_cfg(tiny_dir, data, tmp_path / "a", max_steps=1), log=quiet)
    assert calls == []
    sft.build(sft_cfg(tiny_dir, data, tmp_path / "b", max_steps=1, return_freed_memory=True), log=quiet)
    assert calls == [1]
    monkeypatch.setattr(loop, "return_freed_memory", lambda: False)
    with pytest.warns(UserWarning, match="return_freed_memory needs Linux with glibc"):
        sft.build(sft_cfg(tiny_dir, data, tmp_path / "c", max_steps=1, return_freed_memory=True), log=quiet)

"""A user reward module is imported only in the time-limited worker: one that exits or hangs at
import is reported with its module name and never ends or hangs rlhfkit itself."""

import subprocess
import sys
import textwrap
import time

import pytest

PROBE = textwrap.dedent('''
    import sys
    from rlhfkit.errors import ConfigError
    from rlhfkit.rewards import functions
    functions.STARTUP_TIMEOUT = 5.0
    try:
        functions.FunctionReward(sys.argv[1])
    except ConfigError as e:
        print("CONFIG ERROR:", e)
        sys.exit(7)
    print("NO ERROR")
''')


def _probe(tmp_path, module_src: str, ref: str):
    (tmp_path / "user_rewards_mod.py").write_text(module_src)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", PROBE, ref], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    return p, time.time() - t0


def test_reward_module_sys_exit_at_import_is_reported(tmp_path):
    p, _ = _probe(tmp_path, "import sys\nsys.exit(3)\ndef f(p, c, **k):\n    return [0.0] * len(c)\n",
                  "user_rewards_mod:f")
    assert p.returncode == 7, (p.stdout, p.stderr)
    assert "user_rewards_mod" in p.stdout and "exit" in p.stdout


def test_reward_module_that_hangs_at_import_is_reported(tmp_path):
    p, took = _probe(tmp_path, "import time\ntime.sleep(600)\ndef f(p, c, **k):\n    return []\n",
                     "user_rewards_mod:f")
    assert p.returncode == 7, (p.stdout, p.stderr)
    assert "user_rewards_mod" in p.stdout and "5 s" in p.stdout
    assert took < 60


def test_reward_module_scores_through_the_worker(tmp_path, monkeypatch):
    (tmp_path / "marker_rewards_mod.py").write_text(
        "def f(p, c, **k):\n    return [1.0] * len(c)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    from rlhfkit.rewards import FunctionReward

    src = FunctionReward("marker_rewards_mod:f")
    try:
        assert src.score(["q"], ["a"], [{}]).values == [1.0]
    finally:
        src.close()

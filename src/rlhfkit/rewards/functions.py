"""User reward functions, named as ``"package.module:function"`` and run in a worker process.

A function scores a batch and returns one real number per row; ``None`` means "no reward for
this row" (kept as nan, contributing 0, without an error). Every dataset field other than the
prompt arrives as a keyword argument holding a list over the batch (``None`` for rows lacking
it). Two calling conventions exist (:func:`call_style`):

* **TRL** ``fn(completions, prompts=None, **kwargs)``: called with keywords only,
  ``fn(prompts=..., completions=..., **columns)``. For a conversational prompt (a list of
  ``{"role", "content"}`` messages) the completion is a message list too,
  ``[{"role": "assistant", "content": text}]``, as TRL passes it; plain prompts get strings.
  A function without ``**kwargs`` gets only the arguments it names.
* **rlhfkit** ``fn(prompts, completions, **columns)``: called positionally, completions are
  always strings.

``signature: auto`` (the default) picks TRL when the function's first positional parameter is
named ``completions`` or it has no positional parameters (``def f(**kwargs)``), and rlhfkit
otherwise; ``signature: trl`` / ``rlhfkit`` in the reward's config forces one (entries given
through TRL's ``reward_funcs`` key use ``trl``). With plain-text prompts both conventions pass
the same values.

Functions are only ever imported by reference, never evaluated from code strings. The
reference is imported once when the source is built, so a typo is a ConfigError before
training starts. Calls then run in a persistent worker subprocess (``spawn`` context,
daemon, exits when the parent does) so that a hang can be stopped:

The worker does not re-import the parent's ``__main__`` (plain ``spawn`` would), so
scripts need no ``if __name__ == "__main__":`` guard. Being a daemon, the worker cannot
start processes of its own.

* a call that takes longer than ``timeout`` seconds kills the worker (a new one starts on
  the next call) and fails every row of that call with "timed out after X s";
* a call that raises is retried row by row, so the error names the failing row(s) and the
  other rows keep their values (a row that times out in the retry ends it: later rows fail
  as not retried, so one bad batch costs at most about two timeouts);
* a result that is not a list of real numbers of the right length fails every row with a
  message saying what came back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import multiprocessing as mp
import numbers
import os
import re
import sys
import traceback
import types
from typing import Any, Callable

from ..errors import ConfigError
from .base import SIGNATURES, RewardResult

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_REFERENCE = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)")
_HOW = "must be an importable module:function, e.g. 'my_rewards:length_penalty'"
STARTUP_TIMEOUT = 120.0
"""Seconds a new worker may take to start and import the user's module (not part of ``timeout``)."""


# --------------------------------------------------------------------------- references

def parse_reference(ref: str, where: str = "reward.fn") -> tuple[str, str]:
    """Split ``"pkg.mod:fn"`` into ``("pkg.mod", "fn")``; ConfigError if malformed."""
    m = _REFERENCE.fullmatch(ref.strip()) if isinstance(ref, str) else None
    if m is None:
        raise ConfigError(f"{where}: reward function '{ref}' {_HOW}")
    return m.group(1), m.group(2)


def load_function(ref: str, where: str = "reward.fn") -> Callable:
    """Import the callable named by ``ref``; ConfigError saying what is missing and how to fix."""
    module_name, attr = parse_reference(ref, where)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{where}: reward function '{ref}': module '{e.name or module_name}' "
                          f"not found; it {_HOW} (is the module on PYTHONPATH?)") from None
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # the module itself is broken
        what = (f"called sys.exit({e.code!r})" if isinstance(e, SystemExit)
                else f"raised {type(e).__name__}: {e}")
        raise ConfigError(f"{where}: reward function '{ref}': importing module '{module_name}' "
                          f"{what}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: reward function '{ref}': '{module_name}' has no "
                              f"attribute '{attr}'; it {_HOW} (check the name after ':')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}: reward function '{ref}' is a {type(obj).__name__}, not a "
                          f"function; it {_HOW}")
    return obj


def call_style(fn: Callable, signature: str = "auto") -> str:
    """``"trl"`` or ``"rlhfkit"``: how ``fn`` is called (see the module docstring for the rule)."""
    import inspect

    if signature != "auto":
        return signature
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: call it as before
        return "rlhfkit"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        return "trl"
    return "trl" if positional[0].name == "completions" else "rlhfkit"


def is_messages(prompt: Any) -> bool:
    """A conversational prompt: a list of ``{"role": ..., "content": ...}`` messages."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(m, dict) and "role" in m for m in prompt)


def trl_arguments(fn: Callable, prompts: list, completions: list[str], columns: dict) -> dict:
    """The keyword arguments of a TRL-style call: completions as assistant messages for
    conversational prompts; without ``**kwargs`` only what ``fn`` names."""
    import inspect

    comps = [[{"role": "assistant", "content": c}] if is_messages(p) else c
             for p, c in zip(prompts, completions)]
    kwargs = {**columns, "prompts": prompts, "completions": comps}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


# --------------------------------------------------------------------------- results

class BadResult(ValueError):
    """A reward function returned something other than one real number per row."""


def _describe(obj: Any) -> str:
    text = repr(obj)
    return f"{type(obj).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def check_values(result: Any, n: int) -> list[float | None]:
    """``result`` as a list of ``n`` floats (None kept); BadResult saying what was returned.

    Accepts lists, tuples and anything with ``tolist()`` (numpy arrays, torch tensors).
    """
    if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        raise BadResult(f"returned {_describe(result)}; expected a list of {n} numbers")
    if len(result) != n:
        raise BadResult(f"returned {len(result)} values for {n} rows; expected one number per "
                        "completion")
    out: list[float | None] = []
    for v in result:
        if v is None:
            out.append(None)
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            out.append(float(v))
        else:
            raise BadResult(f"returned {_describe(v)} among its values; expected real numbers")
    return out


def batch_columns(extras: list[dict], exclude: tuple[str, ...] = ("prompts", "completions")) -> dict:
    """Per-row dicts as ``{field: [value per row]}`` (None where a row lacks the field)."""
    keys: dict[str, None] = {}
    for e in extras:
        keys.update(dict.fromkeys(k for k in e if k not in exclude))
    return {k: [e.get(k) for e in extras] for k in keys}


def _exception_text(e: BaseException, where: bool = False) -> str:
    """``"ValueError: first line of the message"``; with ``where``, plus `` (at file.py:12)``
    for the innermost frame of the traceback."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    frames = traceback.extract_tb(e.__traceback__) if where else []
    if frames:
        text += f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    return text


# --------------------------------------------------------------------------- worker

def _worker_main(conn, ref: str, where: str = "reward.fn", signature: str = "auto") -> None:
    """Worker process: import ``ref``, report its calling convention with ``("ready", style)``,
    then answer ``(prompts, completions, columns)`` requests with ``("ok", values)``,
    ``("raised", text)`` or ``("bad", text)`` until ``None`` arrives or the parent goes away."""
    try:
        fn = load_function(ref, where)
        style = call_style(fn, signature)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", str(e)))
        return
    conn.send(("ready", style))
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return  # the parent exited
        if req is None:
            return
        prompts, completions, columns = req
        try:
            if style == "trl":
                result = fn(**trl_arguments(fn, prompts, completions, columns))
            else:
                result = fn(prompts, completions, **columns)
        except Exception as e:  # noqa: BLE001
            conn.send(("raised", _exception_text(e, where=True)))
            continue
        try:
            conn.send(("ok", check_values(result, len(completions))))
        except BadResult as e:
            conn.send(("bad", str(e)))
        except Exception as e:  # noqa: BLE001 - e.g. a tolist() that raises
            conn.send(("bad", f"returned a value that could not be read: {_exception_text(e)}"))


@contextlib.contextmanager
def _main_hidden():
    """Hide the parent's ``__main__`` while a worker is spawned, so the worker does not
    re-run the parent's script (which would start training again, or fail in scripts
    without an ``if __name__ == "__main__":`` guard). The worker needs only this module
    and the user's module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


@dataclasses.dataclass
class _Outcome:
    """What one call in the worker produced."""

    kind: str
    """ok | raised | bad | timeout | died."""
    payload: Any
    """The values for 'ok', else a one-line message."""


class FunctionReward:
    """A reward source calling a user function in a persistent worker process."""

    allows_missing = True  # a returned None means "no reward for this row" (nan, no error)

    def __init__(self, ref: str, *, name: str = "", timeout: float = 30.0, where: str = "reward.fn",
                 signature: str = "auto"):
        module_name, attr = parse_reference(ref, where)
        if signature not in SIGNATURES:
            raise ConfigError(f"{where}: signature must be one of {', '.join(SIGNATURES)}, got {signature!r}")
        self.ref, self.timeout, self.where, self.signature = ref, float(timeout), where, signature
        self.style = ""
        """'trl' or 'rlhfkit' once the worker has imported the function (:func:`call_style`)."""
        self.name = name or attr.rpartition(".")[2]
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        # the user's module is imported in the worker only (time-limited; an exit or a hang at
        # import cannot end or stall this process): start it now so a bad module fails here
        why = self._start()
        if why is not None:
            if why.startswith(where + ":"):
                raise ConfigError(why)
            raise ConfigError(f"{where}: reward function '{ref}': {why} while importing module "
                              f"'{module_name}'; check that importing it is quick and does not exit")

    # ----- worker lifecycle
    def _start(self) -> str | None:
        """Start the worker; None when it is ready, else a message why it is not."""
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.ref, self.where, self.signature), daemon=True,
                                 name=f"reward-{self.name}")
        with _main_hidden():
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        wait = STARTUP_TIMEOUT
        try:
            if not parent.poll(wait):
                self._stop(kill=True)
                return f"the reward worker did not start within {wait:g} s"
            kind, msg = parent.recv()
        except (EOFError, OSError):
            code = proc.exitcode
            self._stop(kill=True)
            return f"the reward worker exited while starting (exit code {code})"
        if kind != "ready":
            self._stop(kill=True)
            return msg
        self.style = msg
        return None

    def _stop(self, kill: bool = False) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        try:
            if not kill and proc.is_alive():
                conn.send(None)
                proc.join(2.0)
        except (OSError, BrokenPipeError):
            pass
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
        conn.close()

    def close(self) -> None:
        """Stop the worker process (a later ``score`` starts a new one)."""
        self._stop()

    def __del__(self):
        try:
            self._stop(kill=True)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ----- calls
    def _call(self, prompts: list, completions: list[str], columns: dict) -> _Outcome:
        """One call in the worker (started if needed), bounded by ``timeout``."""
        if self._proc is None or not self._proc.is_alive():
            self._stop(kill=True)
            why = self._start()
            if why is not None:
                return _Outcome("died", why)
        try:
            self._conn.send((prompts, completions, columns))
            if not self._conn.poll(self.timeout):
                self._stop(kill=True)
                return _Outcome("timeout", f"timed out after {self.timeout:g} s")
            reply = self._conn.recv()
        except (EOFError, OSError) as e:
            code = self._proc.exitcode if self._proc is not None else None
            self._stop(kill=True)
            return _Outcome("died", f"the reward worker exited unexpectedly (exit code {code}, "
                                    f"{type(e).__name__})")
        except Exception as e:  # noqa: BLE001 - e.g. a batch that cannot be pickled
            return _Outcome("bad", f"could not send the batch to the worker: {_exception_text(e)}")
        return _Outcome(reply[0], reply[1])

    def score(self, prompts: list, completions: list[str], extras: list[dict]) -> RewardResult:
        n = len(completions)
        if n == 0:
            return RewardResult(values=[], errors=[])
        columns = batch_columns(extras)
        out = self._call(list(prompts), list(completions), columns)
        if out.kind == "ok":
            return _result(out.payload, {})
        if out.kind != "raised" or n == 1:
            return _result([None] * n, {i: out.payload for i in range(n)})
        return self._score_rows(prompts, completions, columns)

    def _score_rows(self, prompts: list, completions: list[str], columns: dict) -> RewardResult:
        """Row-by-row retry after a failed batched call."""
        n = len(completions)
        values: list[float | None] = [None] * n
        failed: dict[int, str] = {}
        for i in range(n):
            out = self._call([prompts[i]], [completions[i]], {k: [v[i]] for k, v in columns.items()})
            if out.kind == "ok":
                values[i] = out.payload[0]
            else:
                failed[i] = out.payload
                if out.kind in ("timeout", "died"):
                    why = f"not retried: the row-by-row retry stopped at row {i} ({out.payload})"
                    failed.update({j: why for j in range(i + 1, n)})
                    break
        return _result(values, failed)


def _result(values: list[float | None], failed: dict[int, str]) -> RewardResult:
    """RewardResult with nan for failed, None and non-finite values (the latter reported)."""
    out: list[float] = []
    errors: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        if i in failed:
            errors.append((i, failed[i]))
            out.append(math.nan)
        elif v is None:
            out.append(math.nan)  # "no reward for this row"
        elif not math.isfinite(v):
            errors.append((i, f"returned a non-finite value ({v})"))
            out.append(math.nan)
        else:
            out.append(v)
    return RewardResult(values=out, errors=errors)

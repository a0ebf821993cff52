"""A reward source on another machine: the client of ``rlhfkit serve-reward``.

``rewards: [http://HOST:PORT/score]`` (or ``{type: remote, url: ..., timeout: ..., retries: ...}``)
scores every batch through the server with one POST of JSON

    {"prompts": [...], "completions": [...], "extras": [{...}, ...]}

answered by ``{"values": [v or null, ...], "errors": [[row, message], ...]}``. A call never hangs:
each try has ``timeout`` seconds (connect and read); a busy server (HTTP 503 / 429, its queue full)
or a lost connection is retried up to ``retries`` times with exponential backoff (``Retry-After``
honoured, capped); when the tries are spent, every row of the batch fails with a message naming
the server and the last error, so training goes on (those rows score 0 and are reported). As for
any source, a server that fails every row of the *first* batch stops the run
(:func:`rlhfkit.rewards.base.check_first_batch`): a run should not start on a dead server.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request

from ..errors import ConfigError
from .base import RewardResult

RETRY_STATUS = (429, 502, 503, 504)
"""HTTP statuses that mean "busy or momentarily away": retried."""
MAX_BACKOFF = 10.0


def check_url(url: str, where: str = "reward") -> str:
    """The URL, or a ConfigError naming ``where`` when it is not http(s)://host[:port]/path."""
    try:
        u = urllib.parse.urlparse(url)
        port = u.port
    except ValueError as e:
        raise ConfigError(f"{where}.url {url!r} is not a valid URL ({e}); use e.g. http://127.0.0.1:8765/score") \
            from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"{where}.url {url!r} must be http://HOST[:PORT]/PATH or https://..., e.g. "
                          "http://127.0.0.1:8765/score (the address `rlhfkit serve-reward` prints)")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}.url {url!r}: port must be in [1, 65535]")
    return url


class RemoteReward:
    """:class:`~rlhfkit.rewards.base.RewardSource` scoring through an HTTP reward server."""

    def __init__(self, url: str, name: str = "remote", timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5):
        self.url, self.name = check_url(url), name
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)

    def score(self, prompts: list, completions: list[str], extras: list[dict]) -> RewardResult:
        n = len(completions)
        if n == 0:
            return RewardResult([])
        body = json.dumps({"prompts": prompts, "completions": completions, "extras": extras},
                          default=str).encode()
        last = ""
        for attempt in range(self.retries + 1):
            wait = min(self.backoff * 2 ** attempt, MAX_BACKOFF)
            try:
                req = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return self._parse(resp.read(), n)
            except urllib.error.HTTPError as e:
                detail = _error_text(e)
                last = f"HTTP {e.code}" + (f": {detail}" if detail else "")
                if e.code not in RETRY_STATUS:
                    break  # the request itself is wrong: another try gives the same answer
                after = e.headers.get("Retry-After") if e.headers else None
                if after and after.replace(".", "", 1).isdigit():
                    wait = min(float(after), MAX_BACKOFF)
            except (urllib.error.URLError, OSError, ValueError) as e:  # refused, reset, timed out, bad JSON
                last = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
            if attempt < self.retries:
                time.sleep(wait)
        msg = (f"reward server {self.url} gave no scores after {self.retries + 1} tries ({last}); check that "
               "`rlhfkit serve-reward` runs there and is reachable, or raise timeout/retries")
        return RewardResult([float("nan")] * n, [(i, msg) for i in range(n)])

    def _parse(self, raw: bytes, n: int) -> RewardResult:
        try:
            data = json.loads(raw)
            values = [float("nan") if v is None else float(v) for v in data["values"]]
            errors = [(int(r), str(m)) for r, m in data.get("errors", [])]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"the reply is not a reward server's ({type(e).__name__}: {e})") from None
        if len(values) != n or any(not 0 <= r < n for r, _ in errors):
            raise ValueError(f"the reply has {len(values)} values for {n} rows")
        failed = {r for r, _ in errors}
        errors += [(i, "the server returned no value for this row") for i, v in enumerate(values)
                   if math.isnan(v) and i not in failed]
        return RewardResult(values, errors)


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read()).get("error", ""))[:300]
    except Exception:
        return ""

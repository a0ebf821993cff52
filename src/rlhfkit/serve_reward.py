"""``rlhfkit serve-reward``: any reward source served over HTTP, with batching and a bounded queue.

    rlhfkit serve-reward --rewards model:runs/rm/final --port 8765        # on the reward machine
    rlhfkit grpo ... --rewards http://RM-HOST:8765/score                  # on the trainer

This is how a large reward model gets a machine of its own. The server holds the configured
sources (verifiers, user functions, reward models; several are combined with their weights, as
in training) and answers

* ``POST /score`` with ``{"prompts": [...], "completions": [...], "extras": [...]}`` (``extras``
  optional): ``{"values": [v | null, ...], "errors": [[row, message], ...]}``, a value per row,
  ``null`` where the row failed;
* ``GET /health``: ``{"ok": true, "queued_rows": ..., "requests": ..., "batches": ..., ...}``.

Requests wait in a queue bounded by ``queue_rows`` rows; one worker thread takes the waiting
requests, up to ``max_batch`` rows (waiting at most ``max_wait_ms`` for more to arrive), scores
them in one call and answers each with its own rows. A request that does not fit in the queue
is answered at once with 503 and ``Retry-After`` (back-pressure: the client backs off and
retries, :mod:`rlhfkit.rewards.remote`); a request not scored within ``request_timeout``
seconds gets 504. Bodies are checked (JSON object, lists of equal length, at most ``queue_rows``
rows, at most ``max_body_mb``) and a bad one gets 400/413 with the reason. A failure of the
sources on a batch fails that batch's rows with the message; the server keeps serving. The
server binds to 127.0.0.1 unless ``host`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .config import check_range
from .errors import ConfigError
from .rewards.base import CombinedReward, RewardConfig, build_rewards, reward_config_from


@dataclasses.dataclass
class ServeRewardConfig:
    rewards: list[RewardConfig] = dataclasses.field(default_factory=lambda: [RewardConfig()])
    """The sources to serve (shorthands as in training: arithmetic, model:PATH, fn:pkg.mod:fn, ...)."""
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 = every interface; the default serves this machine only)."""
    port: int = 8765
    """TCP port (0 = any free port, printed at start)."""
    max_batch: int = 64
    """Most rows scored in one call of the sources."""
    max_wait_ms: float = 5.0
    """How long the worker waits for more requests to fill a batch, in milliseconds."""
    queue_rows: int = 4096
    """Most rows waiting; a request that does not fit is refused with 503 (back-pressure)."""
    request_timeout: float = 300.0
    """Seconds a request may wait to be scored before it is answered 504."""
    max_body_mb: float = 64.0
    """Largest request body in MB (413 beyond it)."""

    def validate(self, p: str = "") -> None:
        check_range(p + "port", self.port, lo=0, hi=65535)
        check_range(p + "max_batch", self.max_batch, lo=1)
        check_range(p + "max_wait_ms", self.max_wait_ms, lo=0, hi=60_000)
        check_range(p + "queue_rows", self.queue_rows, lo=1)
        check_range(p + "request_timeout", self.request_timeout, lo=0, lo_open=True)
        check_range(p + "max_body_mb", self.max_body_mb, lo=0, lo_open=True)
        if not self.host:
            raise ConfigError(f"{p}host is empty; use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
        if not self.rewards:
            raise ConfigError(f"{p}rewards is empty; give the sources to serve, e.g. --rewards model:runs/rm/final")


class _Job:
    def __init__(self, prompts, completions, extras):
        self.prompts, self.completions, self.extras = prompts, completions, extras
        self.done = threading.Event()
        self.values: list = []
        self.errors: list = []


class RewardServer:
    """The HTTP server and its batching worker around a :class:`CombinedReward` (or any object
    with ``score(prompts, completions, extras) -> CombinedScores``)."""

    def __init__(self, reward, cfg: ServeRewardConfig, log=print):
        self.reward, self.cfg, self.log = reward, cfg, log
        self.jobs: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.queued_rows = 0
        self.stats = {"requests": 0, "rows": 0, "batches": 0, "refused": 0, "timed_out": 0, "failed_rows": 0}
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # one line per request would drown the trainer's logs
                pass

            def do_GET(self):
                if self.path.rstrip("/") in ("/health", ""):
                    with server.lock:
                        body = {"ok": True, "queued_rows": server.queued_rows, **server.stats}
                    self._send(200, body)
                else:
                    self._send(404, {"error": f"no such path {self.path}; use POST /score or GET /health"})

            def do_POST(self):
                if self.path.rstrip("/") != "/score":
                    self._send(404, {"error": f"no such path {self.path}; use POST /score"})
                    return
                code, body, headers = server.handle_score(self.headers, self.rfile)
                self._send(code, body, headers)

            def _send(self, code, body, headers=None):
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer((cfg.host, cfg.port), Handler)
        self.httpd.daemon_threads = True
        self.worker = threading.Thread(target=self._work, name="reward-batcher", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/score"

    # ------------------------------------------------------------------ requests
    def handle_score(self, headers, rfile) -> tuple[int, dict, dict]:
        try:
            size = int(headers.get("Content-Length", ""))
        except ValueError:
            return 411, {"error": "a Content-Length header is required"}, {}
        if size > self.cfg.max_body_mb * 1e6:
            return 413, {"error": f"body of {size} bytes is over max_body_mb={self.cfg.max_body_mb}"}, {}
        try:
            data = json.loads(rfile.read(size))
            prompts, completions = data["prompts"], data["completions"]
            extras = data.get("extras") or [{} for _ in completions]
            if not (isinstance(prompts, list) and isinstance(completions, list) and isinstance(extras, list)):
                raise TypeError("prompts, completions and extras must be lists")
            if not len(prompts) == len(completions) == len(extras):
                raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions and {len(extras)} "
                                 "extras; give one of each per row")
            if not all(isinstance(c, str) for c in completions) or not all(isinstance(e, dict) for e in extras):
                raise TypeError("completions must be strings and extras objects")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return 400, {"error": f"bad request body ({type(e).__name__}: {e}); send JSON "
                                  '{"prompts": [...], "completions": [...], "extras": [...]}'}, {}
        n = len(completions)
        if n > self.cfg.queue_rows:
            return 413, {"error": f"{n} rows in one request; this server queues at most queue_rows="
                                  f"{self.cfg.queue_rows}: send smaller batches"}, {}
        job = _Job(prompts, completions, extras)
        with self.lock:
            if self.queued_rows + n > self.cfg.queue_rows:
                self.stats["refused"] += 1
                return 503, {"error": f"busy: {self.queued_rows} rows queued (queue_rows={self.cfg.queue_rows})"}, \
                    {"Retry-After": "1"}
            self.queued_rows += n
            self.stats["requests"] += 1
        self.jobs.put(job)
        if not job.done.wait(self.cfg.request_timeout):
            with self.lock:
                self.stats["timed_out"] += 1
            return 504, {"error": f"not scored within request_timeout={self.cfg.request_timeout} s"}, {}
        return 200, {"values": job.values, "errors": job.errors}, {}

    # ------------------------------------------------------------------ the batching worker
    def _next_batch(self) -> list[_Job]:
        try:
            first = self.jobs.get(timeout=0.2)
        except queue.Empty:
            return []
        jobs, rows = [first], len(first.completions)
        deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
        while rows < self.cfg.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            rows += len(job.completions)
        return jobs

    def _work(self) -> None:
        while not self.stopping.is_set():
            jobs = self._next_batch()
            if jobs:
                self._score(jobs)

    def _score(self, jobs: list[_Job]) -> None:
        prompts = [p for j in jobs for p in j.prompts]
        completions = [c for j in jobs for c in j.completions]
        extras = [e for j in jobs for e in j.extras]
        n = len(completions)
        try:
            res = self.reward.score(prompts, completions, extras)
            failed = [any(not math.isfinite(v[i]) for v in res.per_source.values()) for i in range(n)]
            values = [None if f else float(t) for t, f in zip(res.total, failed)]
            why = "; ".join(res.errors)[:500] or "a reward source gave no value"
            for line in res.errors:
                self.log(f"[serve-reward] {line}")
        except Exception as e:  # the sources failed on the whole batch: its rows fail, the server goes on
            values, failed = [None] * n, [True] * n
            why = f"{type(e).__name__}: {e}"[:500]
            self.log(f"[serve-reward] scoring a batch of {n} rows failed: {why}")
        i = 0
        for j in jobs:
            k = len(j.completions)
            j.values = values[i:i + k]
            j.errors = [[r, why] for r in range(k) if failed[i + r]]
            i += k
        with self.lock:
            self.queued_rows -= n
            self.stats["rows"] += n
            self.stats["batches"] += 1
            self.stats["failed_rows"] += sum(failed)
        for j in jobs:
            j.done.set()

    # ------------------------------------------------------------------ life
    def start(self) -> "RewardServer":
        self.worker.start()
        threading.Thread(target=self.httpd.serve_forever, name="reward-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.worker.join(timeout=5)


def run(cfg: ServeRewardConfig, log=print) -> None:
    cfg.validate()
    cfg.rewards = [reward_config_from(r, f"rewards[{i}]") for i, r in enumerate(cfg.rewards)]
    reward: CombinedReward = build_rewards(cfg.rewards)
    try:
        server = RewardServer(reward, cfg, log)
    except OSError as e:
        reward.close()
        raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e}); pick another --port "
                          "or stop what holds it") from None
    server.start()
    log(f"[serve-reward] serving {', '.join(reward.names)} at {server.address} (max_batch {cfg.max_batch}, "
        f"queue_rows {cfg.queue_rows}); train with --rewards {server.address}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("[serve-reward] stopping")
    finally:
        server.stop()
        reward.close()

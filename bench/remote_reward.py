"""The reward server under load from a bounded loopback client, then killed mid-run.

    python bench/remote_reward.py --clients 8 --rows 16 --seconds 20

Starts ``rlhfkit serve-reward`` (the arithmetic verifier by default) in its own process, then
``--clients`` threads each send requests of ``--rows`` rows back to back for ``--seconds``
(bounded: at most ``--clients`` requests in flight). Reports requests/s, rows/s, latency
p50/p99, 503 refusals and that every row sent came back with a value (nothing lost). Then
it kills the server (SIGKILL) while a client keeps scoring and reports how long the failing
batches took and their row errors (a dead server costs bounded time, never a hang).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import threading
import time

from rlhfkit.rewards.remote import RemoteReward


def start_server(reward: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cli", "serve-reward", "--rewards", reward,
                             "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    line = ""
    while "serving" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise SystemExit("the server did not start")
    return proc, line.split(" at ")[1].split()[0]


def rows(k: int, seed: int):
    prompts = [f"What is {seed + i} + {i}?" for i in range(k)]
    comps = [f"The answer is {seed + 2 * i}." if i % 3 else "The answer is -1." for i in range(k)]
    return prompts, comps, [{"answer": seed + 2 * i} for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reward", default="arithmetic")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max_batch", type=int, default=64)
    ap.add_argument("--queue_rows", type=int, default=4096)
    args = ap.parse_args()
    proc, url = start_server(args.reward, ["--max_batch", str(args.max_batch), "--queue_rows", str(args.queue_rows)])
    lat, sent, got, wrong, failed = [], [0], [0], [0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def client(c: int) -> None:
        src = RemoteReward(url, timeout=30, retries=5, backoff=0.05)
        n = 0
        while time.monotonic() < stop:
            p, comps, ex = rows(args.rows, c * 100_000 + n)
            t0 = time.perf_counter()
            res = src.score(p, comps, ex)
            dt = time.perf_counter() - t0
            want = [0.0 if i % 3 == 0 else 1.0 for i in range(args.rows)]
            with lock:
                lat.append(dt)
                sent[0] += args.rows
                got[0] += sum(not math.isnan(v) for v in res.values)
                failed[0] += len(res.errors)
                wrong[0] += sum(v != w for v, w in zip(res.values, want) if not math.isnan(v))
            n += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    import json
    import urllib.request
    health = json.loads(urllib.request.urlopen(url.replace("/score", "/health")).read())
    print(f"load: {args.clients} clients x {args.rows} rows/request for {wall:.1f} s: {len(lat) / wall:.1f} requests/s, "
          f"{sent[0] / wall:.0f} rows/s; latency p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms")
    print(f"rows sent {sent[0]}, values back {got[0]}, row errors {failed[0]}, wrong values {wrong[0]}; server: "
          f"{health['requests']} requests in {health['batches']} batches ({health['rows'] / max(health['batches'], 1):.1f} "
          f"rows/batch), {health['refused']} refused (503), {health['timed_out']} timed out")

    # killed mid-run: a client keeps scoring through the kill
    src = RemoteReward(url, timeout=2.0, retries=2, backoff=0.1)
    log = []
    killer = threading.Timer(1.0, lambda: os.kill(proc.pid, signal.SIGKILL))
    killer.start()
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        p, comps, ex = rows(args.rows, 7)
        t = time.perf_counter()
        res = src.score(p, comps, ex)
        log.append((time.perf_counter() - t, len(res.errors)))
    proc.wait()
    ok = [d for d, e in log if e == 0]
    bad = [d for d, e in log if e > 0]
    print(f"killed after 1 s: {len(ok)} batches scored, then {len(bad)} batches failed with "
          f"{sum(e for _, e in log)} row errors, each in {max(bad) if bad else 0:.2f} s at most (3 tries); "
          f"message: {res.errors[0][1][:120] if res.errors else '-'}")


if __name__ == "__main__":
    main()

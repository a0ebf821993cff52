"""Remote rewards: ``rlhfkit serve-reward`` and the ``http://`` reward source. Values equal the
in-process source's; concurrent requests are batched and each gets its own rows; a full queue
answers 503 and the client backs off and retries; a dead, slow or wrong server gives row errors
in bounded time, never a hang; bad bodies and settings get clear messages."""

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.rewards.base import (CombinedReward, CombinedScores, RewardResult, build_rewards,
                                  reward_config_from)
from rlhfkit.rewards.remote import RemoteReward
from rlhfkit.serve_reward import RewardServer, ServeRewardConfig


class LengthSource:
    """Reward = number of characters; rows whose completion is 'FAIL' fail."""

    name = "length"

    def __init__(self, delay: float = 0.0):
        self.delay, self.calls = delay, []

    def score(self, prompts, completions, extras):
        self.calls.append(len(completions))
        time.sleep(self.delay)
        errs = [(i, "asked to fail") for i, c in enumerate(completions) if c == "FAIL"]
        return RewardResult([float("nan") if c == "FAIL" else float(len(c)) for c in completions], errs)


def serve(source, **kw):
    cfg = ServeRewardConfig(port=0, **kw)
    return RewardServer(CombinedReward([source]), cfg, log=lambda *a: None).start()


@pytest.fixture
def server():
    made = []

    def make(source, **kw):
        s = serve(source, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def test_values_equal_the_in_process_verifier(server):
    local = build_rewards(["arithmetic"])
    s = RewardServer(local, ServeRewardConfig(port=0), log=lambda *a: None).start()
    try:
        prompts = ["What is 2 + 2?", "What is 3 + 4?", "What is 5 + 5?"]
        comps = ["The answer is 4.", "The answer is 8.", "It is 10. The answer is 10."]
        extras = [{"answer": 4}, {"answer": 7}, {"answer": 10}]
        want = build_rewards(["arithmetic"]).score(prompts, comps, extras).total
        remote = build_rewards([s.address]).score(prompts, comps, extras)
        assert remote.total == want == [1.0, 0.0, 1.0] and remote.errors == []
    finally:
        s.stop()


def test_concurrent_requests_are_batched_and_each_gets_its_rows(server):
    src = LengthSource(delay=0.05)
    s = server(src, max_batch=64, max_wait_ms=50)
    results = {}

    def client(k):
        comps = ["x" * (k * 10 + j) for j in range(3)]
        results[k] = RemoteReward(s.address).score(["p"] * 3, comps, [{}] * 3)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, res in results.items():
        assert res.values == [float(k * 10 + j) for j in range(3)] and res.errors == []
    health = json.loads(urllib.request.urlopen(s.address.replace("/score", "/health")).read())
    assert health["requests"] == 12 and health["rows"] == 36
    assert health["batches"] == len(src.calls) < 12 and max(src.calls) > 3  # several requests per call


def test_failed_rows_come_back_as_row_errors(server):
    s = server(LengthSource())
    res = RemoteReward(s.address).score(["p", "p", "p"], ["ab", "FAIL", "abcd"], [{}] * 3)
    assert res.values[0] == 2.0 and math.isnan(res.values[1]) and res.values[2] == 4.0
    assert [r for r, _ in res.errors] == [1] and "asked to fail" in res.errors[0][1]


def test_full_queue_is_refused_with_503_and_the_client_retries(server):
    s = server(LengthSource(delay=0.6), queue_rows=2, max_batch=2)
    first = threading.Thread(target=lambda: RemoteReward(s.address).score(["p"] * 2, ["aa", "bb"], [{}] * 2))
    first.start()
    time.sleep(0.2)  # the first request fills the queue
    req = urllib.request.Request(s.address, data=json.dumps({"prompts": ["p"], "completions": ["c"]}).encode(),
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 503 and e.value.headers["Retry-After"] == "1" and "busy" in e.value.read().decode()
    # no retries: the rows fail at once with the reason; with retries the request gets through
    t0 = time.monotonic()
    res = RemoteReward(s.address, retries=0).score(["p"], ["abc"], [{}])
    assert time.monotonic() - t0 < 1.0 and math.isnan(res.values[0]) and "HTTP 503" in res.errors[0][1]
    res = RemoteReward(s.address, retries=3, backoff=0.2).score(["p"], ["abc"], [{}])
    assert res.values == [3.0] and res.errors == []
    first.join()


def test_dead_server_gives_row_errors_in_bounded_time():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    t0 = time.monotonic()
    res = RemoteReward(f"http://127.0.0.1:{port}/score", retries=2, backoff=0.05).score(["p"] * 2, ["a", "b"],
                                                                                        [{}] * 2)
    assert time.monotonic() - t0 < 5
    assert all(math.isnan(v) for v in res.values) and [r for r, _ in res.errors] == [0, 1]
    msg = res.errors[0][1]
    assert f"127.0.0.1:{port}" in msg and "3 tries" in msg and "serve-reward" in msg


def test_slow_server_times_out_per_try(server):
    s = server(LengthSource(delay=3.0))
    t0 = time.monotonic()
    res = RemoteReward(s.address, timeout=0.3, retries=1, backoff=0.05).score(["p"], ["abc"], [{}])
    assert time.monotonic() - t0 < 2.0 and math.isnan(res.values[0]) and "timed out" in res.errors[0][1]


def test_server_dying_mid_run_fails_rows_and_training_goes_on(server):
    """The first batch scores; after the server stops, batches fail row by row (no exception:
    only a source that fails its whole *first* batch stops a run)."""
    s = server(LengthSource())
    combined = build_rewards([{"type": "remote", "url": s.address, "retries": 1, "timeout": 1.0}])
    first = combined.score(["p", "p"], ["ab", "abc"], [{}, {}])
    assert first.total == [2.0, 3.0]
    s.stop()
    later = combined.score(["p", "p"], ["ab", "abc"], [{}, {}])
    assert later.total == [0.0, 0.0] and later.errors and "gave no scores" in later.errors[0]


def test_bad_bodies_are_refused_with_reasons(server):
    s = server(LengthSource(), queue_rows=4)

    def post(body):
        req = urllib.request.Request(s.address, data=body if isinstance(body, bytes) else json.dumps(body).encode(),
                                     method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())["error"]
        return 200, ""
    assert post(b"not json")[0] == 400
    code, msg = post({"prompts": ["a"], "completions": ["x", "y"]})
    assert code == 400 and "1 prompts, 2 completions" in msg
    code, msg = post({"prompts": ["a"] * 5, "completions": ["x"] * 5})
    assert code == 413 and "queue_rows=4" in msg
    code, msg = post({"prompts": ["a"], "completions": [3]})
    assert code == 400 and "completions must be strings" in msg


def test_reward_config_accepts_urls_and_validates_them():
    cfg = reward_config_from("http://127.0.0.1:8765/score*0.5")
    assert (cfg.type, cfg.url, cfg.weight) == ("remote", "http://127.0.0.1:8765/score", 0.5)
    for bad, match in (({"type": "remote", "url": "ftp://x/score"}, "must be http"),
                       ({"type": "remote", "url": ""}, "must be http"),
                       ({"type": "remote", "url": "http://h:99999/score"}, "(?i)port"),
                       ({"type": "remote", "url": "http://h/score", "retries": -1}, "retries"),
                       ({"type": "remote", "url": "http://h/score", "timeout": 0}, "timeout")):
        with pytest.raises(ConfigError, match=match):
            reward_config_from(bad, "rewards[0]")
    with pytest.raises(ConfigError, match="max_batch"):
        ServeRewardConfig(max_batch=0).validate()
    with pytest.raises(ConfigError, match="port"):
        ServeRewardConfig(port=70000).validate()


def test_cli_serves_and_binds_loopback(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cli", "serve-reward", "--rewards", "arithmetic",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + 120
        while time.time() < deadline and "serving" not in line:
            line = proc.stdout.readline()
        assert "serving arithmetic at http://127.0.0.1:" in line
        url = line.split(" at ")[1].split()[0]
        res = RemoteReward(url).score(["What is 1 + 1?"], ["The answer is 2."], [{"answer": 2}])
        assert res.values == [1.0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""``online-dpo --labeller studio`` end to end on a tiny model: a thread plays the human over HTTP
(logs in as an annotator, ranks every round's samples longest first); the pairs trained on are
the ones its labels imply, the DPO loss on them falls; a round that times out with too few labels
stops with a checkpoint, and the resumed round reads the project it published (no second
publication) and trains on what is labelled; bad settings."""

import json
import math
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from studio_helpers import SRC, live_server

from rlhfkit.config import ModelConfig, TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.studio import db
from rlhfkit.studio.human_loop import LabelsMissing, StudioLabellerConfig
from rlhfkit.train import online_dpo

BETA = 0.1


def text_len(response) -> int:
    """Characters of a response (a conversational one is a list of messages)."""
    return len(response) if isinstance(response, str) else sum(len(m["content"]) for m in response)


def ranks_longest_first(responses: list) -> list[int]:
    """1 = the longest text; equal lengths share a rank (dense ranks)."""
    lengths = [text_len(r) for r in responses]
    distinct = sorted(set(lengths), reverse=True)
    return [distinct.index(x) + 1 for x in lengths]


class Human(threading.Thread):
    """An annotator over HTTP: logs in with its token, then labels every item of the projects
    ``allowed(name)`` accepts, as they appear; ``limit``: stop after that many labels."""

    def __init__(self, url, token, kind="ranking", allowed=lambda name: True, limit=None):
        super().__init__(daemon=True)
        self.url, self.token, self.kind, self.allowed, self.limit = url, token, kind, allowed, limit
        self.stop, self.labelled, self.error = threading.Event(), [], None

    def label(self, responses):
        if self.kind == "ranking":
            return {"ranks": ranks_longest_first(responses)}
        a, b = text_len(responses[0]), text_len(responses[1])
        return {"choice": "A" if a > b else "B" if b > a else "tie"}

    def run(self):
        try:
            with httpx.Client(base_url=self.url, timeout=30) as c:
                r = c.post("/api/login", json={"token": self.token})  # the cookie session of the pages
                assert r.status_code == 200, r.text
                while not self.stop.is_set():
                    busy = False
                    for p in c.get("/api/projects").json()["projects"]:
                        if not self.allowed(p["name"]):
                            continue
                        while (self.limit is None or len(self.labelled) < self.limit) and \
                                (it := c.get(f"/api/projects/{p['name']}/next").json()["item"]) is not None:
                            r = c.post(f"/api/projects/{p['name']}/items/{it['id']}/label",
                                       json=self.label(it["responses"]))
                            assert r.status_code == 201, r.text
                            self.labelled.append((p["name"], it["id"]))
                            busy = True
                    if not busy:
                        time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.fixture
def studio_dir(tmp_path):
    directory = str(tmp_path / "studio")
    engine = db.open_db(directory)
    tokens = {"human": db.add_user(engine, "human"), "other": db.add_user(engine, "other")}
    return engine, directory, tokens


def config(tiny_dir, out, directory, **studio):
    s = dict(dir=directory, project="od", annotators="human", timeout_s=120.0, poll_s=0.1)
    s.update(studio)
    cfg = online_dpo.OnlineDPOConfig(
        model=ModelConfig(name=tiny_dir), task="arithmetic", task_size=16, task_eval_size=2, rounds=2,
        prompts_per_round=4, eval_samples=0, beta=BETA, labeller="studio", studio=StudioLabellerConfig(**s),
        train=TrainConfig(output_dir=str(out), batch_size=2, lr=2e-3, progress=False, tensorboard=False,
                          warmup_ratio=0.0, lr_scheduler="constant", eval_steps=0))
    cfg.rollout.num_generations, cfg.rollout.max_new_tokens = 3 if s.get("kind", "ranking") == "ranking" else 2, 8
    return cfg


def record_pairs(monkeypatch):
    seen = {}
    orig = online_dpo.OnlineDPO.train_round

    def spy(self, model, pairs, step, update):
        seen[step] = [(tuple(p.prompt), tuple(p.completions[0]), tuple(p.completions[1])) for p in pairs]
        return orig(self, model, pairs, step, update)

    monkeypatch.setattr(online_dpo.OnlineDPO, "train_round", spy)
    return seen


def expected_pairs(engine, name):
    """From the stored texts, independently of the aggregation code: the first longest against
    the first shortest response of every labelled item (no pair when all lengths are equal or a
    side is empty)."""
    _, items, labels = db.project_labels(engine, name)
    labelled = {lab["item_id"] for lab in labels if not lab["skipped"]}
    out = []
    for it in items:
        if it["id"] not in labelled:
            continue
        lengths = [text_len(r) for r in it["responses"]]
        hi, lo = lengths.index(max(lengths)), lengths.index(min(lengths))
        ids = it["meta"]["completion_ids"]
        if lengths[hi] > lengths[lo] and ids[hi] and ids[lo]:
            out.append((tuple(it["meta"]["prompt_ids"]), tuple(ids[hi]), tuple(ids[lo])))
    return out


@torch.no_grad()
def seq_logp(model, prompt, completion) -> float:
    ids = torch.tensor([list(prompt) + list(completion)])
    logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    tgt = ids[0, 1:]
    return logp[torch.arange(len(tgt)), tgt][len(prompt) - 1:].sum().item()


def dpo_loss(policy, reference, pairs) -> float:
    """Mean −log σ(β[(π_c − ref_c) − (π_r − ref_r)]) over the pairs, in float64."""
    vals = []
    for prompt, c, r in pairs:
        z = BETA * ((seq_logp(policy, prompt, c) - seq_logp(reference, prompt, c))
                    - (seq_logp(policy, prompt, r) - seq_logp(reference, prompt, r)))
        vals.append(math.log1p(math.exp(-z)))
    return sum(vals) / len(vals)


def test_two_rounds_labelled_by_a_human_over_http(tiny_dir, tmp_path, studio_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    engine, directory, tokens = studio_dir
    seen = record_pairs(monkeypatch)
    logs = []
    with live_server(engine) as url:
        human = Human(url, tokens["human"])
        human.start()
        try:
            online_dpo.run(config(tiny_dir, tmp_path / "run", directory), log=logs.append)
        finally:
            human.stop.set()
            human.join(10)
    assert human.error is None, human.error
    names = [p["name"] for p in db.list_projects(engine)]
    assert names == ["od-round-0001", "od-round-0002"]
    for step, name in enumerate(names):
        p, items, labels = db.project_labels(engine, name)
        assert p["kind"] == "ranking" and len(items) == 4 and all(len(it["responses"]) == 3 for it in items)
        assert sorted(lab["user"] for lab in labels) == ["human"] * 4  # every item labelled once, by the human
        want = expected_pairs(engine, name)
        assert sorted(seen[step]) == sorted(want)
    assert sum(len(v) for v in seen.values()) > 0
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert [r["studio/labelled_items"] for r in train] == [4.0, 4.0]
    assert [r["rollout/pairs"] for r in train] == [float(len(seen[0])), float(len(seen[1]))]
    # the loss moves: on every pair trained on, the final policy beats the start (= the fixed reference: log 2)
    pairs = seen[0] + seen[1]
    start = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    final = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "final")).eval()
    assert dpo_loss(start, start, pairs) == pytest.approx(math.log(2), abs=1e-12)
    assert dpo_loss(final, start, pairs) < math.log(2) - 1e-3
    assert sum("published 4 items to studio project 'od-round-0001'" in m for m in logs) == 1
    engine.dispose()


def test_pairwise_rounds(tiny_dir, tmp_path, studio_dir, monkeypatch):
    engine, directory, tokens = studio_dir
    seen = record_pairs(monkeypatch)
    with live_server(engine) as url:
        human = Human(url, tokens["human"], kind="pairwise")
        human.start()
        try:
            online_dpo.run(config(tiny_dir, tmp_path / "run", directory, kind="pairwise"), log=lambda *a: None)
        finally:
            human.stop.set()
            human.join(10)
    assert human.error is None, human.error
    for step, name in enumerate(["od-round-0001", "od-round-0002"]):
        assert db.get_project(engine, name)["kind"] == "pairwise"
        assert sorted(seen[step]) == sorted(expected_pairs(engine, name))
    assert seen[0] or seen[1]
    engine.dispose()


def test_timeout_stops_with_a_checkpoint_and_resume_reads_the_same_project(tiny_dir, tmp_path, studio_dir,
                                                                          monkeypatch):
    engine, directory, tokens = studio_dir
    seen = record_pairs(monkeypatch)
    out = tmp_path / "run"
    logs = []
    with live_server(engine) as url:
        human = Human(url, tokens["human"], allowed=lambda name: name == "od-round-0001")
        human.start()
        try:
            with pytest.raises(LabelsMissing) as e:
                cfg = config(tiny_dir, out, directory, timeout_s=3.0, min_labels=1)
                cfg.train.save_steps = 0  # no checkpoint every round: the stop itself writes one
                online_dpo.run(cfg, log=logs.append)
        finally:
            human.stop.set()
            human.join(10)
        assert human.error is None, human.error
        msg = str(e.value)
        assert "round 2: 0 of 4 items of studio project 'od-round-0002' labelled" in msg
        assert "studio.min_labels=1" in msg and "--train.resume true" in msg and "checkpoint after round 1" in msg
        from rlhfkit.train.checkpoint import latest_checkpoint
        assert latest_checkpoint(str(out / "checkpoints"), lambda *a: None) is not None
        assert not (out / "final").exists()
        round2_items = [it["id"] for it in db.project_labels(engine, "od-round-0002")[1]]
        # two of the four items get labelled while the trainer is away
        late = Human(url, tokens["human"], allowed=lambda name: name == "od-round-0002", limit=2)
        late.start()
        deadline = time.time() + 30
        while len(late.labelled) < 2 and time.time() < deadline:
            time.sleep(0.05)
        late.stop.set()
        late.join(10)
        assert late.error is None and len(late.labelled) == 2
    logs.clear()
    cfg = config(tiny_dir, out, directory, timeout_s=1.0, min_labels=2)
    cfg.train.resume, cfg.train.resume_allow, cfg.train.save_steps = True, "studio", 0
    online_dpo.run(cfg, log=logs.append)
    text = "\n".join(logs)
    assert "studio project 'od-round-0002' was published before" in text
    assert "training on the 2/4 labelled items of 'od-round-0002'" in text
    assert "resumed from" in text
    assert [p["name"] for p in db.list_projects(engine)] == ["od-round-0001", "od-round-0002"]
    assert [it["id"] for it in db.project_labels(engine, "od-round-0002")[1]] == round2_items  # not re-published
    assert sorted(seen[1]) == sorted(expected_pairs(engine, "od-round-0002"))
    assert (out / "final").is_dir()
    engine.dispose()


def test_settings_are_checked(tiny_dir, tmp_path, studio_dir):
    def bad(match, **kw):
        studio = kw.pop("studio", {})
        cfg = config(tiny_dir, tmp_path / "r", studio_dir[1], **studio)
        for k, v in kw.items():
            setattr(cfg, k, v)
        with pytest.raises(ConfigError, match=match):
            online_dpo.build(cfg, log=lambda *a: None)

    bad("labeller must be rewards|studio", labeller="people")
    bad("studio.timeout_s must be", studio={"timeout_s": 0.0})
    bad("studio.poll_s must be", studio={"poll_s": -1.0})
    bad("studio.min_labels must be", studio={"min_labels": 0})
    bad("studio.overlap must be", studio={"overlap": 0})
    bad("studio.kind must be one of ranking, pairwise", studio={"kind": "thumbs"})
    bad("needs the studio's database", studio={"dir": ""})
    bad("set one of studio.dir and studio.db_url", studio={"db_url": "sqlite:///x.db"})
    bad("studio.annotators: no studio account named 'nobody'", studio={"annotators": "human,nobody"})
    cfg = config(tiny_dir, tmp_path / "r", str(tmp_path / "s"), kind="pairwise")
    cfg.rollout.num_generations = 3
    with pytest.raises(ConfigError, match="rollout.num_generations 2"):
        online_dpo.build(cfg, log=lambda *a: None)


def test_cli_stops_with_a_message_when_nobody_labels(tiny_dir, tmp_path, studio_dir, capsys):
    from rlhfkit.cli import main

    _, directory, _ = studio_dir
    rc = main(["online-dpo", "--model.name", tiny_dir, "--task", "arithmetic", "--task_size", "8", "--task_eval_size",
               "2", "--rounds", "1", "--prompts_per_round", "2", "--eval_samples", "0", "--rollout.num_generations",
               "2", "--rollout.max_new_tokens", "4", "--labeller", "studio", "--studio.dir", directory,
               "--studio.annotators", "human", "--studio.timeout_s", "0.5", "--studio.poll_s", "0.1",
               "--train.output_dir", str(tmp_path / "run"), "--train.progress", "false",
               "--train.tensorboard", "false"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "round 1: 0 of 2 items of studio project 'online-dpo-round-0001' labelled after studio.timeout_s=0.5s" in err


@pytest.mark.skipif(sys.platform == "win32", reason="gloo launch tested on Linux")
def test_two_processes_publish_once_and_train_like_one(tiny_dir, tmp_path, studio_dir):
    """torchrun, 2 processes × 2 prompts against 1 process × 4 prompts (the rollouts are
    batch-invariant): the main process alone publishes each round (one project, 4 items, the same
    samples as the single process drew), the labels reach both processes, and the losses match."""
    engine, directory, tokens = studio_dir
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.abspath(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    args = ["-m", "rlhfkit.cli", "online-dpo", "--model.name", tiny_dir, "--task", "arithmetic", "--task_size", "16",
            "--task_eval_size", "0", "--rounds", "2", "--rollout.num_generations", "3", "--rollout.max_new_tokens", "6",
            "--labeller", "studio", "--studio.dir", directory, "--studio.annotators", "human",
            "--studio.timeout_s", "300", "--studio.poll_s", "0.1", "--train.lr", "1e-3", "--train.threads", "1",
            "--train.progress", "false", "--train.tensorboard", "false"]
    runs = {"one": ([sys.executable], "4", "4"),
            "two": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], "2", "2")}
    with live_server(engine) as url:
        human = Human(url, tokens["human"])
        human.start()
        try:
            for name, (pre, prompts, batch) in runs.items():
                p = subprocess.run(pre + args + ["--studio.project", name, "--prompts_per_round", prompts,
                                                 "--train.batch_size", batch, "--train.output_dir",
                                                 str(tmp_path / name)], capture_output=True, text=True, env=env,
                                   timeout=600)
                assert p.returncode == 0, p.stderr[-3000:]
        finally:
            human.stop.set()
            human.join(10)
    assert human.error is None, human.error
    names = [p["name"] for p in db.list_projects(engine)]
    assert names == ["one-round-0001", "one-round-0002", "two-round-0001", "two-round-0002"]
    for r in ("0001", "0002"):
        a = db.project_labels(engine, f"one-round-{r}")[1]
        b = db.project_labels(engine, f"two-round-{r}")[1]
        assert [(x["prompt"], x["responses"]) for x in a] == [(x["prompt"], x["responses"]) for x in b]
    curves = {}
    for name in runs:
        recs = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
        curves[name] = [x for r in recs if "train/loss" in r for x in (r["rollout/pairs"], r["train/loss"])]
    assert len(curves["one"]) == 4 and curves["two"] == pytest.approx(curves["one"], abs=1e-5)
    assert curves["one"][3] != pytest.approx(math.log(2), abs=1e-6)  # round 2 trained a policy that had moved
    engine.dispose()


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="needs POSIX signals")
def test_sigterm_while_waiting_stops_at_once_with_a_checkpoint(tiny_dir, tmp_path, studio_dir):
    import signal

    from rlhfkit.errors import Preempted

    engine, directory, tokens = studio_dir

    def terminate_once_round_2_is_published():
        deadline = time.time() + 120
        while time.time() < deadline:
            if "od-round-0002" in [p["name"] for p in db.list_projects(engine)]:
                os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler only sets a flag
                return
            time.sleep(0.05)

    with live_server(engine) as url:
        human = Human(url, tokens["human"], allowed=lambda name: name == "od-round-0001")
        human.start()
        killer = threading.Thread(target=terminate_once_round_2_is_published, daemon=True)
        killer.start()
        cfg = config(tiny_dir, tmp_path / "run", directory, timeout_s=600.0)
        cfg.train.save_steps = 0
        t0 = time.time()
        try:
            with pytest.raises(Preempted, match="terminated by SIGTERM while round 2 waited for the labels of studio "
                                                "project 'od-round-0002' .0 of 4 items labelled.; checkpoint after "
                                                "round 1"):
                online_dpo.run(cfg, log=lambda *a: None)
        finally:
            human.stop.set()
            human.join(10)
            killer.join(10)
    assert time.time() - t0 < 120  # not the 600 s timeout
    from rlhfkit.train.checkpoint import latest_checkpoint
    assert latest_checkpoint(str(tmp_path / "run" / "checkpoints"), lambda *a: None) is not None
    engine.dispose()

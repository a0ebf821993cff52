import json
import os
import pathlib

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("RLHFKIT_TEST_THREADS", min(2, torch.get_num_threads()))))

# The project's shared data sits beside the repository (../shared/data).
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_FILE = str(SHARED_DATA / "hh-rlhf-harmless" / "test.jsonl.gz")
needs_hh = pytest.mark.skipif(not os.path.exists(HH_FILE), reason=f"shared data not found: {HH_FILE}")


@pytest.fixture(scope="session")
def tok():
    """The real SmolLM2 tokenizer (from the embedded model's cache)."""
    from rlhfkit.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tok):
    """A tiny random causal LM saved as an HF directory (loadable by name like any model)."""
    from rlhfkit.models.loading import tiny_model

    d = tmp_path_factory.mktemp("tiny-lm")
    tiny_model(tok, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def write_jsonl(path, rows):
    import json

    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


LENGTH_REWARD_SRC = "def length(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n"


@pytest.fixture
def length_reward(tmp_path, monkeypatch):
    """``fn:hacking_rewards:length`` (reward = response length in characters), importable here
    and in spawned workers and subprocesses (sys.path and PYTHONPATH)."""
    d = tmp_path / "reward_module"
    d.mkdir()
    (d / "hacking_rewards.py").write_text(LENGTH_REWARD_SRC)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(d)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p]))
    return "fn:hacking_rewards:length"


def train_losses(out):
    """(step, train/loss) of every training record in ``out/metrics.jsonl``."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [(r["step"], r["train/loss"]) for r in map(json.loads, f) if "train/loss" in r]


def trace_updates_and_syncs(trainer, engine, policy) -> list:
    """Record, in order, every optimizer update an online recipe's iteration makes and every
    ``engine.update_weights`` call (with whether it was given ``policy``); returns the live list."""
    events = []
    sync = engine.update_weights

    def counted_sync(model):
        events.append(("sync", model is policy))
        return sync(model)

    iteration = trainer.recipe.iteration

    def logged_iteration(model, mbs, step, update):
        def logged_update(batch):
            events.append(("update", True))
            return update(batch)
        return iteration(model, mbs, step, logged_update)

    engine.update_weights = counted_sync
    trainer.recipe.iteration = logged_iteration
    return events

"""Outputs that work anywhere: a model card from the run in every final/ (every recipe), LoRA
adapters that plain ``peft`` loads with no path of this machine in them, checkpoints that
``from_pretrained`` loads, no optimizer state at the end unless asked, the bytes line, and
push_to_hub (offline failure; the right folder and repo with a stand-in HfApi)."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig, build_config, to_dict
from rlhfkit.errors import TrainingError
from rlhfkit.models.loading import EMBEDDED_HUB_NAME, cache_dir
from rlhfkit.tasks.arithmetic import make_problems, preference_rows, sft_rows
from rlhfkit.train import dpo, kto, online_dpo, reward, rl, sft


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("portable-data")
    probs = make_problems(24, seed=7)
    return {"sft": write_jsonl(d / "sft.jsonl", sft_rows(probs[:16])),
            "sft_eval": write_jsonl(d / "sft_eval.jsonl", sft_rows(probs[16:])),
            "pairs": write_jsonl(d / "pairs.jsonl", preference_rows(probs[:16], seed=0)),
            "pairs_eval": write_jsonl(d / "pairs_eval.jsonl", preference_rows(probs[16:], seed=1))}


def _train(out, **kw):
    t = dict(output_dir=str(out), batch_size=4, lr=1e-3, progress=False, tensorboard=False, max_steps=2,
             warmup_ratio=0.0, lr_scheduler="constant", eval_batch_size=4)
    t.update(kw)
    return TrainConfig(**t)


def recipe_cfg(name, tiny_dir, files, out, **train):
    m = ModelConfig(name=tiny_dir)
    if name == "sft":
        return sft, sft.SFTConfig(model=m, data=DataConfig(path=files["sft"], eval_path=files["sft_eval"],
                                                           max_length=96), train=_train(out, **train))
    if name in ("rm", "dpo", "kto"):
        data = DataConfig(path=files["pairs"], eval_path=files["pairs_eval"], max_length=96)
        if name == "rm":
            return reward, reward.RMConfig(model=m, data=data, train=_train(out, **train), norm_rows=8)
        if name == "dpo":
            return dpo, dpo.DPOConfig(model=m, data=data, train=_train(out, **train), beta=0.2)
        return kto, kto.KTOConfig(model=m, data=data, train=_train(out, **train))
    if name in ("grpo", "ppo"):
        cls = rl.PPOConfig if name == "ppo" else rl.RLConfig
        c = cls(model=m, task="arithmetic", task_size=8, task_eval_size=4, rewards=["arithmetic", "format*0.5"],
                train=_train(out, lr=1e-4, **train))
        c.rollout.num_generations, c.rollout.max_new_tokens = (1 if name == "ppo" else 2), 6
        return rl, c
    c = online_dpo.OnlineDPOConfig(model=m, task="arithmetic", task_size=8, task_eval_size=4,
                                   rewards=["format"], rounds=1, prompts_per_round=4, eval_samples=1,
                                   train=_train(out, max_steps=0, **train))
    c.rollout.num_generations, c.rollout.max_new_tokens = 2, 6
    return online_dpo, c


def card_table(text):
    """The ``| key | value |`` rows of a markdown card."""
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r"^\| ([^|]+) \| (.+) \|$", text, re.M)}


def machine_paths(*extra):
    return [str(p) for p in extra] + [cache_dir(), os.path.expanduser("~") + os.sep]


def assert_no_machine_path(folder, paths):
    for root, _, names in os.walk(folder):
        for n in names:
            text = open(os.path.join(root, n), "rb").read().decode("utf-8", "replace")
            for p in paths:
                assert p not in text, f"{os.path.join(root, n)} holds the local path {p}"


@pytest.mark.parametrize("name", ["sft", "rm", "dpo", "kto", "grpo", "ppo", "online-dpo"])
def test_model_card_matches_the_run(name, tiny_dir, files, tmp_path, monkeypatch):
    out = tmp_path / "run"
    module, cfg = recipe_cfg(name, tiny_dir, files, out)
    logs = []
    res = module.run(cfg, log=logs.append)
    final = out / "final"
    card = (final / "README.md").read_text()
    rows = card_table(card)
    # base model: the tiny model is a local directory outside the working dir: its name only
    assert rows["base model"] == f"`{os.path.basename(tiny_dir)}`"
    assert f"rlhfkit {name}" in card
    # data: rows and fingerprint as run.json records them
    if name == "online-dpo":
        from rlhfkit.models.loading import load_tokenizer
        from rlhfkit.train.rundir import examples_fingerprint
        want = examples_fingerprint(online_dpo._prompts(cfg, load_tokenizer(tiny_dir), quiet)[0])
        assert json.load(open(out / "run.json"))["data"]["examples"] == want
    else:
        want = json.load(open(out / "run.json"))["data"]["examples"]
    final_metrics = res["final"]
    assert rows["data fingerprint"] == f"`{want['sha256']}`" and rows["data rows"] == str(want["count"])
    # final metrics, every one, with its exact value
    assert final_metrics
    for k, v in final_metrics.items():
        if isinstance(v, float):
            assert float(rows[k]) == v, k
    # the reproduce command rebuilds the same config (paths as written: the file's name)
    cmd = next(line for line in card.splitlines() if line.startswith(f"rlhfkit {name} --") and "--config" not in line)
    argv = shlex.split(cmd)[2:]
    from rlhfkit.cli import _overrides
    rebuilt = to_dict(build_config(type(cfg), None, _overrides(argv, name)))
    from_yaml = to_dict(build_config(type(cfg), str(final / "rlhfkit_config.yaml")))
    orig = to_dict(cfg)

    def flat(d, p=""):
        o = {}
        for k, v in d.items():
            o.update(flat(v, f"{p}{k}.") if isinstance(v, dict) else {f"{p}{k}": v})
        return o
    for got in (flat(rebuilt), flat(from_yaml)):
        for k, v in flat(orig).items():
            if k == "rewards":
                continue
            expect = os.path.basename(v) if isinstance(v, str) and os.path.isabs(v) else v
            assert got[k] == expect, k
    assert_no_machine_path(final, machine_paths(tmp_path, tiny_dir))
    # no resumable state at the end by default, and the one closing line
    assert not [c for c in os.listdir(out / "checkpoints")] if (out / "checkpoints").exists() else True
    line = [m for m in logs if "wrote " in m and "final model:" in m]
    assert line and line[-1].endswith(f"final model: {final}")


def test_rm_card_states_the_normalisation(tiny_dir, files, tmp_path):
    module, cfg = recipe_cfg("rm", tiny_dir, files, tmp_path / "run")
    module.run(cfg, log=quiet)
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "(logit - rlhfkit_reward_mean) / rlhfkit_reward_std" in card
    assert "AutoModelForSequenceClassification" in card


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_adapter_loads_with_plain_peft(tiny_dir, files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module, cfg = recipe_cfg("sft", tiny_dir, files, tmp_path / "run")
    cfg.model.lora = LoraConfig(r=4, alpha=8)
    module.run(cfg, log=quiet)
    final = tmp_path / "run" / "final"
    acfg = json.load(open(final / "adapter_config.json"))
    assert acfg["base_model_name_or_path"] == os.path.basename(tiny_dir)
    card = (final / "README.md").read_text()
    assert "[More Information Needed]" not in card and "rlhfkit sft" in card  # the card, not PEFT's template
    assert_no_machine_path(final, machine_paths(tmp_path, tiny_dir))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(final)).eval()
    ours = sft.load_model(ModelConfig(name=str(final)))[0].eval()  # rlhfkit: base + adapters, merged
    ids = torch.tensor([[1, 504, 3458, 314, 216, 33, 1232, 216, 34, 47, 2]])
    a, b = _logits(peft_model, ids), _logits(ours, ids)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    base = _logits(AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), ids)
    assert (a - base).abs().max() > 1e-4  # the adapters changed the model: the comparison means something


def test_embedded_lora_adapter_names_the_hub_model(tmp_path, files):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.loading import load_model, resolve_model_path
    cfg = sft.SFTConfig(model=ModelConfig(name="smollm2-135m", lora=LoraConfig(r=2, alpha=4)),
                        data=DataConfig(path=files["sft"], max_length=48, rows="4"),
                        train=_train(tmp_path / "run", max_steps=1, batch_size=2))
    sft.run(cfg, log=quiet)
    final = tmp_path / "run" / "final"
    assert json.load(open(final / "adapter_config.json"))["base_model_name_or_path"] == EMBEDDED_HUB_NAME
    card = (final / "README.md").read_text()
    assert f"`{EMBEDDED_HUB_NAME}`" in card and "Q4_1 GGUF" in card
    assert_no_machine_path(final, machine_paths(tmp_path, resolve_model_path("smollm2-135m")))
    # plain peft on the same base weights (the hub is not reachable here: rlhfkit's local copy)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"))
    peft_model = PeftModel.from_pretrained(base, str(final)).eval()
    ours = load_model(str(final))[0].eval()
    ids = torch.tensor([[1, 504, 3458, 314, 216, 33, 2]])
    torch.testing.assert_close(_logits(peft_model, ids), _logits(ours, ids), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("lora", [0, 4])
def test_checkpoints_load_with_from_pretrained(tiny_dir, files, tmp_path, lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module, cfg = recipe_cfg("sft", tiny_dir, files, tmp_path / "run", save_steps=2)
    cfg.model.lora = LoraConfig(r=lora, alpha=8)
    module.run(cfg, log=quiet)
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    ids = torch.tensor([[1, 504, 3458, 314, 216, 33, 2]])
    if lora:
        assert (ckpt / "adapter_config.json").exists()
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(ckpt)).eval()
        f = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir),
                                      str(tmp_path / "run" / "final")).eval()
    else:
        m = AutoModelForCausalLM.from_pretrained(ckpt).eval()
        f = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").eval()
        # one copy of the weights: model.safetensors is the trainable weights' file
        assert os.stat(ckpt / "model.safetensors").st_ino == os.stat(ckpt / "trainable.safetensors").st_ino
    torch.testing.assert_close(_logits(m, ids), _logits(f, ids))  # the checkpoint is the step-2 model
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(ckpt).eos_token == "<|im_end|>"
    assert os.path.exists(ckpt / "states.safetensors")  # the training state beside the model files


def test_final_save_keeps_no_optimizer_state_unless_asked(tiny_dir, files, tmp_path):
    module, cfg = recipe_cfg("sft", tiny_dir, files, tmp_path / "a")
    logs = []
    module.run(cfg, log=logs.append)
    out = tmp_path / "a"
    assert not (out / "checkpoints").exists() or not os.listdir(out / "checkpoints")
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(out) for n in ns)
    weights = os.path.getsize(out / "final" / "model.safetensors")
    assert total < 1.5 * weights  # the model once, no Adam moments
    (line,) = [m for m in logs if "final model:" in m]
    n = int(re.search(r"\((\d+) bytes\)", line).group(1))
    assert abs(n - total) <= 4096 and str(out / "final") in line
    # a finished run without resumable state cannot be resumed: a clear line, nothing retrained
    before = (out / "final" / "model.safetensors").read_bytes()
    _, again = recipe_cfg("sft", tiny_dir, files, out, resume=True, max_steps=3, resume_allow="max_steps")
    with pytest.raises(TrainingError, match=r"holds a finished run .* --train.save_optimizer true"):
        sft.run(again, log=quiet)
    assert (out / "final" / "model.safetensors").read_bytes() == before
    # asked for: the end is resumable (full state), and the resume continues it
    _, cfg = recipe_cfg("sft", tiny_dir, files, tmp_path / "b", save_optimizer=True)
    sft.run(cfg, log=quiet)
    assert os.listdir(tmp_path / "b" / "checkpoints") == ["step-000002"]
    _, more = recipe_cfg("sft", tiny_dir, files, tmp_path / "b", save_optimizer=True, resume=True, max_steps=3,
                         resume_allow="max_steps")
    logs = []
    sft.run(more, log=logs.append)
    assert any("resumed from" in m and "step-000002" in m for m in logs)


def test_push_to_hub_offline_fails_with_one_line_and_keeps_final(tiny_dir, files, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlhfkit.cli", "sft", "--model.name", tiny_dir, "--data.path", files["sft"],
           "--data.max_length", "96", "--train.output_dir", str(out), "--train.max_steps", "1",
           "--train.batch_size", "2", "--train.progress", "false", "--train.tensorboard", "false",
           "--train.push_to_hub", "true", "--train.hub_model_id", "someone/tiny-sft"]
    r = subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [x for x in r.stderr.splitlines() if "error:" in x]
    assert len(err) == 1 and "push_to_hub" in err[0] and "offline" in err[0] and "someone/tiny-sft" in err[0], \
        r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(out / "final")  # intact


def test_push_to_hub_uploads_final_to_the_repo(tiny_dir, files, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["repo_id"], kw))
            assert os.path.isfile(os.path.join(kw["folder_path"], "README.md"))  # the card goes up too

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    _, cfg = recipe_cfg("sft", tiny_dir, files, tmp_path / "run", push_to_hub=True, hub_model_id="someone/tiny-sft")
    sft.run(cfg, log=quiet)
    assert [c[:2] for c in calls] == [("create_repo", "someone/tiny-sft"), ("upload_folder", "someone/tiny-sft")]
    assert calls[1][2]["folder_path"] == str(tmp_path / "run" / "final")
    assert calls[1][2].get("repo_type", "model") == "model"

"""TRL's key names accepted as aliases (YAML and command line), with conflicts, recipe-specific
meanings and the deferred conversions; did-you-mean for values and TRL names; --version; --help."""

import textwrap

import pytest

from rlhfkit.aliases import ALIASES, aliases_for, markdown_table, reward_funcs
from rlhfkit.cli import main
from rlhfkit.config import ConfigError, build_config, check_choice
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.kto import KTOConfig
from rlhfkit.train.reward import RMConfig
from rlhfkit.train.rl import PPOConfig, RLConfig
from rlhfkit.train.sft import SFTConfig


def yaml_cfg(tmp_path, cls, text, overrides=()):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return build_config(cls, str(p), list(overrides))


def err_of(fn, *a, **kw):
    with pytest.raises(ConfigError) as e:
        fn(*a, **kw)
    return str(e.value)


# --------------------------------------------------------------------------- flat TRL YAML

def test_flat_trl_sft_yaml_maps_to_sections(tmp_path):
    cfg = yaml_cfg(tmp_path, SFTConfig, """
        model_name_or_path: some/model
        dataset_name: data/train.jsonl
        learning_rate: 3.0e-4
        per_device_train_batch_size: 6
        gradient_accumulation_steps: 3
        num_train_epochs: 2
        lr_scheduler_type: linear
        warmup_ratio: 0.0
        max_steps: -1
        seed: 7
        output_dir: out/x
        logging_steps: 5
        save_steps: 20
        max_length: 256
        gradient_checkpointing: true
        lora_r: 8
        lora_target_modules: [q_proj, v_proj]
    """)
    assert cfg.model.name == "some/model" and cfg.data.path == "data/train.jsonl"
    assert cfg.train.lr == 3e-4 and cfg.train.batch_size == 6 and cfg.train.grad_accum == 3
    assert cfg.train.epochs == 2.0 and cfg.train.lr_scheduler == "linear" and cfg.train.warmup_ratio == 0.0
    assert cfg.train.max_steps == 0  # TRL's -1 = "use epochs"
    assert (cfg.train.seed, cfg.train.output_dir, cfg.train.logging_steps, cfg.train.save_steps) == (7, "out/x", 5, 20)
    assert cfg.data.max_length == 256 and cfg.model.gradient_checkpointing is True
    assert cfg.model.lora.r == 8 and cfg.model.lora.target_modules == "q_proj,v_proj"


def test_alias_inside_its_section_and_on_the_command_line(tmp_path):
    cfg = yaml_cfg(tmp_path, SFTConfig, "train:\n  learning_rate: 0.002\n",
                   [("per_device_train_batch_size", "5"), ("train.num_train_epochs", "3")])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == (0.002, 5, 3.0)
    assert err_of(build_config, SFTConfig, None, [("model.learning_rate", "1")]).startswith(
        "unknown config key 'model.learning_rate'")  # not the alias's section


def test_grpo_trl_keys(tmp_path):
    cfg = yaml_cfg(tmp_path, RLConfig, """
        beta: 0.04
        epsilon: 0.3
        num_generations: 4
        per_device_train_batch_size: 16
        gradient_accumulation_steps: 2
        max_completion_length: 12
        max_prompt_length: 100
        temperature: 0.7
        top_k: null
        loss_type: dr_grpo
        mask_truncated_completions: true
        num_iterations: 2
    """)
    assert cfg.kl_coef == 0.04  # GRPO's beta is the KL coefficient
    assert cfg.clip_eps_low == 0.3 and cfg.clip_eps_high == 0.3  # TRL: epsilon_high defaults to epsilon
    assert cfg.rollout.num_generations == 4 and cfg.train.batch_size == 4  # 16 completions = 4 prompts x 4
    assert cfg.train.grad_accum == 2 and cfg.rollout.max_new_tokens == 12 and cfg.data.max_prompt_length == 100
    assert cfg.rollout.temperature == 0.7 and cfg.rollout.top_k == 0
    assert cfg.loss_agg == "dr_grpo" and cfg.mask_truncated is True and cfg.num_iterations == 2


def test_epsilon_high_kept_and_dapo_clip_higher(tmp_path):
    cfg = yaml_cfg(tmp_path, RLConfig, "epsilon: 0.2\nepsilon_high: 0.28\n")
    assert (cfg.clip_eps_low, cfg.clip_eps_high) == (0.2, 0.28)
    cfg = yaml_cfg(tmp_path, RLConfig, "clip_eps_high: 0.28\n", [("epsilon", "0.1")])
    assert (cfg.clip_eps_low, cfg.clip_eps_high) == (0.1, 0.28)


def test_beta_means_the_recipes_own_key_in_dpo_and_kto(tmp_path):
    assert yaml_cfg(tmp_path, DPOConfig, "beta: 0.3\n").beta == 0.3
    assert yaml_cfg(tmp_path, KTOConfig, "beta: 0.2\n").beta == 0.2
    assert "beta" not in aliases_for(DPOConfig) and aliases_for(RLConfig)["beta"].target == "kl_coef"
    # DPO: per_device_train_batch_size counts pairs, as rlhfkit's batch_size does
    assert yaml_cfg(tmp_path, DPOConfig, "per_device_train_batch_size: 6\n").train.batch_size == 6


def test_ppo_trl_keys(tmp_path):
    cfg = yaml_cfg(tmp_path, PPOConfig, """
        cliprange: 0.1
        cliprange_value: 0.3
        vf_coef: 0.2
        num_ppo_epochs: 3
        num_mini_batches: 2
        response_length: 20
        kl_coef: 0.1
        per_device_train_batch_size: 8
    """)
    assert (cfg.clip_eps_low, cfg.clip_eps_high) == (0.1, 0.1)
    assert (cfg.critic.value_clip, cfg.critic.vf_coef) == (0.3, 0.2)
    assert (cfg.num_iterations, cfg.num_minibatches, cfg.rollout.max_new_tokens) == (3, 2, 20)
    assert cfg.train.batch_size == 8  # one completion per prompt


def test_rm_center_rewards_coefficient(tmp_path):
    assert yaml_cfg(tmp_path, RMConfig, "center_rewards_coefficient: 0.01\n").center_rewards_coef == 0.01


def test_per_device_batch_not_a_multiple_of_generations(tmp_path):
    msg = err_of(yaml_cfg, tmp_path, RLConfig, "per_device_train_batch_size: 6\nnum_generations: 4\n")
    assert "per_device_train_batch_size = 6" in msg and "multiple of num_generations (4)" in msg
    # a later layer's native key wins over an earlier alias
    cfg = yaml_cfg(tmp_path, RLConfig, "per_device_train_batch_size: 6\nnum_generations: 4\n",
                   [("train.batch_size", "3")])
    assert cfg.train.batch_size == 3
    # the command line's num_generations decides the conversion of the file's alias
    cfg = yaml_cfg(tmp_path, RLConfig, "per_device_train_batch_size: 16\nnum_generations: 4\n",
                   [("rollout.num_generations", "8")])
    assert cfg.train.batch_size == 2


@pytest.mark.parametrize("text,overrides,names", [
    ("learning_rate: 1.0e-5\ntrain:\n  lr: 2.0e-5\n", [], ("learning_rate", "train.lr")),
    ("", [("learning_rate", "1e-5"), ("train.lr", "2e-5")], ("--learning_rate", "--train.lr")),
    ("model_name_or_path: a\nsft_model_path: b\n", [], ("model_name_or_path", "sft_model_path")),
])
def test_alias_and_native_disagreeing_in_one_layer(tmp_path, text, overrides, names):
    msg = err_of(yaml_cfg, tmp_path, PPOConfig, text or "{}\n", overrides)
    assert all(f"'{n}'" in msg for n in names), msg


def test_alias_and_native_agreeing_is_fine_and_layers_override(tmp_path):
    # YAML reads 1e-5 (no dot) as a string; the values are compared as the key's type
    cfg = yaml_cfg(tmp_path, SFTConfig, "learning_rate: 1e-5\ntrain:\n  lr: 0.00001\n")
    assert cfg.train.lr == 1e-5
    cfg = yaml_cfg(tmp_path, SFTConfig, "learning_rate: 1.0e-5\n", [("train.lr", "4e-5")])
    assert cfg.train.lr == 4e-5  # the command line overrides the file
    cfg = yaml_cfg(tmp_path, SFTConfig, "train:\n  lr: 1.0e-5\n", [("learning_rate", "5e-5")])
    assert cfg.train.lr == 5e-5


def test_reward_funcs_and_weights(tmp_path):
    cfg = yaml_cfg(tmp_path, RLConfig, """
        reward_funcs: [my_rewards.accuracy, pkg.mod:fmt, arithmetic]
        reward_weights: [1.0, 0.5, 0.0]
    """)
    got = [(r.type, r.fn or r.verifier, r.signature, r.weight) for r in cfg.rewards]
    assert got == [("function", "my_rewards:accuracy", "trl", 1.0), ("function", "pkg.mod:fmt", "trl", 0.5),
                   ("verifier", "arithmetic", "auto", 0.0)]
    msg = err_of(yaml_cfg, tmp_path, RLConfig, "reward_funcs: [a.b, c.d]\nreward_weights: [1.0]\n")
    assert "1 weights for 2 rewards" in msg
    msg = err_of(yaml_cfg, tmp_path, RLConfig, "rewards: ['arithmetic*0', format]\nreward_weights: [1.0, 2.0]\n")
    assert "rewards[0] has weight 0" in msg and "reward_weights[0] is 1" in msg
    cfg = yaml_cfg(tmp_path, RLConfig, "rewards: ['arithmetic*0', format]\nreward_weights: [0, 2]\n")
    assert [r.weight for r in cfg.rewards] == [0.0, 2.0]
    cfg = yaml_cfg(tmp_path, RLConfig, "{}\n", [("reward_funcs", "m.f,arithmetic"), ("reward_weights", "2,3")])
    assert [(r.fn or r.verifier, r.weight) for r in cfg.rewards] == [("m:f", 2.0), ("arithmetic", 3.0)]
    assert reward_funcs(["runs/rm/final"]) == [{"type": "model", "path": "runs/rm/final"}]
    assert "not an import path" in err_of(reward_funcs, ["accuracy_reward"])


def test_use_peft(tmp_path):
    assert yaml_cfg(tmp_path, SFTConfig, "use_peft: true\n").model.lora.r == 16  # TRL's default lora_r
    assert yaml_cfg(tmp_path, SFTConfig, "use_peft: true\nlora_r: 4\n").model.lora.r == 4
    assert "use_peft is false" in err_of(yaml_cfg, tmp_path, SFTConfig, "use_peft: false\nlora_r: 4\n")


def test_table_documents_every_alias():
    table = markdown_table()
    for a in ALIASES:
        assert f"| `{a.name}` | `{a.target}` |" in table
    for name in ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                 "lr_scheduler_type", "model_name_or_path", "dataset_name", "max_completion_length", "epsilon",
                 "epsilon_high", "beta", "reward_funcs", "reward_weights"):
        assert f"`{name}`" in table


# --------------------------------------------------------------------------- suggestions

def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def test_value_suggestion_sigmod(capsys):
    code, _, err = run_cli(capsys, "dpo", "--loss_type", "sigmod")
    assert code == 2 and len(err) == 1 and "did you mean 'sigmoid'" in err[0], err
    msg = err_of(check_choice, "train.lr_scheduler", "cosin", ("cosine", "linear", "constant"))
    assert "did you mean 'cosine'" in msg
    msg = err_of(build_config, RLConfig, None, [("advantage", "grp")])
    assert "did you mean 'grpo'" in msg


@pytest.mark.parametrize("key,wants", [
    ("--learning_rat", ("'learning_rate'", "train.lr")),
    ("--per_device_train_batch", ("'per_device_train_batch_size'", "train.batch_size")),
    ("--lr", ("'train.lr'",)),
    ("--train.lrr", ("'lr'",)),
])
def test_key_suggestions_include_trl_names(capsys, key, wants):
    code, _, err = run_cli(capsys, "sft", key, "1")
    assert code == 2 and len(err) == 1 and all(w in err[0] for w in wants), err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"rlhfkit {version('rlhfkit')}"


def test_help_is_readable_and_grouped(capsys):
    code, out, _ = run_cli(capsys, "grpo", "--help")
    assert code == 0
    assert "RewardConfig(" not in out and "MonitorConfig(" not in out
    assert "--rewards (default [arithmetic];" in out
    assert "--train.lr (default 1e-06; TRL: learning_rate)" in out
    assert "--kl_coef (default 0; TRL: beta)" in out
    assert "--data.path (default \"\"; TRL: dataset_name)" in out
    assert "--rollout.stop (default [])" in out
    lines = out.splitlines()
    headers = [ln for ln in lines if ln and not ln.startswith(" ") and ln.endswith(":")]
    assert len(headers) == len(set(headers))  # each section once
    for h in ("model:", "model.lora:", "data:", "train:", "rollout:", "recipe:", "critic:", "monitor:"):
        assert h in headers
    # a key sits under its own section header
    i = lines.index("train:")
    assert lines[i + 1].startswith("  --train.")


def test_log_completions_and_rows(tmp_path):
    c = yaml_cfg(tmp_path, RLConfig, "log_completions: true\nnum_completions_to_print: 3\nlogging_steps: 5\n")
    assert c.train.log_completions == 5 and c.train.log_completions_rows == 3
    assert yaml_cfg(tmp_path, RLConfig, "log_completions: false\n").train.log_completions == 0
    assert yaml_cfg(tmp_path, RLConfig, "log_completions: true\n").train.log_completions == 1
    # an explicit rlhfkit setting given later wins
    c = yaml_cfg(tmp_path, RLConfig, "log_completions: true\n", [("train.log_completions", "7")])
    assert c.train.log_completions == 7

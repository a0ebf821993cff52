"""rlhfkit merge: the combine formulas against hand-computed values, the whole command on tiny
models (full directories and a LoRA adapter), and its errors."""

import copy
import json
import math
import os

import numpy as np
import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.config import build_config
from rlhfkit.errors import ConfigError
from rlhfkit.merge import (MergeConfig, dare, dare_drop, dare_ties, elect_and_mean, linear, run, slerp,
                           ties, trim)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def close(a, b, atol=1e-6):
    return np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=atol)


# --------------------------------------------------------------------------- combine functions
def test_linear_with_weights():
    a, b = t([[1.0, -2.0], [3.0, 0.5]]), t([[0.0, 4.0], [-1.0, 2.0]])
    assert close(linear([a, b], [0.25, 0.75]), [[0.25, 2.5], [0.0, 1.625]])


# Three task vectors of a 2x3 tensor; with density 0.5 each keeps its 3 largest magnitudes.
D1 = [[0.9, -0.1, 0.4], [-0.6, 0.2, 0.05]]
D2 = [[-0.3, 0.8, -0.2], [0.5, -0.7, 0.1]]
D3 = [[0.6, 0.3, -0.9], [0.4, 0.1, -0.05]]


def test_ties_trim():
    assert close(trim(t(D1), 0.5), [[0.9, 0, 0.4], [-0.6, 0, 0]])
    assert close(trim(t(D2), 0.5), [[0, 0.8, 0], [0.5, -0.7, 0]])
    assert close(trim(t(D3), 0.5), [[0.6, 0, -0.9], [0.4, 0, 0]])
    assert close(trim(t(D1), 1.0), D1)


def test_ties_elect_and_disjoint_mean_by_hand():
    # Trimmed: T1 = [[.9,0,.4],[-.6,0,0]], T2 = [[0,.8,0],[.5,-.7,0]], T3 = [[.6,0,-.9],[.4,0,0]].
    # Equal weights: sign of T1+T2+T3 = [[+,+,-],[+,-,0]]; the mean of the agreeing non-zero entries:
    # (0,0) (.9+.6)/2, (0,1) .8, (0,2) -.9, (1,0) (.5+.4)/2, (1,1) -.7, (1,2) none -> 0.
    deltas = [t(D1), t(D2), t(D3)]
    assert close(ties(deltas, [1 / 3] * 3, 0.5), [[0.75, 0.8, -0.9], [0.45, -0.7, 0.0]])
    # Weights 2,1,1: (1,0) mass 2(-.6)+.5+.4 = -.3 -> only T1 agrees: -.6; (0,0) (2(.9)+.6)/(2+1) = .8.
    assert close(ties(deltas, [2.0, 1.0, 1.0], 0.5), [[0.8, 0.8, -0.9], [-0.6, -0.7, 0.0]])


def test_dare_density_one_is_linear():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    lin = 0.3 * a.numpy() + 0.7 * b.numpy()
    assert close(dare([a, b], [0.3, 0.7], 1.0, torch.Generator().manual_seed(0)), lin)
    # and dare_ties at density 1 is TIES's election and mean without the trim
    assert torch.allclose(dare_ties([a, b], [0.3, 0.7], 1.0, torch.Generator().manual_seed(0)),
                          elect_and_mean([a, b], [0.3, 0.7]))


def test_dare_keeps_density_and_is_unbiased():
    d = torch.randn(100_000, generator=torch.Generator().manual_seed(1))
    out = dare_drop(d, 0.3, torch.Generator().manual_seed(7))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    assert close(out[kept], d[kept].numpy() / 0.3, atol=1e-5)  # survivors rescaled by 1/density
    again = dare_drop(d, 0.3, torch.Generator().manual_seed(7))
    assert torch.equal(out, again)  # the seed reproduces the drop
    # E[dare] = linear: the mean over many seeds approaches w1 d1 + w2 d2 (std per entry ~0.7/sqrt(2000)).
    a, b = t(np.linspace(-1, 1, 20)), t(np.cos(np.arange(20.0)))
    mean = sum(dare([a, b], [0.5, 0.5], 0.5, torch.Generator().manual_seed(s)) for s in range(2000)) / 2000
    assert close(mean, 0.5 * a.numpy() + 0.5 * b.numpy(), atol=0.08)


def test_slerp_endpoints_orthogonal_and_colinear():
    a, b = t([1.0, 0.0, 0.0]), t([0.0, 1.0, 0.0])
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    assert close(slerp(a, b, 0.5), [1 / math.sqrt(2), 1 / math.sqrt(2), 0.0])
    # not unit vectors, Ω = 90°: sin(45°)·a + sin(45°)·b
    assert close(slerp(t([2.0, 0.0]), t([0.0, 3.0]), 0.5), [math.sqrt(2), 1.5 * math.sqrt(2)])
    c = t([1.0, 2.0, 3.0])
    assert close(slerp(c, 2 * c, 0.3), 0.7 * c.numpy() + 0.3 * 2 * c.numpy())  # colinear: lerp
    assert close(slerp(c, -c, 0.25), 0.75 * c.numpy() - 0.25 * c.numpy())     # opposite: lerp
    assert close(slerp(torch.zeros(3), c, 0.4), 0.4 * c.numpy())               # zero norm: lerp


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    from rlhfkit.models.loading import tiny_model

    d = tmp_path_factory.mktemp("merge-base")
    tiny_model(tok, layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _state(path):
    return {k: v.clone() for k, v in _load(path).state_dict().items()}


@pytest.fixture(scope="module")
def finetuned(base_dir, tmp_path_factory):
    """Two copies of the base with known random perturbations of every parameter."""
    out = []
    for k in (1, 2):
        m = _load(base_dir)
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in m.parameters():  # tied parameters once: they stay tied
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        d = tmp_path_factory.mktemp(f"merge-ft{k}")
        m.save_pretrained(d)
        out.append(str(d))
    return out


def test_linear_end_to_end(base_dir, finetuned, tmp_path):
    out = str(tmp_path / "merged")
    res = run(MergeConfig(base=base_dir, models=finetuned, output_dir=out), log=lambda *a: None)
    base, m1, m2 = _state(base_dir), _state(finetuned[0]), _state(finetuned[1])
    merged = _load(out)
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, base[k] + ((m1[k] - base[k]) + (m2[k] - base[k])) / 2, atol=1e-6), k
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    assert res["method"] == "linear" and res["output_dir"] == out and res["tensors"] > 0
    from transformers import AutoTokenizer
    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(base_dir))
    record = json.load(open(os.path.join(out, "rlhfkit_merge.json")))
    assert record["method"] == "linear" and record["weights"] == [0.5, 0.5] and record["tensors"] == res["tensors"]
    assert record["models"] == [os.path.basename(m) for m in finetuned]  # portable: no absolute paths
    # a second merge replaces the first one's directory
    run(MergeConfig(base=base_dir, models=finetuned, weights=[1.0, 0.0], output_dir=out, dtype="bfloat16"),
        log=lambda *a: None)
    again = _load(out).state_dict()
    assert torch.allclose(again["model.norm.weight"], m1["model.norm.weight"].bfloat16().float())
    assert json.load(open(os.path.join(out, "rlhfkit_merge.json")))["dtype"] == "bfloat16"


def test_ties_dare_slerp_end_to_end(base_dir, finetuned, tmp_path):
    quiet = dict(log=lambda *a: None)
    base, m1, m2 = _state(base_dir), _state(finetuned[0]), _state(finetuned[1])
    res = run(MergeConfig(base=base_dir, models=finetuned, method="ties", density=0.2, scale=0.5,
                          output_dir=str(tmp_path / "ties")), **quiet)
    assert abs(res["kept_fraction"] - 0.2) < 0.01
    k = "model.layers.0.mlp.up_proj.weight"
    want = 0.5 * ties([m1[k] - base[k], m2[k] - base[k]], [0.5, 0.5], 0.2) + base[k]
    assert torch.allclose(_state(str(tmp_path / "ties"))[k], want, atol=1e-6)
    runs = [run(MergeConfig(base=base_dir, models=finetuned, method="dare", density=0.3, seed=5,
                            output_dir=str(tmp_path / f"dare{i}")), **quiet) for i in range(2)]
    assert abs(runs[0]["kept_fraction"] - 0.3) < 0.01
    a, b = _state(str(tmp_path / "dare0")), _state(str(tmp_path / "dare1"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: reproducible
    run(MergeConfig(base=base_dir, models=finetuned, method="slerp", t=0.0, output_dir=str(tmp_path / "s")), **quiet)
    s = _state(str(tmp_path / "s"))
    assert all(torch.allclose(s[k], m1[k], atol=1e-6) for k in s)


@pytest.fixture(scope="module")
def adapter(base_dir, tmp_path_factory):
    """A LoRA adapter of the base with random non-zero lora_B, and peft's own merge of it."""
    from peft import LoraConfig, get_peft_model

    from rlhfkit.models.loading import _quiet_peft

    with _quiet_peft():
        model = get_peft_model(_load(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    d = tmp_path_factory.mktemp("merge-adapter")
    model.save_pretrained(d)
    expected = {k: v.clone() for k, v in copy.deepcopy(model).merge_and_unload().state_dict().items()}
    return str(d), expected


def test_lora_adapter_equals_peft_merge(base_dir, adapter, tmp_path):
    path, expected = adapter
    assert os.path.isfile(os.path.join(path, "adapter_config.json"))
    out = str(tmp_path / "merged")
    run(MergeConfig(base=base_dir, models=[path], weights=[1.0], output_dir=out), log=lambda *a: None)
    got = _state(out)
    base = _state(base_dir)
    assert set(got) == set(expected)
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in got)
    assert not torch.allclose(got["model.layers.0.self_attn.q_proj.weight"],
                              base["model.layers.0.self_attn.q_proj.weight"])


def test_adapter_of_another_base_is_an_error(finetuned, adapter, tmp_path):
    with pytest.raises(ConfigError, match=r"models\[0\].*adapts"):
        run(MergeConfig(base=finetuned[0], models=[adapter[0]], output_dir=str(tmp_path / "o")))


def test_shape_mismatch_names_tensor_and_shapes(base_dir, tok, tmp_path):
    from rlhfkit.models.loading import tiny_model

    other = tmp_path / "wider"
    tiny_model(tok, layers=1, hidden=16, heads=2, kv_heads=1, intermediate=64).save_pretrained(other)
    with pytest.raises(ConfigError) as e:
        run(MergeConfig(base=base_dir, models=[str(other)], output_dir=str(tmp_path / "o")))
    msg = str(e.value)
    assert "model.embed_tokens.weight" in msg and f"({len(tok)}, 32)" in msg and f"({len(tok)}, 16)" in msg
    assert not os.path.exists(tmp_path / "o")


# --------------------------------------------------------------------------- config and errors
def _err(**kw):
    with pytest.raises(ConfigError) as e:
        MergeConfig(**kw).validate()
    return str(e.value)


def test_config_errors(base_dir, finetuned, tmp_path):
    ok = dict(base=base_dir, models=finetuned)
    msg = _err(**ok, method="tie")
    assert "method" in msg and all(m in msg for m in ("linear", "ties", "dare", "dare_ties", "slerp"))
    assert "did you mean 'ties'" in msg
    assert "weights has 1 values but models has 2" in _err(**ok, weights=[1.0])
    for bad in (0.0, 1.5, -0.1):
        assert "density must be a finite number > 0 and <= 1" in _err(**ok, density=bad)
    assert "scale" in _err(**ok, scale=0.0) and "t must be" in _err(**ok, t=1.5)
    msg = _err(base=base_dir, models=finetuned + [finetuned[0]], method="slerp")
    assert "slerp" in msg and "exactly 2" in msg and "models" in msg
    missing = str(tmp_path / "no-such-model")
    msg = _err(base=base_dir, models=[finetuned[0], missing])
    assert "models[1]" in msg and missing in msg and "not found" in msg
    assert "base" in _err(base="", models=finetuned)
    assert "models must list at least 1" in _err(base=base_dir, models=[])
    assert "weights[0]" in _err(**ok, method="ties", weights=[0.0, 1.0])
    assert "output_dir" in _err(**ok, output_dir=base_dir)
    assert "dtype" in _err(**ok, dtype="int8")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not an earlier merge"):
        run(MergeConfig(**ok, output_dir=str(busy)))


def test_lists_from_the_command_line_and_yaml(tmp_path, base_dir, finetuned):
    a, b = finetuned
    cfg = build_config(MergeConfig, None, [("base", base_dir), ("models", f"[{a},{b}]"), ("weights", "[0.25,0.75]")])
    assert cfg.models == [a, b] and cfg.weights == [0.25, 0.75]
    cfg = build_config(MergeConfig, None, [("base", base_dir), ("models", f"{a},{b}"), ("weights", "0.25,0.75")])
    assert cfg.models == [a, b] and cfg.weights == [0.25, 0.75]
    y = tmp_path / "m.yaml"
    y.write_text(f"base: {base_dir}\nmodels:\n  - {a}\n  - {b}\nmethod: dare\ndensity: 0.4\n")
    cfg = build_config(MergeConfig, str(y), [("seed", "3")])
    assert cfg.models == [a, b] and cfg.method == "dare" and cfg.density == 0.4 and cfg.seed == 3
    with pytest.raises(ConfigError, match="density"):
        build_config(MergeConfig, str(y), [("density", "2")])


def test_cli(capsys, tmp_path, base_dir, finetuned):
    out = str(tmp_path / "merged")
    assert main(["merge", "--base", base_dir, "--models", ",".join(finetuned), "--output_dir", out]) == 0
    assert os.path.isfile(os.path.join(out, "config.json")) and os.path.isfile(os.path.join(out, "rlhfkit_merge.json"))
    assert "merge: linear of 2 model(s)" in capsys.readouterr().out
    missing = str(tmp_path / "nope")
    code = main(["merge", "--base", base_dir, "--models", f"[{finetuned[0]},{missing}]", "--output_dir", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rlhfkit merge: error: models[1]") and missing in err[0]
    assert main(["merge", "--base", base_dir, "--models", finetuned[0], "--method", "lerp"]) == 2
    assert "method must be one of" in capsys.readouterr().err
    assert main(["merge", "--help"]) == 0 and "--density" in capsys.readouterr().out

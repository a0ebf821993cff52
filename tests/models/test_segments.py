"""Block-by-block attention over packed rows equals the masked SDPA it replaces: the blocks
collate lays out, the attention values and gradients, and whole-model log-probs, scores and
parameter gradients."""

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.data.collate import collate
from rlhfkit.data.tokenize import Example
from rlhfkit.models import segments
from rlhfkit.models.forward import completion_logprobs, sequence_scores
from rlhfkit.models.loading import tiny_model


def test_collate_lays_out_blocks_by_hand():
    # unit 0: prompt [11 12], completions [21 22] and [31] -> prompt block + two prefixed blocks;
    # unit 1: prompt [41] with one completion [51 52] -> a single causal block
    exs = [Example(0, [11, 12], [[21, 22], [31]]), Example(1, [41], [[51, 52]])]
    b = collate(exs, pad_id=0, pack_length=16)
    assert b.input_ids[0, :8].tolist() == [11, 12, 21, 22, 31, 41, 51, 52]
    assert b.blocks == [[(0, 2, 0, 0), (2, 4, 0, 2), (4, 5, 0, 2), (5, 8, 5, 5)]]


def mask_of(blocks, L):
    """The block-diagonal mask the blocks stand for (padding attends to itself)."""
    m = torch.zeros(len(blocks), 1, L, L, dtype=torch.bool)
    for r, row in enumerate(blocks):
        end = 0
        for qs, qe, ps, pe in row:
            m[r, 0, qs:qe, ps:pe] = True
            m[r, 0, qs:qe, qs:qe] = torch.ones(qe - qs, qe - qs, dtype=torch.bool).tril()
            end = qe
        for c in range(end, L):
            m[r, 0, c, c] = True
    return m


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_and_gradients_equal_masked_sdpa(kv_heads):
    g = torch.Generator().manual_seed(0)
    L, H, D = 13, 4, 8
    blocks = [[(0, 3, 0, 0), (3, 6, 0, 3), (6, 8, 0, 3), (8, 12, 8, 8)],  # shared prompt, then a sample; 1 pad
              [(0, 13, 0, 0)]]                                            # one sample filling the row
    q = torch.randn(2, H, L, D, generator=g, requires_grad=True)
    k = torch.randn(2, kv_heads, L, D, generator=g, requires_grad=True)
    v = torch.randn(2, kv_heads, L, D, generator=g, requires_grad=True)
    w = torch.randn(2, H, L, D, generator=g)
    real = torch.ones(2, 1, L, 1)
    real[0, :, 12] = 0  # the padding position's output is not compared (nothing reads it)
    got = segments.segment_attention(q, k, v, blocks, scale=0.3)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_of(blocks, L), scale=0.3,
                                          enable_gqa=kv_heads != H)
    assert float(((got - want) * real).detach().abs().max()) < 1e-5
    g1 = torch.autograd.grad((got * w * real).sum(), (q, k, v))
    g2 = torch.autograd.grad((want * w * real).sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert float((a - b).abs().max()) < 1e-5
    assert float(g2[1].abs().max()) > 1e-2
    with pytest.raises(ValueError, match="tile the row"):
        segments.segment_attention(q, k, v, [[(1, 3, 0, 0)], [(0, 13, 0, 0)]])


def examples():
    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(10, 1000, (n,), generator=g).tolist()

    return [Example(0, ids(7), [ids(5), ids(3)]), Example(1, ids(4), [ids(9)]),
            Example(2, ids(11), [ids(2), ids(4)]), Example(3, ids(3), [ids(8)])]


@pytest.mark.parametrize("share,pack_length", [(True, 0), (True, 30), (False, 40)])
def test_model_logprobs_and_gradients_equal_sdpa(tok, share, pack_length, monkeypatch):
    calls = []
    real = segments.segment_attention
    monkeypatch.setattr(segments, "segment_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = collate(examples(), pad_id=tok.pad_token_id, share_prompt=share, pack_length=pack_length)
    assert b.input_ids.shape[0] > 1 or pack_length == 0
    outs = []
    for impl in ("sdpa", segments.register()):
        model = tiny_model(tok, seed=4)
        model.set_attn_implementation(impl)
        assert segments.uses_segments(model) == (impl == segments.NAME)
        out = completion_logprobs(model, b, chunk=16)
        loss = (out.token_logps * torch.linspace(0.5, 1.5, out.token_logps.numel())).sum()
        loss.backward()
        outs.append((out.token_logps.detach(), [p.grad.clone() for p in model.parameters()]))
    assert len(calls) == 2  # both layers of the segments model took the block path
    (l1, g1), (l2, g2) = outs
    assert float((l1 - l2).abs().max()) < 1e-5
    assert max(float((a - c).abs().max()) for a, c in zip(g1, g2)) < 1e-5


def test_scores_equal_sdpa(tok):
    b = collate(examples(), pad_id=tok.pad_token_id, pack_length=30)
    got = []
    for impl in ("sdpa", segments.register()):
        model = tiny_model(tok, seed=2, scalar_head=True).eval()
        model.set_attn_implementation(impl)
        with torch.no_grad():
            got.append(sequence_scores(model, b))
    assert float((got[0] - got[1]).abs().max()) < 1e-5


def test_loading_selects_segments_for_sdpa_only(tiny_dir):
    from rlhfkit.config import ModelConfig
    from rlhfkit.models.loading import load_model

    assert segments.uses_segments(load_model(ModelConfig(name=tiny_dir))[0])
    assert not segments.uses_segments(load_model(ModelConfig(name=tiny_dir, segment_attention=False))[0])
    assert not segments.uses_segments(load_model(ModelConfig(name=tiny_dir, attn_implementation="eager"))[0])

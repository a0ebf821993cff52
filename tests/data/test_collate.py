"""Packing and prompt sharing change nothing but speed: log-probs and scores match a plain
per-sequence forward with ordinary (unpacked, unpadded) inputs."""

import pytest
import torch

from rlhfkit.data.collate import collate, sequence_index
from rlhfkit.data.tokenize import Example
from rlhfkit.models.forward import completion_logprobs, sequence_scores
from rlhfkit.models.loading import tiny_model


def examples():
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(10, 1000, (n,), generator=g).tolist()

    return [Example(0, ids(7), [ids(5), ids(3)]), Example(1, ids(4), [ids(9), ids(6)]),
            Example(2, ids(11), [ids(2), ids(4)]), Example(3, ids(3), [ids(1), ids(8)])]


def reference_logps(model, ex: Example, k: int) -> float:
    """Plain HF forward on prompt + completion alone; sum of completion-token log-probs."""
    seq = torch.tensor([ex.prompt + ex.completions[k]])
    with torch.no_grad():
        logits = model(seq).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    p = len(ex.prompt)
    return float(sum(logp[p - 1 + j, t] for j, t in enumerate(ex.completions[k])))


@pytest.mark.parametrize("share,pack,pack_length", [(True, True, 0), (True, True, 64),
                                                   (False, True, 40), (False, False, 0)])
def test_packed_logprobs_equal_unpacked(tok, share, pack, pack_length):
    torch.manual_seed(0)
    model = tiny_model(tok, seed=1).eval()
    exs = examples()
    b = collate(exs, pad_id=tok.pad_token_id, share_prompt=share, pack=pack, pack_length=pack_length)
    with torch.no_grad():
        out = completion_logprobs(model, b, chunk=7)
    idx = sequence_index(b, 2)
    for e, ex in enumerate(exs):
        for k in range(2):
            assert out.seq_logps[idx[e, k]].item() == pytest.approx(reference_logps(model, ex, k), abs=1e-4)
            assert out.seq_tokens[idx[e, k]].item() == len(ex.completions[k])


def test_sharing_and_packing_compute_fewer_positions(tok):
    exs = examples()
    shared = collate(exs, pad_id=0, share_prompt=True, pack=True, pack_length=64)
    plain = collate(exs, pad_id=0, share_prompt=False, pack=False)
    assert shared.num_real_tokens == sum(ex.num_tokens for ex in exs)
    assert plain.num_real_tokens == sum(2 * len(ex.prompt) + sum(map(len, ex.completions)) for ex in exs)
    assert shared.input_ids.numel() < plain.input_ids.numel()


def test_mask_isolates_completions_and_samples(tok):
    exs = [Example(0, [11, 12], [[21, 22], [31]]), Example(1, [41], [[51, 52]])]
    b = collate(exs, pad_id=0, pack_length=16)
    assert b.input_ids.shape[0] == 1
    row = b.input_ids[0].tolist()[:8]
    assert row == [11, 12, 21, 22, 31, 41, 51, 52]
    m = b.attention_mask[0, 0].int()
    # rejected token 31 sees the prompt and itself, not the chosen tokens 21, 22
    assert m[4, :8].tolist() == [1, 1, 0, 0, 1, 0, 0, 0]
    # the second sample sees nothing of the first
    assert m[6, :8].tolist() == [0, 0, 0, 0, 0, 1, 1, 0]
    # positions continue from the prompt's end for both completions
    assert b.position_ids[0, :8].tolist() == [0, 1, 2, 3, 2, 0, 1, 2]
    # token 31 is predicted from the last prompt token (flat index 1)
    seq = {(int(e), int(k)): s for s, (e, k) in enumerate(zip(b.seq_example, b.seq_completion))}
    assert b.tgt_pos[b.tgt_seq == seq[(0, 1)]].tolist() == [1]


def test_packed_scores_equal_separate_forward(tok):
    model = tiny_model(tok, seed=2, scalar_head=True).eval()
    exs = examples()
    b = collate(exs, pad_id=tok.pad_token_id, pack_length=64)
    with torch.no_grad():
        s = sequence_scores(model, b)
        idx = sequence_index(b, 2)
        for e, ex in enumerate(exs):
            for k in range(2):
                seq = torch.tensor([ex.prompt + ex.completions[k]])
                h = model.model(seq).last_hidden_state[0, -1]
                assert s[idx[e, k]].item() == pytest.approx(model.score(h).item(), abs=1e-5)


def test_pack_rows_balances_rows_to_compute_fewest_positions():
    from rlhfkit.data.collate import pack_rows

    # 680 tokens, capacity 512: first-fit decreasing fills one row to 490 and leaves 190 in
    # the other (2 x 490 = 980 positions); balanced, the rows hold 330 and 350 (700 positions)
    lengths = [200, 150, 140, 130, 60]
    rows = pack_rows(lengths, 512)
    widths = sorted(sum(lengths[i] for i in r) for r in rows)
    assert widths == [330, 350] and sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    # every row fits the capacity; a unit longer than it gets its own row
    lengths = [300, 250, 200, 120, 80, 40, 700]
    rows = pack_rows(lengths, 512)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert [6] in rows and all(sum(lengths[i] for i in r) <= 512 for r in rows if r != [6])
    # never more positions than one unit per row (plain padding)
    for lengths in ([5], [9, 1], [3, 3, 3], [100, 1, 1, 1, 1]):
        rows = pack_rows(lengths, 64)
        assert len(rows) * max(sum(lengths[i] for i in r) for r in rows) <= len(lengths) * max(lengths)

"""Batches without compute on padding: padding-free packing with a shared prompt.

A *unit* is one example laid out as ``prompt | completion_1 | ... | completion_K``. With
``share_prompt`` the prompt is computed once for all K completions: each completion attends
to the prompt and to itself (causally) but not to the other completions, and its position
ids continue from the prompt's end, so every completion sees exactly what it would see in
its own row. Units are packed into rows of at most ``pack_length`` tokens, balanced so that rows x
longest row (the positions computed) is as small as it can be, with
a block-diagonal 4-D boolean mask (True = may attend), so samples never see each other.
Without ``share_prompt`` every completion is its own unit (prompt repeated), which is the
plain layout the shared one is tested against.

Targets. The token at position j is predicted by the hidden state at position j-1; for the
first completion token that is the last prompt token (shared). ``tgt_pos`` holds the flat
(row * L + col) index of each predicting position, ``tgt_ids`` the target ids,
``tgt_seq`` the sequence (example, completion) each target belongs to and ``tgt_mask``
whether it carries loss. ``last_pos`` is the flat index of each sequence's last token
(where a reward model reads its score).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .tokenize import Example


@dataclass
class Batch:
    input_ids: Tensor        # (R, L)
    position_ids: Tensor     # (R, L)
    attention_mask: Tensor   # (R, 1, L, L) bool
    tgt_pos: Tensor          # (T,) flat index of the position predicting each target
    tgt_ids: Tensor          # (T,)
    tgt_seq: Tensor          # (T,) sequence index
    tgt_mask: Tensor         # (T,) float, 1 = carries loss
    last_pos: Tensor         # (S,) flat index of each sequence's last token
    seq_example: Tensor      # (S,) example index of each sequence
    seq_completion: Tensor   # (S,) completion index within its example
    seq_len: Tensor          # (S,) completion length in tokens
    num_examples: int
    examples: list[Example]
    num_real_tokens: int     # tokens that are not padding
    blocks: list | None = None  # per row: (query start, end, prefix start, end) attention blocks

    @property
    def num_sequences(self) -> int:
        return int(self.last_pos.numel())

    def to(self, device) -> "Batch":
        for k, v in vars(self).items():
            if isinstance(v, Tensor):
                setattr(self, k, v.to(device))
        return self


def _units(examples: list[Example], share_prompt: bool) -> list[tuple[int, list[int], list[tuple[int, list[int], list[int]]]]]:
    """-> [(example index, prompt ids, [(completion index, ids, mask), ...])]."""
    units = []
    for e, ex in enumerate(examples):
        comps = [(k, c, (ex.masks[k] if ex.masks else [1] * len(c)))
                 for k, c in enumerate(ex.completions)]
        if share_prompt or len(comps) <= 1:
            units.append((e, ex.prompt, comps))
        else:
            units += [(e, ex.prompt, [c]) for c in comps]
    return units


def _lpt(lengths: list[int], order: list[int], n_rows: int) -> list[list[int]]:
    """Longest-first onto the currently shortest row (greedy makespan balancing)."""
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    load = [0] * n_rows
    for i in order:
        r = min(range(n_rows), key=lambda j: (load[j], j))
        rows[r].append(i)
        load[r] += lengths[i]
    return [r for r in rows if r]


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group units into rows of at most ``capacity`` tokens so that the padded batch
    (rows x longest row) holds as few positions as possible: for each row count from the
    minimum ``ceil(total / capacity)`` up, units are balanced longest-first onto the shortest
    row, and the cheapest layout that fits wins (ties: more, shorter rows, which cost less
    attention). A unit longer than ``capacity`` gets a row of its own."""
    n = len(lengths)
    capacity = max(capacity, max(lengths))
    order = sorted(range(n), key=lambda i: -lengths[i])
    best, best_cost = [[i] for i in range(n)], n * max(lengths)  # one unit per row always fits
    for n_rows in range(max(1, -(-sum(lengths) // capacity)), n):
        rows = _lpt(lengths, order, n_rows)
        width = max(sum(lengths[i] for i in r) for r in rows)
        if width <= capacity and len(rows) * width <= best_cost:
            best, best_cost = rows, len(rows) * width
    for r in best:
        r.sort()  # keep file order inside a row (deterministic layout)
    return best


def collate(examples: list[Example], *, pad_id: int, pack_length: int = 0,
            share_prompt: bool = True, pack: bool = True) -> Batch:
    """Lay out ``examples`` in packed rows; see the module docstring."""
    units = _units(examples, share_prompt)
    lengths = [len(p) + sum(len(c) for _, c, _ in comps) for _, p, comps in units]
    if pack:
        capacity = max(pack_length or 0, max(lengths))
        rows = pack_rows(lengths, capacity)
    else:
        rows = [[i] for i in range(len(units))]
    L = max(sum(lengths[i] for i in r) for r in rows)
    R = len(rows)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    # segment id per position: which (unit, part) a token belongs to; -1 = padding
    allowed = torch.zeros((R, L, L), dtype=torch.bool)
    tgt_pos, tgt_ids, tgt_seq, tgt_mask = [], [], [], []
    seq_meta: dict[tuple[int, int], tuple[int, int]] = {}  # (example, completion) -> (last, len)
    real = 0
    blocks: list[list[tuple[int, int, int, int]]] = []
    for r, unit_ids in enumerate(rows):
        col = 0
        row_blocks: list[tuple[int, int, int, int]] = []
        for u in unit_ids:
            e, prompt, comps = units[u]
            unit_start = col
            shared = len(comps) != 1  # else prompt + completion is one causal block
            p = len(prompt)
            input_ids[r, col:col + p] = torch.tensor(prompt, dtype=torch.long)
            position_ids[r, col:col + p] = torch.arange(p)
            allowed[r, col:col + p, col:col + p] = torch.tril(torch.ones(p, p, dtype=torch.bool))
            prompt_start, prompt_end = col, col + p
            col += p
            if shared and p:
                row_blocks.append((prompt_start, prompt_end, prompt_start, prompt_start))
            for k, ids, mask in comps:
                n = len(ids)
                input_ids[r, col:col + n] = torch.tensor(ids, dtype=torch.long)
                position_ids[r, col:col + n] = torch.arange(p, p + n)
                allowed[r, col:col + n, prompt_start:prompt_end] = True
                allowed[r, col:col + n, col:col + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
                # position predicting completion token j: prompt end for j = 0, else col + j - 1
                preds = [prompt_end - 1] + list(range(col, col + n - 1))
                seq_index = len(seq_meta)
                seq_meta[(e, k)] = (r * L + col + n - 1, n, seq_index)
                tgt_pos += [r * L + c for c in preds]
                tgt_ids += ids
                tgt_seq += [seq_index] * n
                tgt_mask += mask
                if shared and n:
                    row_blocks.append((col, col + n, prompt_start, prompt_end))
                col += n
            if not shared and col > unit_start:
                row_blocks.append((unit_start, col, unit_start, unit_start))
        blocks.append(row_blocks)
        real += col
        for c in range(col, L):  # padding attends to itself only (keeps softmax finite)
            allowed[r, c, c] = True
    order = sorted(seq_meta.items(), key=lambda kv: kv[1][2])
    return Batch(
        input_ids=input_ids, position_ids=position_ids, attention_mask=allowed[:, None],
        tgt_pos=torch.tensor(tgt_pos, dtype=torch.long), tgt_ids=torch.tensor(tgt_ids, dtype=torch.long),
        tgt_seq=torch.tensor(tgt_seq, dtype=torch.long),
        tgt_mask=torch.tensor(tgt_mask, dtype=torch.float32),
        last_pos=torch.tensor([v[0] for _, v in order], dtype=torch.long),
        seq_example=torch.tensor([k[0] for k, _ in order], dtype=torch.long),
        seq_completion=torch.tensor([k[1] for k, _ in order], dtype=torch.long),
        seq_len=torch.tensor([v[1] for _, v in order], dtype=torch.long),
        num_examples=len(examples), examples=examples, num_real_tokens=real, blocks=blocks)


def sequence_index(batch: Batch, num_completions: int) -> Tensor:
    """(E, K) matrix of sequence indices: row e, column k = completion k of example e."""
    idx = torch.full((batch.num_examples, num_completions), -1, dtype=torch.long)
    idx[batch.seq_example, batch.seq_completion] = torch.arange(batch.num_sequences)
    return idx

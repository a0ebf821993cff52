"""Rendering through the chat template, completion masks and the truncation policy."""

import collections

import pytest

from rlhfkit.config import DataConfig
from rlhfkit.data.formats import normalize_rows
from rlhfkit.data.loading import load_rows
from rlhfkit.data.tokenize import Example, Renderer, tokenize_records, truncate
from rlhfkit.errors import DataError

from conftest import HH_FILE as HH, needs_hh
SYS = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def dec(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_conversational_prompt_completion_ends_at_eos(tok):
    r = Renderer(tok)
    ex = r.example({"kind": "prompt_completion", "row": 0,
                    "prompt": [{"role": "user", "content": "hi"}], "completion": "hello"})
    assert dec(tok, ex.prompt) == SYS + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # the template's newline after <|im_end|> is not trained: generation stops at EOS
    assert dec(tok, ex.completions[0]) == "hello<|im_end|>"
    assert ex.completions[0][-1] == tok.eos_token_id


def test_standard_strings_are_not_templated_and_get_eos(tok):
    r = Renderer(tok)
    ex = r.example({"kind": "prompt_completion", "row": 0, "prompt": "2 + 2 =", "completion": " 4"})
    assert dec(tok, ex.prompt) == "2 + 2 ="
    assert dec(tok, ex.completions[0]) == " 4<|im_end|>"


def test_multiturn_mask_trains_only_assistant_turns(tok):
    msgs = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]
    ex = Renderer(tok).example({"kind": "language_modeling", "row": 0, "messages": msgs})
    ids, mask = ex.completions[0], ex.masks[0]
    trained = dec(tok, [t for t, m in zip(ids, mask) if m])
    context = dec(tok, [t for t, m in zip(ids, mask) if not m])
    assert trained == "a1<|im_end|>a2<|im_end|>"
    assert context == "\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n"
    assert dec(tok, ex.prompt).endswith("<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n")


@needs_hh
def test_hh_rows_render_as_multiturn_chat(tok):
    recs = normalize_rows(load_rows(HH, rows="0:1"))
    ex = Renderer(tok).example(recs[0])
    p = dec(tok, ex.prompt)
    assert p.startswith(SYS + "<|im_start|>user\nwhat are some pranks with a pen i can do?<|im_end|>\n")
    assert "<|im_start|>assistant\nAre you looking for practical joke ideas?<|im_end|>\n" in p
    assert p.count("<|im_start|>user") == 3 and p.endswith("<|im_start|>assistant\n")
    assert "Human:" not in p and "Assistant:" not in p
    assert dec(tok, ex.completions[0]).startswith("No, sorry!")
    assert dec(tok, ex.completions[1]).startswith("There are lots of funny things")


def test_missing_chat_template_is_a_clear_error(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        Renderer(t).example({"kind": "prompt_completion", "row": 3,
                             "prompt": [{"role": "user", "content": "hi"}], "completion": "x"})


def _ex(p, *cs):
    return Example(row=0, prompt=list(range(p)), completions=[list(range(100, 100 + c)) for c in cs])


def test_truncation_policy():
    stats = collections.Counter()
    cfg = DataConfig(max_length=10, max_prompt_length=6)
    assert truncate(_ex(7, 2), cfg, stats) is None                      # prompt too long: dropped
    assert stats["dropped: prompt longer than max_prompt_length"] == 1
    left = truncate(_ex(7, 2), DataConfig(max_length=10, max_prompt_length=6, prompt_truncation="left"), stats)
    assert left.prompt == [1, 2, 3, 4, 5, 6]                            # keeps the last tokens
    cut = truncate(_ex(4, 9, 3), cfg, stats)
    assert cut.completions == [list(range(100, 106)), [100, 101, 102]]  # 4 + 6 = max_length
    assert stats["completions cut at max_length"] == 1
    assert truncate(_ex(4, 9), DataConfig(max_length=10, completion_truncation="drop"), stats) is None
    # two completions that only differ after the cut carry no preference any more
    same = Example(0, [1, 2], [[5, 6, 7, 8], [5, 6, 7, 9]])
    assert truncate(same, DataConfig(max_length=4), stats) is None


def test_all_rows_over_length_is_an_error(tok):
    recs = [{"kind": "prompt_completion", "row": i, "prompt": "word " * 50, "completion": "x"}
            for i in range(3)]
    log = []
    with pytest.raises(DataError, match="no rows left"):
        tokenize_records(recs, tok, DataConfig(max_length=16), log=log.append)
    assert "3 dropped: prompt longer than max_prompt_length" in log[0]

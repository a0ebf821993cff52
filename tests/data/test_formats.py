"""Tests for rlhfkit.data.formats: kind detection, normalisation, implicit prompts, errors."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfkit.data.formats import (
    KINDS,
    detect_kind,
    normalize_row,
    normalize_rows,
    parse_hh_dialogue,
)
from rlhfkit.data.loading import RawRows, load_rows
from rlhfkit.errors import DataError

from conftest import HH_FILE


def U(content):
    return {"role": "user", "content": content}


def A(content):
    return {"role": "assistant", "content": content}


def S(content):
    return {"role": "system", "content": content}


def raw_of(rows, source="mem.jsonl", index=None):
    return RawRows(source=source, rows=list(rows), index=list(range(len(rows))) if index is None
                   else list(index))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- detection

DETECT_CASES = [
    # (kind, standard row, conversational row)
    ("language_modeling", {"text": "The sky is blue."},
     {"messages": [U("What colour is the sky?"), A("Blue.")]}),
    ("prompt_completion", {"prompt": "The sky is", "completion": " blue."},
     {"prompt": [U("What colour is the sky?")], "completion": [A("Blue.")]}),
    ("preference", {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
     {"prompt": [U("Sky colour?")], "chosen": [A("Blue.")], "rejected": [A("Green.")]}),
    ("preference", {"chosen": "The sky is blue.", "rejected": "The sky is green."},
     {"chosen": [U("Sky colour?"), A("Blue.")], "rejected": [U("Sky colour?"), A("Green.")]}),
    ("unpaired", {"prompt": "The sky is", "completion": " blue.", "label": True},
     {"prompt": [U("Sky colour?")], "completion": [A("Green.")], "label": False}),
    ("listwise", {"prompt": "The sky is", "completions": [" blue.", " green.", " red."],
                  "ranks": [1, 2, 3]},
     {"prompt": [U("Sky colour?")], "completions": [[A("Blue.")], [A("Green.")]],
      "ranks": [1, 2]}),
    ("listwise", {"prompt": "The sky is", "completions": [" blue.", " green."],
                  "scores": [0.9, 0.1]},
     {"prompt": [U("Sky colour?")], "completions": [[A("Blue.")], [A("Green.")]],
      "scores": [1.5, -0.5]}),
    ("prompt_only", {"prompt": "What is 2+2?", "answer": "4"},
     {"prompt": [S("Be brief."), U("What is 2+2?")], "answer": "4"}),
]


@pytest.mark.parametrize("style", ["standard", "conversational"])
@pytest.mark.parametrize("kind, standard, conversational", DETECT_CASES)
def test_detect_kind_and_normalize_each_kind(kind, standard, conversational, style):
    row = standard if style == "standard" else conversational
    assert detect_kind(row) == kind
    rec = normalize_row(kind, "d.jsonl", 0, row)
    assert rec["kind"] == kind and rec["row"] == 0
    recs = normalize_rows(raw_of([row, row]))
    assert [r["kind"] for r in recs] == [kind, kind]
    assert [r["row"] for r in recs] == [0, 1]


def test_detect_kind_language_modeling_text_and_messages():
    assert detect_kind({"text": "x"}) == "language_modeling"
    assert detect_kind({"messages": []}) == "language_modeling"


def test_detect_kind_precedence():
    # label turns prompt+completion into unpaired; chosen+rejected wins over everything
    assert detect_kind({"prompt": "p", "completion": "c", "label": 1}) == "unpaired"
    assert detect_kind({"prompt": "p", "chosen": "a", "rejected": "b", "completion": "c"}) \
        == "preference"
    # completions without ranks/scores is not listwise
    assert detect_kind({"prompt": "p", "completions": ["a", "b"]}) == "prompt_only"


def test_detect_kind_unknown_fields():
    with pytest.raises(DataError, match="cannot tell the data format") as ei:
        detect_kind({"question": "q", "answer": "a"}, source="my.jsonl")
    assert "my.jsonl" in str(ei.value)
    assert "['answer', 'question']" in str(ei.value)


def test_normalize_standard_records_content():
    rec = normalize_row("prompt_completion", "s", 5, {"prompt": "The sky is", "completion": " blue."})
    assert rec == {"kind": "prompt_completion", "row": 5, "prompt": "The sky is",
                   "completion": " blue."}
    rec = normalize_row("unpaired", "s", 0, {"prompt": "p", "completion": "c", "label": "false"})
    assert rec["label"] is False
    rec = normalize_row("unpaired", "s", 0, {"prompt": "p", "completion": "c", "label": 1})
    assert rec["label"] is True
    rec = normalize_row("prompt_only", "s", 2, {"prompt": "q", "answer": "4", "kind": "x",
                                                "row": 99})
    assert rec == {"kind": "prompt_only", "row": 2, "prompt": "q", "answer": "4"}


def test_conversational_prompt_with_string_completion_becomes_assistant_message():
    rec = normalize_row("prompt_completion", "s", 0, {"prompt": [U("hi")], "completion": "hello"})
    assert rec["completion"] == [A("hello")]
    rec = normalize_row("preference", "s", 0,
                        {"prompt": [U("hi")], "chosen": "hello", "rejected": "go away"})
    assert rec["chosen"] == [A("hello")] and rec["rejected"] == [A("go away")]


def test_string_prompt_with_message_completion_is_an_error():
    with pytest.raises(DataError, match="same") as ei:
        normalize_row("prompt_completion", "s.jsonl", 4, {"prompt": "hi", "completion": [A("x")]})
    assert "row 4" in str(ei.value) and "field 'completion'" in str(ei.value)


def test_messages_extra_keys_dropped():
    rec = normalize_row("language_modeling", "s", 0,
                        {"messages": [{"role": "user", "content": "q", "name": "bob"}, A("a")]})
    assert rec["messages"] == [U("q"), A("a")]


# --------------------------------------------------------------------------- implicit prompts


def test_parse_hh_dialogue():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine thanks"
    assert parse_hh_dialogue(text) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "fine thanks"},
    ]
    assert parse_hh_dialogue("\n\nHuman: multi\nline\n\nAssistant:") == [
        {"role": "user", "content": "multi\nline"},
        {"role": "assistant", "content": ""},
    ]


def test_implicit_prompt_hh_rlhf_strings():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine thanks"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"
    recs = normalize_rows(raw_of([{"chosen": chosen, "rejected": rejected}]))
    assert recs == [{
        "kind": "preference",
        "row": 0,
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how are you?"},
        ],
        "chosen": [{"role": "assistant", "content": "fine thanks"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }]


def test_implicit_prompt_hh_single_turn_shared_first_letters():
    chosen = "\n\nHuman: capital of France?\n\nAssistant: Paris"
    rejected = "\n\nHuman: capital of France?\n\nAssistant: Perhaps Lyon"
    rec = normalize_row("preference", "s", 0, {"chosen": chosen, "rejected": rejected})
    assert rec["prompt"] == [{"role": "user", "content": "capital of France?"}]
    assert rec["chosen"] == [{"role": "assistant", "content": "Paris"}]
    assert rec["rejected"] == [{"role": "assistant", "content": "Perhaps Lyon"}]


def test_implicit_prompt_conversational_messages():
    chosen = [S("You are kind."), U("Is water wet?"), A("Yes, it is.")]
    rejected = [S("You are kind."), U("Is water wet?"), A("Yes, obviously, idiot.")]
    rec = normalize_row("preference", "s", 0, {"chosen": chosen, "rejected": rejected})
    assert rec["prompt"] == [{"role": "system", "content": "You are kind."},
                             {"role": "user", "content": "Is water wet?"}]
    assert rec["chosen"] == [{"role": "assistant", "content": "Yes, it is."}]
    assert rec["rejected"] == [{"role": "assistant", "content": "Yes, obviously, idiot."}]


def test_implicit_prompt_conversational_backs_off_to_assistant_turn():
    # The conversations diverge at a user turn (index 2); the completion must start at an
    # assistant turn, so the split backs off to index 1.
    chosen = [U("q"), A("a1"), U("q2"), A("x")]
    rejected = [U("q"), A("a1"), U("q3"), A("y")]
    rec = normalize_row("preference", "s", 0, {"chosen": chosen, "rejected": rejected})
    assert rec["prompt"] == [{"role": "user", "content": "q"}]
    assert rec["chosen"] == [{"role": "assistant", "content": "a1"},
                             {"role": "user", "content": "q2"},
                             {"role": "assistant", "content": "x"}]
    assert rec["rejected"] == [{"role": "assistant", "content": "a1"},
                               {"role": "user", "content": "q3"},
                               {"role": "assistant", "content": "y"}]


def test_implicit_prompt_plain_strings_cut_at_whitespace():
    # Shared prefix is "Question: what is 2+2? Answer: f"; the cut backs off to the last space
    # so "four"/"five" are not split.
    rec = normalize_row("preference", "s", 0, {"chosen": "Question: what is 2+2? Answer: four",
                                               "rejected": "Question: what is 2+2? Answer: five"})
    assert rec["prompt"] == "Question: what is 2+2? Answer: "
    assert rec["chosen"] == "four"
    assert rec["rejected"] == "five"


def test_implicit_prompt_plain_strings_word_prefix():
    rec = normalize_row("preference", "s", 0, {"chosen": "I saw it yes",
                                               "rejected": "I saw it yesterday"})
    assert rec["prompt"] == "I saw it "
    assert rec["chosen"] == "yes"
    assert rec["rejected"] == "yesterday"


def test_implicit_prompt_no_shared_prefix():
    with pytest.raises(DataError, match="share no prompt") as ei:
        normalize_row("preference", "pairs.jsonl", 7, {"chosen": "Yes", "rejected": "No"})
    assert "pairs.jsonl" in str(ei.value) and "row 7" in str(ei.value)
    assert "field 'prompt'" in str(ei.value)
    with pytest.raises(DataError, match="share no prompt"):
        normalize_row("preference", "s", 0, {"chosen": "Yesterday", "rejected": "Yes today"})
    with pytest.raises(DataError, match="share no prompt"):
        normalize_row("preference", "s", 0, {"chosen": [A("a")], "rejected": [A("b")]})


def test_implicit_prompt_mixed_styles():
    with pytest.raises(DataError, match="both") as ei:
        normalize_row("preference", "s", 1, {"chosen": "text", "rejected": [A("msg")]})
    assert "row 1" in str(ei.value)


def test_explicit_prompt_keeps_strings():
    rec = normalize_row("preference", "s", 0, {"prompt": "Q: ", "chosen": "A", "rejected": "B"})
    assert rec == {"kind": "preference", "row": 0, "prompt": "Q: ", "chosen": "A",
                   "rejected": "B"}


# --------------------------------------------------------------------------- real data


def test_real_hh_rlhf_harmless_first_50_rows():
    if not os.path.exists(HH_FILE):
        pytest.skip(f"{HH_FILE} not available")
    raw = load_rows(HH_FILE, rows="0:50")
    assert len(raw) == 50 and raw.index == list(range(50))
    recs = normalize_rows(raw, expected=("preference",))
    assert len(recs) == 50
    for rec in recs:
        assert rec["kind"] == "preference"
        p = rec["prompt"]
        assert isinstance(p, list) and p, rec["row"]
        assert p[-1]["role"] == "user", rec["row"]
        assert all(m["role"] in ("user", "assistant") for m in p)
        for field in ("chosen", "rejected"):
            c = rec[field]
            assert isinstance(c, list) and c, (rec["row"], field)
            assert c[0]["role"] == "assistant", (rec["row"], field)
            assert any(m["content"].strip() for m in c)
        assert rec["chosen"] != rec["rejected"]
    first = recs[0]
    assert first["row"] == 0
    assert first["prompt"][0]["role"] == "user"
    assert first["prompt"][0]["content"].startswith("what are some pranks with a pen i can do?")


# --------------------------------------------------------------------------- listwise scores


def test_ranks_become_scores_higher_is_better():
    rec = normalize_row("listwise", "s", 0, {"prompt": "p", "completions": ["a", "b", "c"],
                                             "ranks": [2, 1, 3]})
    assert rec["scores"] == [-2.0, -1.0, -3.0]
    assert all(isinstance(s, float) for s in rec["scores"])
    assert "ranks" not in rec
    best = max(range(3), key=lambda i: rec["scores"][i])
    assert rec["completions"][best] == "b"


def test_scores_kept_as_floats():
    rec = normalize_row("listwise", "s", 0, {"prompt": "p", "completions": ["a", "b"],
                                             "scores": [3, 0.5]})
    assert rec["scores"] == [3.0, 0.5]


def test_scores_take_precedence_over_ranks_and_none_scores_fall_back():
    rec = normalize_row("listwise", "s", 0, {"prompt": "p", "completions": ["a", "b"],
                                             "scores": [0.0, 1.0], "ranks": [1, 2]})
    assert rec["scores"] == [0.0, 1.0]
    rec = normalize_row("listwise", "s", 0, {"prompt": "p", "completions": ["a", "b"],
                                             "scores": None, "ranks": [1, 2]})
    assert rec["scores"] == [-1.0, -2.0]


def test_listwise_conversational_string_completions_become_messages():
    rec = normalize_row("listwise", "s", 0, {"prompt": [U("q")], "completions": ["a", [A("b")]],
                                             "scores": [1, 0]})
    assert rec["completions"] == [[A("a")], [A("b")]]


# --------------------------------------------------------------------------- malformed rows


def _assert_names(err, source, row, field):
    msg = str(err)
    assert source in msg, msg
    assert f"row {row}" in msg, msg
    assert f"field '{field}'" in msg, msg
    assert err.source == source and err.row == row and err.field == field


def _fail_at_row3(tmp_path, good, bad, field, match=None, **kw):
    """Rows 0-2 and 4 are ``good``; row 3 is ``bad``. Loading + normalising must fail at row 3."""
    src = write_jsonl(tmp_path / "bad.jsonl", [good, good, good, bad, good])
    raw = load_rows(src)
    with pytest.raises(DataError, match=match) as ei:
        normalize_rows(raw, **kw)
    _assert_names(ei.value, src, 3, field)
    return ei.value


def test_missing_key_preference_without_rejected(tmp_path):
    _fail_at_row3(tmp_path, {"prompt": "p", "chosen": "a", "rejected": "b"},
                  {"prompt": "p", "chosen": "a"}, "rejected", match="missing required field")


def test_missing_key_null_value(tmp_path):
    _fail_at_row3(tmp_path, {"prompt": "p", "completion": "c"}, {"prompt": None, "completion": "c"},
                  "prompt", match="missing required field")


def test_missing_key_text(tmp_path):
    _fail_at_row3(tmp_path, {"text": "t"}, {"txt": "t"}, "text")


def test_wrong_type_completion_int(tmp_path):
    _fail_at_row3(tmp_path, {"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": 5},
                  "completion", match="expected a string or a list of messages, got int")


def test_wrong_type_message_content_not_string(tmp_path):
    _fail_at_row3(tmp_path, {"messages": [U("q"), A("a")]},
                  {"messages": [U("q"), {"role": "assistant", "content": 42}]},
                  "messages", match="content must be a string, got int")


def test_wrong_type_message_missing_role(tmp_path):
    _fail_at_row3(tmp_path, {"messages": [U("q"), A("a")]},
                  {"messages": [U("q"), {"content": "a"}]},
                  "messages", match="'role' and 'content'")


def test_wrong_type_messages_not_a_list(tmp_path):
    _fail_at_row3(tmp_path, {"messages": [U("q"), A("a")]}, {"messages": "q a"},
                  "messages", match="non-empty list of messages")


def test_unknown_role(tmp_path):
    _fail_at_row3(tmp_path, {"messages": [U("q"), A("a")]},
                  {"messages": [U("q"), {"role": "bot", "content": "a"}]},
                  "messages", match="unknown role 'bot'")


def test_unknown_role_in_chosen(tmp_path):
    good = {"prompt": [U("q")], "chosen": [A("a")], "rejected": [A("b")]}
    bad = {"prompt": [U("q")], "chosen": [{"role": "Assistant", "content": "a"}],
           "rejected": [A("b")]}
    _fail_at_row3(tmp_path, good, bad, "chosen", match="unknown role")


def test_text_not_a_string_or_blank(tmp_path):
    _fail_at_row3(tmp_path, {"text": "t"}, {"text": ["t"]}, "text", match="non-empty string")
    _fail_at_row3(tmp_path, {"text": "t"}, {"text": " \n"}, "text", match="non-empty string")


def test_conversation_without_assistant_message(tmp_path):
    _fail_at_row3(tmp_path, {"messages": [U("q"), A("a")]},
                  {"messages": [U("q"), A("   ")]}, "messages", match="no non-empty assistant")


@pytest.mark.parametrize("empty", ["", "   ", "\n\t "])
def test_empty_completion(tmp_path, empty):
    _fail_at_row3(tmp_path, {"prompt": "p", "completion": "c"},
                  {"prompt": "p", "completion": empty}, "completion", match="empty completion")


def test_empty_completion_messages(tmp_path):
    _fail_at_row3(tmp_path, {"prompt": [U("p")], "completion": [A("c")]},
                  {"prompt": [U("p")], "completion": [A("  ")]}, "completion",
                  match="empty completion")


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_chosen(tmp_path, empty):
    _fail_at_row3(tmp_path, {"prompt": "p", "chosen": "a", "rejected": "b"},
                  {"prompt": "p", "chosen": empty, "rejected": "b"}, "chosen",
                  match="empty completion")


def test_implicit_hh_empty_final_assistant_turn(tmp_path):
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: bye"}
    bad = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant:"}
    _fail_at_row3(tmp_path, good, bad, "rejected", match="empty completion")


def test_chosen_equals_rejected(tmp_path):
    _fail_at_row3(tmp_path, {"prompt": "p", "chosen": "a", "rejected": "b"},
                  {"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected",
                  match="identical")


def test_chosen_equals_rejected_implicit_conversational(tmp_path):
    conv = [U("q"), A("a")]
    _fail_at_row3(tmp_path, {"chosen": conv, "rejected": [U("q"), A("b")]},
                  {"chosen": conv, "rejected": conv}, "rejected", match="identical")


@pytest.mark.parametrize("label", ["maybe", 2, 0.5, [True], {"v": 1}])
def test_bad_label_value(tmp_path, label):
    _fail_at_row3(tmp_path, {"prompt": "p", "completion": "c", "label": True},
                  {"prompt": "p", "completion": "c", "label": label}, "label",
                  match="expected a boolean")


def test_unpaired_reward_column():
    rec = normalize_row("unpaired", "s", 0, {"prompt": "p", "completion": "c", "label": True, "reward": 2})
    assert rec["label"] is True and rec["reward"] == 2.0 and isinstance(rec["reward"], float)
    # a reward may stand in for the label (DRO); without either the label is required
    rec = normalize_row("unpaired", "s", 0, {"prompt": "p", "completion": "c", "label": None, "reward": -0.5})
    assert rec["label"] is None and rec["reward"] == -0.5
    with pytest.raises(DataError, match="label"):
        normalize_row("unpaired", "s", 0, {"prompt": "p", "completion": "c", "label": None})
    # plain prompt/completion rows keep a usable reward and ignore an unusable one
    assert normalize_row("prompt_completion", "s", 0, {"prompt": "p", "completion": "c", "reward": 3})["reward"] == 3.0
    assert "reward" not in normalize_row("prompt_completion", "s", 0,
                                         {"prompt": "p", "completion": "c", "reward": "n/a"})


@pytest.mark.parametrize("reward", ["high", float("nan"), float("inf"), True, [1.0]])
def test_bad_reward_value(tmp_path, reward):
    _fail_at_row3(tmp_path, {"prompt": "p", "completion": "c", "label": True, "reward": 1.0},
                  {"prompt": "p", "completion": "c", "label": False, "reward": reward}, "reward",
                  match="expected a finite number")


def test_listwise_mismatched_ranks_length(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 2, 3]}
    _fail_at_row3(tmp_path, good, {**good, "ranks": [1, 2]}, "ranks",
                  match="list of 3 numbers")


def test_listwise_all_tied_ranks(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 2, 3]}
    _fail_at_row3(tmp_path, good, {**good, "ranks": [1, 1, 1]}, "ranks", match="tied")


def test_listwise_all_tied_scores(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b"], "scores": [1.0, 0.0]}
    _fail_at_row3(tmp_path, good, {**good, "scores": [0.5, 0.5]}, "scores", match="tied")


@pytest.mark.parametrize("bad_score", [float("nan"), float("inf"), "1", True, None])
def test_listwise_non_numeric_or_non_finite_scores(tmp_path, bad_score):
    good = {"prompt": "p", "completions": ["a", "b"], "scores": [1.0, 0.0]}
    # json.dumps writes NaN/Infinity, which json.loads reads back
    _fail_at_row3(tmp_path, good, {**good, "scores": [1.0, bad_score]}, "scores",
                  match="finite numbers")


def test_listwise_missing_ranks_and_scores(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]}
    _fail_at_row3(tmp_path, good, {"prompt": "p", "completions": ["a", "b"]}, "ranks",
                  match="missing required field")


def test_listwise_too_few_completions(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]}
    _fail_at_row3(tmp_path, good, {**good, "completions": ["a"], "ranks": [1]}, "completions",
                  match="at least 2")


def test_listwise_empty_completion_names_index(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]}
    _fail_at_row3(tmp_path, good, {**good, "completions": ["a", " "]}, "completions[1]",
                  match="empty completion")


def test_error_row_number_is_source_row_under_row_range(tmp_path):
    good = {"prompt": "p", "completion": "c"}
    src = write_jsonl(tmp_path / "r.jsonl", [good, good, good, good, {"prompt": "p", "completion": ""}])
    raw = load_rows(src, rows="2:5")
    assert raw.index == [2, 3, 4]
    with pytest.raises(DataError) as ei:
        normalize_rows(raw)
    _assert_names(ei.value, src, 4, "completion")


def test_unknown_explicit_kind():
    with pytest.raises(DataError, match="unknown data kind 'ranking'"):
        normalize_rows(raw_of([{"text": "a"}]), kind="ranking")


def test_explicit_kind_overrides_detection():
    recs = normalize_rows(raw_of([{"prompt": "p", "completion": "c", "label": True}]),
                          kind="prompt_completion")
    assert recs == [{"kind": "prompt_completion", "row": 0, "prompt": "p", "completion": "c"}]


def test_empty_dataset():
    with pytest.raises(DataError, match="empty") as ei:
        normalize_rows(raw_of([], source="nothing.jsonl"))
    assert "nothing.jsonl" in str(ei.value)


# --------------------------------------------------------------------------- skip_invalid


def test_skip_invalid_drops_bad_rows_and_logs_count(tmp_path):
    rows = [
        {"prompt": "p0", "chosen": "a", "rejected": "b"},
        {"prompt": "p1", "chosen": "same", "rejected": "same"},      # identical
        {"prompt": "p2", "chosen": "a", "rejected": "b"},
        {"prompt": "p3", "chosen": "", "rejected": "b"},             # empty completion
        {"prompt": "p4", "chosen": "a"},                             # missing rejected
        {"prompt": "p5", "chosen": "a", "rejected": "b"},
    ]
    src = write_jsonl(tmp_path / "mixed.jsonl", rows)
    logs = []
    recs = normalize_rows(load_rows(src), skip_invalid=True, log=logs.append)
    assert [r["row"] for r in recs] == [0, 2, 5]
    assert [r["prompt"] for r in recs] == ["p0", "p2", "p5"]
    assert len(logs) == 1
    assert "skipped 3" in logs[0]
    assert "of 6" in logs[0]
    assert src in logs[0]


def test_skip_invalid_without_log_is_silent():
    rows = [{"text": "ok"}, {"text": ""}]
    recs = normalize_rows(raw_of(rows), skip_invalid=True)
    assert [r["row"] for r in recs] == [0]


def test_skip_invalid_nothing_skipped_does_not_log():
    logs = []
    normalize_rows(raw_of([{"text": "ok"}]), skip_invalid=True, log=logs.append)
    assert logs == []


def test_skip_invalid_all_invalid_still_raises(tmp_path):
    src = write_jsonl(tmp_path / "allbad.jsonl",
                      [{"prompt": "p", "completion": ""}, {"prompt": "p", "completion": 3}])
    logs = []
    with pytest.raises(DataError, match="no valid rows") as ei:
        normalize_rows(load_rows(src), skip_invalid=True, log=logs.append)
    assert src in str(ei.value)
    assert logs and "skipped 2" in logs[0]


def test_without_skip_invalid_first_bad_row_raises():
    with pytest.raises(DataError, match="row 1"):
        normalize_rows(raw_of([{"text": "ok"}, {"text": ""}, {"text": 5}]))


# --------------------------------------------------------------------------- expected kinds


def test_expected_kind_mismatch(tmp_path):
    src = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError) as ei:
        normalize_rows(load_rows(src), expected=("preference",))
    msg = str(ei.value)
    assert "prompt_completion" in msg and "preference" in msg and src in msg


def test_expected_kind_match():
    recs = normalize_rows(raw_of([{"prompt": "p", "completion": "c"}]),
                          expected=("prompt_completion", "language_modeling"))
    assert recs[0]["kind"] == "prompt_completion"


# --------------------------------------------------------------------------- property test

FIELDS = ["prompt", "completion", "chosen", "rejected", "text", "messages", "label",
          "completions", "ranks"]

_texts = st.one_of(
    st.text(max_size=40),
    st.just(""),
    st.sampled_from([" ", "\n\n", "\n\nHuman:", "\n\nAssistant:", "\n\nHuman: hi\n\nAssistant: ",
                     "\n\nHuman: hi\n\nAssistant: yo", "true", "0"]),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=10),
              st.integers(min_value=1_000, max_value=10_000)),  # huge strings up to ~100k chars
    st.builds(lambda s, t: "\n\nHuman: " + s + "\n\nAssistant: " + t,
              st.text(max_size=20), st.text(max_size=20)),
)
_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "bot"]),
                           "content": st.one_of(_texts, st.integers(), st.none())}),
    max_size=4)
_values = st.one_of(
    _texts,
    _texts,
    st.none(),
    st.booleans(),
    st.integers(min_value=-10, max_value=10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(_texts, max_size=4),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=4),
    _messages,
    st.lists(_messages, max_size=3),
)
_rows = st.dictionaries(st.sampled_from(FIELDS), _values, max_size=len(FIELDS))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(row=_rows, kind=st.one_of(st.none(), st.sampled_from(KINDS)))
def test_property_normalize_never_raises_anything_but_data_error(row, kind):
    try:
        recs = normalize_rows(raw_of([row]), kind=kind)
    except DataError:
        return
    assert len(recs) == 1
    rec = recs[0]
    assert rec["kind"] in KINDS and rec["row"] == 0
    if rec["kind"] == "preference":
        assert rec["chosen"] != rec["rejected"]
    if rec["kind"] == "listwise":
        assert len(rec["scores"]) == len(rec["completions"])
        assert len(set(rec["scores"])) > 1


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(row=st.dictionaries(st.sampled_from(FIELDS), _texts, max_size=len(FIELDS)))
def test_property_string_valued_rows(row):
    try:
        normalize_rows(raw_of([row]))
    except DataError:
        pass


# --------------------------------------------------------------------------- regressions
# Edge cases that once escaped as non-DataError exceptions.


def test_listwise_huge_integer_rank_is_a_data_error():
    with pytest.raises(DataError, match="ranks"):
        normalize_row("listwise", "s", 0, {"prompt": "p", "completions": ["a", "b"],
                                           "ranks": [10 ** 400, 1]})


def test_detect_kind_error_names_first_selected_row():
    with pytest.raises(DataError) as ei:
        normalize_rows(raw_of([{"foo": 1}], source="d.jsonl", index=[5]))
    assert "row 5" in str(ei.value)


def test_preference_margin_column_is_validated_and_kept():
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2}
    assert normalize_row("preference", "f.jsonl", 3, row)["margin"] == 2.0
    assert "margin" not in normalize_row("preference", "f.jsonl", 3, dict(row, margin=None))
    for bad in ("2", True, float("nan"), float("inf"), [1]):
        with pytest.raises(DataError, match=r"f.jsonl, row 3, field 'margin': expected a finite number"):
            normalize_row("preference", "f.jsonl", 3, dict(row, margin=bad))

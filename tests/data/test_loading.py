"""Tests for rlhfkit.data.loading.load_rows (local files of every format, ranges, errors, hub)."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from rlhfkit.data.loading import RawRows, load_rows, parse_row_range
from rlhfkit.errors import DataError, RlhfkitError

ROWS = [
    {"prompt": "What is 2+2?", "completion": "4"},
    {"prompt": "Capital of France?", "completion": "Paris"},
    {"prompt": "Colour of the sky?", "completion": "Blue"},
    {"prompt": "Opposite of hot?", "completion": "Cold"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- formats


def test_jsonl(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    raw = load_rows(str(p))
    assert isinstance(raw, RawRows)
    assert raw.source == str(p)
    assert raw.rows == ROWS
    assert raw.index == [0, 1, 2, 3]
    assert len(raw) == 4


def test_jsonl_skips_blank_lines_and_accepts_crlf(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "a"}\r\n\r\n\n   \n{"text": "b"}\r\n')
    raw = load_rows(str(p))
    assert raw.rows == [{"text": "a"}, {"text": "b"}]
    assert raw.index == [0, 1]


def test_jsonl_path_object_and_unicode(tmp_path):
    rows = [{"text": "héllo wörld ✓ 日本語 🙂"}]
    p = write_jsonl(tmp_path / "u.jsonl", rows)
    assert load_rows(p).rows == rows  # a pathlib.Path works too


def test_json_list_of_rows(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(ROWS), encoding="utf-8")
    raw = load_rows(str(p))
    assert raw.rows == ROWS
    assert raw.index == [0, 1, 2, 3]


def test_json_column_oriented(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"prompt": ["a", "b", "c"], "completion": ["x", "y", "z"]}))
    raw = load_rows(str(p))
    assert raw.rows == [
        {"prompt": "a", "completion": "x"},
        {"prompt": "b", "completion": "y"},
        {"prompt": "c", "completion": "z"},
    ]
    assert raw.index == [0, 1, 2]


def test_json_single_column_is_column_oriented(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"text": ["one", "two"]}))
    assert load_rows(str(p)).rows == [{"text": "one"}, {"text": "two"}]


def test_json_wrapped_rows(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"data": ROWS[:2]}))
    assert load_rows(str(p)).rows == ROWS[:2]


def test_json_column_lengths_differ(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"prompt": ["a", "b"], "completion": ["x"]}))
    with pytest.raises(DataError, match="different lengths") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)


def test_json_scalar_top_level(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("42")
    with pytest.raises(DataError, match="list of row objects"):
        load_rows(str(p))


def test_json_bad_syntax(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"text": "a"},\n {"text": ]')
    with pytest.raises(DataError, match="bad JSON at line 2") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)


def test_csv_with_json_messages_cell(tmp_path):
    msgs = [{"role": "user", "content": "hi, there"}, {"role": "assistant", "content": 'say "hello"'}]
    p = tmp_path / "d.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["messages", "note"])
        w.writerow([json.dumps(msgs), "plain text"])
        w.writerow([json.dumps(msgs[:1]), "[not json"])
    raw = load_rows(str(p))
    assert raw.rows == [
        {"messages": msgs, "note": "plain text"},
        {"messages": msgs[:1], "note": "[not json"},  # undecodable '[' cell stays a string
    ]
    assert raw.index == [0, 1]


def test_csv_plain_strings_multiline_cell(tmp_path):
    p = tmp_path / "d.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion", "label"])
        w.writerow(["line one\nline two", "ok", "true"])
        w.writerow(["", "x", "0"])
    raw = load_rows(str(p))
    assert raw.rows == [
        {"prompt": "line one\nline two", "completion": "ok", "label": "true"},
        {"prompt": "", "completion": "x", "label": "0"},
    ]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {"prompt": [{"role": "user", "content": "q1"}], "completions": ["a", "b"], "ranks": [2, 1]},
        {"prompt": [{"role": "user", "content": "q2"}], "completions": ["c", "d"], "ranks": [1, 2]},
    ]
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(p))
    raw = load_rows(str(p))
    assert raw.rows == rows
    assert raw.index == [0, 1]


def test_parquet_corrupt(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="Parquet") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)


def test_gzipped_jsonl(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    raw = load_rows(str(p))
    assert raw.rows == ROWS
    assert raw.index == [0, 1, 2, 3]


def test_suffix_is_case_insensitive(tmp_path):
    p = tmp_path / "D.JSONL"
    write_jsonl(p, ROWS[:1])
    assert load_rows(str(p)).rows == ROWS[:1]


def test_bad_gzip(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(b'{"text": "not gzipped"}\n')
    with pytest.raises(DataError, match="cannot read file") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)


def test_truncated_gzip(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    full = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS * 50))
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError):
        load_rows(str(p))


# --------------------------------------------------------------------------- row ranges


def test_row_range_keeps_original_row_numbers(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    raw = load_rows(str(p), rows="1:3")
    assert raw.rows == ROWS[1:3]
    assert raw.index == [1, 2]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_row_range_other_formats(tmp_path, suffix):
    p = tmp_path / f"d{suffix}"
    if suffix == ".json":
        p.write_text(json.dumps(ROWS))
    else:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["prompt", "completion"])
            w.writeheader()
            w.writerows(ROWS)
    raw = load_rows(str(p), rows="2:")
    assert raw.rows == ROWS[2:]
    assert raw.index == [2, 3]


@pytest.mark.parametrize(
    "spec, expected",
    [(None, [0, 1, 2, 3]), ("", [0, 1, 2, 3]), (":2", [0, 1]), ("1:", [1, 2, 3]),
     ("0:100", [0, 1, 2, 3]), ("3:3", []), ("10:20", [])],
)
def test_row_range_specs(tmp_path, spec, expected):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    raw = load_rows(str(p), rows=spec)
    assert raw.index == expected
    assert raw.rows == [ROWS[i] for i in expected]


@pytest.mark.parametrize("spec", ["a:b", "1:x", "3:1", "-1:2"])
def test_row_range_invalid(spec):
    with pytest.raises(DataError, match="rows="):
        parse_row_range(spec, 10)


# --------------------------------------------------------------------------- errors


def test_bad_json_line_names_file_and_row(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",\n{"text": "d"}\n')
    with pytest.raises(DataError) as ei:
        load_rows(str(p))
    msg = str(ei.value)
    assert str(p) in msg
    assert "row 2" in msg
    assert "line 3" in msg
    assert ei.value.source == str(p) and ei.value.row == 2


def test_bad_json_line_row_number_counts_rows_not_blank_lines(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": "b"}\nnot json\n')
    with pytest.raises(DataError) as ei:
        load_rows(str(p))
    msg = str(ei.value)
    assert str(p) in msg and "row 2" in msg and "line 4" in msg


def test_invalid_utf8_line_names_file_and_row(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9 \xff"}\n{"text": "ok"}\n')
    with pytest.raises(DataError, match="UTF-8") as ei:
        load_rows(str(p))
    msg = str(ei.value)
    assert str(p) in msg
    assert "row 1" in msg


def test_invalid_utf8_in_json_file(tmp_path):
    p = tmp_path / "latin1.json"
    p.write_bytes(b'[{"text": "caf\xe9"}]')
    with pytest.raises(DataError, match="UTF-8") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)


def test_invalid_utf8_in_csv_file(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"text\ncaf\xe9\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_rows(str(p))


def test_missing_file(tmp_path):
    p = tmp_path / "does_not_exist.jsonl"
    with pytest.raises(DataError, match="not found") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)


def test_missing_relative_file_is_not_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_rows("data/train.jsonl")  # has a local suffix -> never sent to the hub


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path))


@pytest.mark.parametrize("name", ["d.txt", "d.tsv.gz", "noext"])
def test_unsupported_suffix(tmp_path, name):
    p = tmp_path / name
    p.write_text("text\nhello\n")
    with pytest.raises(DataError, match="unsupported file type") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("line, typename", [('["a", "b"]', "list"), ('"just text"', "str"),
                                            ("42", "int"), ("null", "NoneType")])
def test_row_not_an_object_jsonl(tmp_path, line, typename):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match=f"row is a {typename}") as ei:
        load_rows(str(p))
    assert str(p) in str(ei.value)
    assert "row 1" in str(ei.value)


def test_row_not_an_object_json(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"text": "a"}, {"text": "b"}, ["x"]]))
    with pytest.raises(DataError, match="row 2"):
        load_rows(str(p))


@pytest.mark.parametrize("name, content", [("e.jsonl", b""), ("ws.jsonl", b"\n \n\t\n"),
                                           ("e.csv", b""), ("h.csv", b"prompt,completion\n"),
                                           ("e.json", b"[]"), ("e.jsonl.gz", gzip.compress(b""))])
def test_empty_file_gives_zero_rows(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    raw = load_rows(str(p))
    assert raw.rows == [] and raw.index == [] and len(raw) == 0


def test_empty_file_then_normalize_is_a_data_error(tmp_path):
    from rlhfkit.data.formats import normalize_rows

    p = tmp_path / "e.jsonl"
    p.write_bytes(b"")
    raw = load_rows(str(p))
    with pytest.raises(DataError, match="empty") as ei:
        normalize_rows(raw)
    assert str(p) in str(ei.value)


def test_data_error_is_rlhfkit_error():
    e = DataError("boom", source="f.jsonl", row=3, field="x")
    assert isinstance(e, RlhfkitError)
    assert str(e) == "f.jsonl, row 3, field 'x': boom"
    assert str(DataError("plain")) == "plain"


# --------------------------------------------------------------------------- hub


def test_hub_name_goes_through_datasets_load_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)  # make sure 'someorg/somedata' is not a local path
    calls = []
    hub_rows = [{"prompt": "p0", "completion": "c0"}, {"prompt": "p1", "completion": "c1"},
                {"prompt": "p2", "completion": "c2"}]

    def fake_load_dataset(name, split=None, **kw):
        calls.append((name, split))
        return datasets.Dataset.from_list(hub_rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("rlhfkit.data.loading.hub_reachable", lambda timeout=3.0: True)  # no network here
    raw = load_rows("someorg/somedata", split="test")
    assert calls == [("someorg/somedata", "test")]
    assert raw.source == "someorg/somedata"
    assert raw.rows == hub_rows
    assert raw.index == [0, 1, 2]

    raw = load_rows("someorg/somedata", rows="1:3")
    assert raw.rows == hub_rows[1:3] and raw.index == [1, 2]
    assert calls[-1] == ("someorg/somedata", "train")  # default split


def test_hub_failure_is_a_data_error(tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)

    def failing(name, split=None, **kw):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    monkeypatch.setattr("rlhfkit.data.loading.hub_reachable", lambda timeout=3.0: True)  # reachable, then fails
    with pytest.raises(DataError) as ei:
        load_rows("someorg/somedata", split="validation")
    msg = str(ei.value)
    assert "someorg/somedata" in msg and "validation" in msg
    assert "ConnectionError: no network" in msg and "second line" not in msg


# --------------------------------------------------------------------------- regressions
# Edge cases that once escaped as non-DataError exceptions.


def test_huge_integer_literal_is_a_data_error(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_text('{"text": "a", "n": ' + "1" * 5000 + "}\n")
    with pytest.raises(DataError):
        load_rows(str(p))


def test_csv_with_utf8_bom_header(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_text("text\nhello\n", encoding="utf-8-sig")
    assert load_rows(str(p)).rows == [{"text": "hello"}]

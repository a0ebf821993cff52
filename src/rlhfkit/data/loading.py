"""Read raw rows from local files (JSONL, JSON, Parquet, CSV, optionally gzipped) or the hub.

Rows come back as a list of dicts together with their row number (0-based, file order) so
that every later validation error can name the file and the row.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass

from ..errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class RawRows:
    """Rows read from one source. ``index[i]`` is the source row number of ``rows[i]``."""

    source: str
    rows: list[dict]
    index: list[int]

    def __len__(self) -> int:
        return len(self.rows)


def parse_row_range(spec: str | None, n: int) -> range:
    """``"0:2000"`` -> range(0, 2000) clipped to ``n``; ``None`` -> all rows."""
    if spec is None or spec == "":
        return range(n)
    try:
        lo, _, hi = str(spec).partition(":")
        start = int(lo) if lo.strip() else 0
        stop = int(hi) if hi.strip() else n
    except ValueError as e:
        raise DataError(f"rows='{spec}' is not a 'start:stop' range such as '0:2000'") from e
    if start < 0 or stop < start:
        raise DataError(f"rows='{spec}' must satisfy 0 <= start <= stop")
    return range(start, min(stop, n))


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"cannot read file: {e}", source=path) from e


def _decode(data: bytes, path: str, row: int | None = None) -> str:
    try:
        return data.decode("utf-8-sig")  # tolerate a byte-order mark (spreadsheet exports)
    except UnicodeDecodeError as e:
        raise DataError(f"invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8",
                        source=path, row=row) from e


def _read_jsonl(path: str, data: bytes) -> tuple[list, list[int]]:
    rows, index = [], []
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        text = _decode(line, path, row=len(rows))
        try:
            rows.append(json.loads(text))
        except ValueError as e:  # JSONDecodeError, or ints beyond Python's digit limit
            msg = f"{e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else str(e)
            raise DataError(f"bad JSON on line {i + 1}: {msg}", source=path, row=len(rows)) from e
        index.append(len(index))
    return rows, index


def _read_json(path: str, data: bytes) -> tuple[list, list[int]]:
    text = _decode(data, path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"bad JSON at line {e.lineno} column {e.colno}: {e.msg}", source=path) from e
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        raise DataError(f"bad JSON: {e}", source=path) from e
    if isinstance(obj, dict):
        # {"data": [...]} or a column-oriented {"col": [...], ...}
        if len(obj) == 1 and isinstance(next(iter(obj.values())), list) and all(
                isinstance(r, dict) for r in next(iter(obj.values()))):
            obj = next(iter(obj.values()))
        elif obj and all(isinstance(v, list) for v in obj.values()):
            lengths = {len(v) for v in obj.values()}
            if len(lengths) != 1:
                raise DataError("column-oriented JSON has columns of different lengths", source=path)
            keys = list(obj)
            obj = [dict(zip(keys, vals)) for vals in zip(*obj.values())]
    if not isinstance(obj, list):
        raise DataError("a .json file must hold a list of row objects", source=path)
    return obj, list(range(len(obj)))


def _read_csv(path: str, data: bytes) -> tuple[list, list[int]]:
    text = _decode(data, path)
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for row in reader:
        # Cells that hold JSON lists/objects (e.g. conversational messages) are decoded.
        for k, v in row.items():
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    row[k] = json.loads(v)
                except json.JSONDecodeError:
                    pass
        rows.append(row)
    return rows, list(range(len(rows)))


def _read_parquet(path: str, data: bytes) -> tuple[list, list[int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow comes with `datasets`
        raise DataError("reading Parquet needs pyarrow: pip install pyarrow", source=path) from e
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"not a readable Parquet file: {e}", source=path) from e
    rows = table.to_pylist()
    return rows, list(range(len(rows)))


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _suffix(path: str) -> str:
    base = path[:-3] if path.endswith(".gz") else path
    return os.path.splitext(base)[1].lower()


def looks_like_hub_name(name: str) -> bool:
    """``org/name`` with no file extension (``data/train.txt`` is a missing file, not a hub id),
    optionally followed by ``?key=value&...`` (:func:`parse_hub_spec`)."""
    name = name.partition("?")[0]
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
            and not re.search(r"\.[A-Za-z0-9]{1,8}(\.gz)?$", name))


# --------------------------------------------------------------------------- in-memory rows

MEMORY_PREFIX = "memory:"
_MEMORY: dict[str, list[dict]] = {}
"""Registered in-memory datasets by handle (``memory:<sha256 of the rows>``)."""


def is_in_memory(obj) -> bool:
    """A ``datasets.Dataset`` (anything with ``to_list`` and ``column_names``) or a list/tuple of rows."""
    if isinstance(obj, (list, tuple)):
        return True
    return hasattr(obj, "to_list") and hasattr(obj, "column_names")


def register_rows(obj, where: str = "data.path") -> str:
    """Keep the rows of an in-memory dataset (``datasets.Dataset`` or a list of dicts) and return
    their handle ``memory:<sha256>``: the sha256 of the rows' JSON (sorted keys), so equal rows
    give the same handle in any process (run.json, resume checks) and changed rows another one."""
    if isinstance(obj, dict) or (hasattr(obj, "keys") and hasattr(obj, "column_names") and not hasattr(obj, "to_list")):
        raise DataError(f"{where}: a DatasetDict holds several splits; pass one, e.g. ds['train']")
    if not (isinstance(obj, (list, tuple)) or hasattr(obj, "to_list")):
        raise DataError(f"{where}: an in-memory dataset must be a datasets.Dataset or a list of dicts, got "
                        f"{type(obj).__name__} (an IterableDataset: materialise it with Dataset.from_list)")
    rows = list(obj.to_list() if hasattr(obj, "to_list") else obj)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(f"{where}: row is a {type(r).__name__}, expected a dict with named fields",
                            source="(in-memory dataset)", row=i)
    try:
        text = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: the rows cannot be written as JSON ({e}); keep to strings, numbers, "
                        "lists and dicts", source="(in-memory dataset)") from e
    handle = MEMORY_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]
    _MEMORY.setdefault(handle, json.loads(text))
    return handle


def _memory_rows(handle: str) -> list:
    if handle not in _MEMORY:
        raise DataError("in-memory dataset not registered in this process; pass the rows again as "
                        "data.path (a datasets.Dataset or a list of dicts)", source=handle)
    return json.loads(json.dumps(_MEMORY[handle]))  # a fresh copy: later steps rename fields in place


def load_rows(path: str, *, split: str = "train", rows: str | None = None, prefer: tuple[str, ...] = ()) -> RawRows:
    """Read rows from a local file, a hub dataset name (``org/name``), a registered in-memory
    dataset (``memory:<sha256>``, see :func:`register_rows`; a Dataset or a list of dicts given
    here directly is registered first) or a labelling project (``studio://[DIR::]PROJECT``, see
    :mod:`rlhfkit.studio.export`; ``prefer`` names the data kinds the caller reads, which picks
    the export format when the path names none).

    ``rows`` selects a contiguous range (``"0:2000"``) in file order; row numbers in error
    messages stay those of the file.
    """
    if is_in_memory(path):
        path = register_rows(path)
    if str(path).startswith("studio://"):
        from ..studio.export import studio_rows

        raw = studio_rows(str(path), prefer)
        sel = parse_row_range(rows, len(raw))
        return RawRows(source=str(path), rows=[raw[i] for i in sel], index=list(sel))
    if str(path).startswith(MEMORY_PREFIX):
        raw = _memory_rows(str(path))
        sel = parse_row_range(rows, len(raw))
        return RawRows(source=str(path), rows=[raw[i] for i in sel], index=list(sel))
    path = os.path.expanduser(str(path))
    if os.path.isfile(path):
        suffix = _suffix(path)
        if suffix not in _READERS:
            raise DataError(f"unsupported file type '{suffix or '(none)'}'; use one of "
                            f"{', '.join(LOCAL_SUFFIXES)} (optionally .gz)", source=path)
        raw, index = _READERS[suffix](path, _read_bytes(path))
    elif os.path.isdir(path) or not looks_like_hub_name(path):
        raise DataError("data file not found; give a path to a .jsonl/.json/.parquet/.csv file "
                        "or a hub dataset name such as 'org/name'", source=path)
    else:
        raw, index = _load_hub(path, split)
    for i, r in zip(index, raw):
        if not isinstance(r, dict):
            raise DataError(f"row is a {type(r).__name__}, expected an object with named fields",
                            source=path, row=i)
    sel = parse_row_range(rows, len(raw))
    return RawRows(source=path, rows=[raw[i] for i in sel], index=[index[i] for i in sel])


HUB_KEYS = ("name", "data_dir", "split", "revision")


def parse_hub_spec(spec: str, split: str) -> tuple[str, dict]:
    """``"openai/gsm8k?name=main&split=test"`` -> ``("openai/gsm8k", {"name": "main", "split": "test"})``:
    the keyword arguments of ``datasets.load_dataset`` (the config ``name``, ``data_dir``, ``split``,
    ``revision``); ``split`` defaults to ``data.split``."""
    repo, _, query = spec.partition("?")
    kwargs: dict = {"split": split}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if key not in HUB_KEYS or not eq or not value:
            raise DataError(f"hub dataset option '{item}' is not one of {', '.join(k + '=...' for k in HUB_KEYS)}, "
                            "e.g. 'openai/gsm8k?name=main&split=test'", source=spec)
        kwargs[key] = value
    return repo, kwargs


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint (``HF_ENDPOINT``, default huggingface.co) accepts a connection."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(spec: str, split: str) -> tuple[list, list[int]]:
    """Load a hub dataset through ``datasets.load_dataset`` (needs network or, with
    ``HF_DATASETS_OFFLINE=1``, the HF cache). Without network this fails at once, in one line."""
    repo, kwargs = parse_hub_spec(spec, split)
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    if not offline and not hub_reachable():
        raise DataError("cannot reach the Hugging Face hub (offline?) to load this dataset; pass a local copy "
                        "instead, e.g. --data.path FILE.jsonl (a shipped config names its local copy in its first "
                        "lines: rlhfkit configs show NAME), or set HF_DATASETS_OFFLINE=1 to use a cached copy",
                        source=spec)
    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise DataError("loading hub datasets needs the 'datasets' package", source=spec) from e
    try:
        ds = datasets.load_dataset(repo, **kwargs)
    except Exception as e:  # network errors, missing dataset, missing split
        raise DataError(f"could not load hub dataset {repo} ({', '.join(f'{k}={v}' for k, v in kwargs.items())}): "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Offline? Point data.path "
                        "at a local file instead", source=spec) from e
    rows = ds.to_list()
    return rows, list(range(len(rows)))

"""Items for a studio project from the files people already have.

Every reader returns records ``{"prompt", "responses", "meta", "row"}`` (``row``: the source row): ``prompt`` a string or a list
of messages, ``responses`` a list of completions in the same style (strings, or lists of
assistant messages when the prompt is conversational), so an export writes them back unchanged.

Formats (``--format``, default ``auto``):

- ``trainer``: the rows the trainers read, validated by :mod:`rlhfkit.data.formats` (errors name
  file, row and field): pairs (``[prompt] + chosen + rejected``; implicit HH-RLHF prompts are
  split), listwise (``prompt + completions + ranks|scores``), unpaired (``prompt + completion +
  label``: one response per item) and prompt-only rows (``prompt``: responses are sampled, see
  :func:`sample_responses`). The original judgement is kept in ``meta``.
- ``labelstudio``: a Label Studio JSON export (a list of tasks ``{"id", "data": {...},
  "annotations": [...]}``) whose ``data`` holds the prompt in ``prompt`` (or ``text``,
  ``instruction``, ``question``) and the responses in ``answer1``, ``answer2``, ... (the
  pairwise-comparison template) or ``responses`` / ``completions`` (a list).
- ``argilla``: Argilla records, either v1 ``FeedbackDataset`` exports (``{"fields": {...},
  "responses": [...], "metadata": {...}}``) or v2 flattened records (``{"id", "prompt",
  "response1", ...}``); responses come from ``response``/``response1``/``response-2``/... fields
  (or ``responses`` / ``completions`` lists) and the prompt from ``prompt``/``instruction``/``text``.
"""

from __future__ import annotations

import re

from ..data.formats import _Row, detect_kind, normalize_row
from ..data.loading import RawRows, load_rows
from ..errors import DataError

PROMPT_KEYS = ("prompt", "instruction", "text", "question", "input")
_RESPONSE_KEY = re.compile(r"^(?:answer|response|completion|output)[-_ ]?(\d+)$", re.IGNORECASE)


def _responses_from(r: _Row, fields: dict, prefix: str) -> list:
    for key in ("responses", "completions"):
        if isinstance(fields.get(key), list):
            return [r.completion(f"{prefix}{key}[{j}]", c) for j, c in enumerate(fields[key])]
    numbered = sorted((int(m.group(1)), k) for k in fields if (m := _RESPONSE_KEY.match(str(k))))
    if numbered:
        return [r.completion(prefix + k, fields[k]) for _, k in numbered]
    for key in ("response", "completion", "output", "answer"):
        if fields.get(key) is not None:
            return [r.completion(prefix + key, fields[key])]
    r.fail("no responses: expected 'responses' (a list) or numbered fields such as answer1/answer2 or "
           "response1/response2", prefix.rstrip(".") or None)


def _prompt_from(r: _Row, fields: dict, prefix: str):
    for key in PROMPT_KEYS:
        if fields.get(key) is not None:
            return r.text_or_messages(prefix + key, fields[key])
    r.fail(f"no prompt: expected one of {', '.join(PROMPT_KEYS)}", prefix + "prompt")


def _match(prompt, responses):
    if isinstance(prompt, list):
        return [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in responses]
    return responses


def _foreign_row(source: str, i: int, row: dict, fmt: str) -> dict:
    r = _Row(source, i, row)
    if fmt == "labelstudio":
        data = row.get("data")
        if not isinstance(data, dict):
            r.fail("a Label Studio task needs a 'data' object", "data")
        prompt = _prompt_from(r, data, "data.")
        responses = _responses_from(r, data, "data.")
        meta = {"labelstudio_id": row.get("id")}
    else:
        fields = row.get("fields") if isinstance(row.get("fields"), dict) else row
        prefix = "fields." if fields is not row else ""
        prompt = _prompt_from(r, fields, prefix)
        responses = _responses_from(r, fields, prefix)
        meta = {"argilla_id": row.get("id") or row.get("external_id") or row.get("_server_id")}
    return {"prompt": prompt, "responses": _match(prompt, responses), "meta": meta}


def detect_format(row: dict) -> str:
    if isinstance(row.get("data"), dict) and ("annotations" in row or "predictions" in row or "id" in row):
        return "labelstudio"
    if isinstance(row.get("fields"), dict):
        return "argilla"
    if any(_RESPONSE_KEY.match(str(k)) for k in row) and not {"chosen", "rejected", "completions"} & set(row):
        return "argilla"
    return "trainer"


def _trainer_record(kind: str, rec: dict) -> dict:
    if kind == "preference":
        return {"prompt": rec["prompt"], "responses": [rec["chosen"], rec["rejected"]],
                "meta": {"source": "preference", "chosen": 0}}
    if kind == "listwise":
        return {"prompt": rec["prompt"], "responses": rec["completions"],
                "meta": {"source": "listwise", "scores": rec["scores"]}}
    if kind in ("unpaired", "prompt_completion"):
        return {"prompt": rec["prompt"], "responses": [rec["completion"]],
                "meta": {"source": kind, **({"label": rec["label"]} if rec.get("label") is not None else {})}}
    if kind == "prompt_only":
        return {"prompt": rec["prompt"], "responses": [], "meta": {"source": "prompt_only"}}
    raise DataError(f"rows of kind '{kind}' cannot become studio items (they have no prompt)")


def read_items(path: str, fmt: str = "auto", rows: str | None = None) -> list[dict]:
    """Records for a project from a file; a :class:`DataError` names file, row and field."""
    if fmt not in ("auto", "trainer", "labelstudio", "argilla"):
        raise DataError(f"import format must be auto, trainer, labelstudio or argilla (got {fmt!r})")
    return records_from_rows(load_rows(path, rows=rows), fmt)


def records_from_rows(raw: RawRows, fmt: str = "auto") -> list[dict]:
    """Records from rows already read (an upload: ``raw.source`` is the file's name)."""
    if fmt not in ("auto", "trainer", "labelstudio", "argilla"):
        raise DataError(f"import format must be auto, trainer, labelstudio or argilla (got {fmt!r})")
    for i, row in zip(raw.index, raw.rows):
        if not isinstance(row, dict):
            raise DataError(f"row is a {type(row).__name__}, expected an object with named fields",
                            source=raw.source, row=i)
    if not raw.rows:
        raise DataError("no rows", source=raw.source)
    if fmt == "auto":
        fmt = detect_format(raw.rows[0])
    if fmt in ("labelstudio", "argilla"):
        return [{**_foreign_row(raw.source, i, row, fmt), "row": i} for i, row in zip(raw.index, raw.rows)]
    kind = detect_kind(raw.rows[0], raw.source, raw.index[0])
    return [{**_trainer_record(kind, normalize_row(kind, raw.source, i, row)), "row": i}
            for i, row in zip(raw.index, raw.rows)]


def mark_gold(records: list[dict], kind: str, spec: str, source: str) -> int:
    """Make the records of source rows ``spec`` ('start:stop') gold items: their known answer is
    the file's own judgement (pairs: chosen wins; lists: the ranks; one thumbs row: its label).
    Gold items are served like any other; the admin page scores annotators against them."""
    from ..data.loading import parse_row_range

    rows = set(parse_row_range(spec, max((r.get("row", i) for i, r in enumerate(records)), default=-1) + 1))
    n = 0
    for i, rec in enumerate(records):
        row = rec.get("row", i)
        if row not in rows:
            continue
        meta = rec.get("meta") or {}
        if kind == "pairwise" and meta.get("source") == "preference":
            rec["gold"] = {"outcome": "win", "winner": meta["chosen"], "position": None, "strength": None}
        elif kind == "ranking" and meta.get("scores") is not None:
            distinct = sorted(set(meta["scores"]), reverse=True)
            rec["gold"] = {"ranks": [distinct.index(v) + 1 for v in meta["scores"]]}
        elif kind == "thumbs" and meta.get("label") is not None and len(rec["responses"]) == 1:
            rec["gold"] = {"thumbs": [bool(meta["label"])]}
        else:
            raise DataError(f"no known answer for a {kind} gold item (gold rows of a pairwise task need pairs, of "
                            "a ranking task ranked lists, of a thumbs task labelled rows)", source=source, row=row)
        n += 1
    if not n:
        raise DataError(f"gold rows '{spec}' select no item", source=source)
    return n


def check_for_kind(records: list[dict], kind: str, source: str) -> None:
    """Every record has the responses the task kind needs."""
    for j, rec in enumerate(records):
        i, n = rec.get("row", j), len(rec["responses"])
        need = {"pairwise": (2, 2), "ranking": (2, 64), "thumbs": (1, 64), "rating": (1, 64)}[kind]
        if not need[0] <= n <= need[1]:
            want = "exactly 2" if kind == "pairwise" else f"{need[0]} to {need[1]}"
            if n == 0:
                raise DataError(f"no responses to label (a prompt-only file): sample them with --sample_models "
                                f"MODEL[,MODEL...] --num_responses K", source=source, row=i)
            raise DataError(f"a {kind} task needs {want} responses per item, this row has {n}",
                            source=source, row=i, field="responses")


def sample_responses(records: list[dict], models: list[str], k: int, *, max_new_tokens: int = 64,
                     temperature: float = 1.0, seed: int = 0, log=print) -> list[dict]:
    """Fill each record's responses with ``k`` samples spread over ``models`` (round robin),
    generated by the rollout engine; ``meta.models`` names the model of each response."""
    import torch

    from ..config import DataConfig, ModelConfig
    from ..data.tokenize import tokenize_records
    from ..models.loading import load_model
    from ..rl.rollout import HFBackend, SamplingParams

    if k < 1 or not models:
        raise DataError("sampling needs at least one model and num_responses >= 1")
    out = [{**r, "responses": [None] * k, "meta": {**r.get("meta", {}), "models": [None] * k}} for r in records]
    loaded: dict = {}
    for mi, name in enumerate(models):
        mine = [j for j in range(k) if j % len(models) == mi]  # this model's response slots
        if not mine:
            continue
        if name not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[name] = load_model(ModelConfig(name=name))
        model, tok = loaded[name]
        model.eval()
        exs = tokenize_records([{"kind": "prompt_only", "row": i, "prompt": r["prompt"]} for i, r in enumerate(records)],
                               tok, DataConfig(max_length=1024), source="prompts", log=log)
        with torch.no_grad():
            ro = HFBackend(model, tok, 64).generate(
                [e.prompt for e in exs], SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                        n=len(mine)),
                generator=torch.Generator().manual_seed(seed + mi))
        for e_i, e in enumerate(exs):
            rec = out[e.row]
            for slot, text in zip(mine, ro.texts[e_i * len(mine):(e_i + 1) * len(mine)]):
                rec["responses"][slot] = [{"role": "assistant", "content": text}] if isinstance(rec["prompt"], list) else text
                rec["meta"]["models"][slot] = name
        log(f"[studio] sampled {len(mine)} responses per prompt for {len(exs)} prompts from {name}")
    kept = [r for r in out if all(x is not None for x in r["responses"])]
    if not kept:
        raise DataError("no prompt could be sampled (all too long?)")
    return kept

"""People as the labeller of online DPO: ``rlhfkit online-dpo --labeller studio``.

Each round's samples become one studio project, ``{studio.project}-round-NNNN`` (NNNN = the
round, from 1): one item per prompt holding its ``rollout.num_generations`` responses, a
``ranking`` task (order the n samples, ties allowed) or, with two samples, a ``pairwise`` one.
The trainer writes the project straight into the studio's database (``studio.dir``, its
``studio.db``, or ``studio.db_url``, e.g. PostgreSQL), assigned to ``studio.annotators``; people
label it on the studio pages (``rlhfkit studio serve`` on the same database). Each item's
``meta`` keeps the prompt's and the responses' token ids, so a restarted round (``--train.resume
true``) finds its project and its labels and trains on exactly what was labelled, without
sampling or publishing again.

The trainer polls the project every ``studio.poll_s`` seconds until every item holds
``studio.overlap`` labels or ``studio.timeout_s`` has passed; then, if at least
``studio.min_labels`` items are labelled, it trains on them, else it stops with a checkpoint of
the finished rounds and a message (label more, then resume). SIGTERM while waiting stops the
wait at once, the same way (exit status 143, as for any preempted run). Labels become pairs by the
studio's majority aggregation (:func:`.export.aggregate_item`): per item the response with the
best aggregated score against the one with the worst (pairwise: the majority winner against the
loser); items whose aggregate is a tie or "both bad" give no pair (docs/algorithms.md#online-dpo).
Under ``torchrun`` only the main process publishes and waits; the pairs are broadcast.
"""

from __future__ import annotations

import dataclasses
import time

from ..config import check_range
from ..data.tokenize import Example
from ..errors import ConfigError, TrainingError

KINDS = ("ranking", "pairwise")


class LabelsMissing(TrainingError):
    """A round's labelling timed out with fewer labelled items than ``studio.min_labels``."""


@dataclasses.dataclass
class StudioLabellerConfig:
    """Where and how each round's samples are labelled by people (``labeller: studio``)."""

    dir: str = ""
    """Studio directory (its SQLite ``studio.db``), the ``--dir`` of ``rlhfkit studio serve``."""
    db_url: str = ""
    """SQLAlchemy database URL instead of ``dir`` (e.g. postgresql://user@host/studio)."""
    project: str = "online-dpo"
    """Project name prefix; round r is published as ``{project}-round-{r:04d}``."""
    kind: str = "ranking"
    """ranking (order the n samples) | pairwise (A/B; needs rollout.num_generations = 2)."""
    annotators: str = ""
    """Comma-separated studio accounts the round projects are assigned to."""
    overlap: int = 1
    """Annotators per item (agreement needs 2 or more); a round is complete when every item has this many."""
    guidelines: str = ""
    """Text shown beside each item."""
    timeout_s: float = 3600.0
    """Longest wait for a round's labels, in seconds."""
    poll_s: float = 5.0
    """Seconds between two looks at the project."""
    min_labels: int = 1
    """Labelled items a round needs to train after the timeout; fewer stops the run with a checkpoint."""

    def validate(self, p: str = "") -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"{p}kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.project and (len(self.project) > 80 or "/" in self.project or "::" in self.project
                             or self.project.strip() != self.project):
            raise ConfigError(f"{p}project must be 1-80 characters without '/', '::' or edge spaces "
                              f"(got {self.project!r})")
        check_range(p + "overlap", self.overlap, lo=1, hi=100)
        check_range(p + "timeout_s", self.timeout_s, lo=0, lo_open=True, hi=30 * 86400)
        check_range(p + "poll_s", self.poll_s, lo=0, lo_open=True, hi=3600)
        check_range(p + "min_labels", self.min_labels, lo=1)
        for k in ("overlap", "min_labels"):
            if not isinstance(getattr(self, k), int):
                raise ConfigError(f"{p}{k} must be a whole number (got {getattr(self, k)!r})")

    def check_ready(self, p: str, num_generations: int) -> None:
        """Checks that apply once ``labeller: studio`` is chosen."""
        if not self.project:
            raise ConfigError(f"{p}project must not be empty")
        if not self.dir and not self.db_url:
            raise ConfigError(f"labeller studio needs the studio's database: set {p}dir (the directory of "
                              f"rlhfkit studio serve --dir) or {p}db_url")
        if self.dir and self.db_url:
            raise ConfigError(f"set one of {p}dir and {p}db_url, not both")
        if self.kind == "pairwise" and num_generations != 2:
            raise ConfigError(f"{p}kind pairwise compares two responses: set rollout.num_generations 2 (got "
                              f"{num_generations}) or use {p}kind ranking")
        if self.kind == "ranking" and num_generations > 64:
            raise ConfigError(f"{p}kind ranking shows at most 64 responses (rollout.num_generations is "
                              f"{num_generations})")

    def names(self) -> list[str]:
        return [x.strip() for x in self.annotators.split(",") if x.strip()]


def round_name(cfg: StudioLabellerConfig, step: int) -> str:
    """The project of round ``step + 1``."""
    return f"{cfg.project}-round-{step + 1:04d}"


def open_studio(cfg: StudioLabellerConfig, p: str = "studio."):
    """The studio database; its accounts must include ``annotators`` (checked before any sampling)."""
    from .db import StudioError, list_users, open_db

    try:
        engine = open_db(cfg.dir or None, cfg.db_url or None)
    except StudioError as e:
        raise ConfigError(f"{p[:-1]}: {e}") from e
    known = {u["name"] for u in list_users(engine)}
    missing = [a for a in cfg.names() if a not in known]
    if missing:
        engine.dispose()
        raise ConfigError(f"{p}annotators: no studio account named {', '.join(repr(m) for m in missing)} (add one with "
                          f"rlhfkit studio user add NAME --dir {cfg.dir or '... --db URL'})")
    return engine


def published(engine, name: str) -> bool:
    from .db import StudioError, get_project

    try:
        get_project(engine, name)
        return True
    except StudioError:
        return False


def round_records(exs: list[Example], completion_ids: list[list[int]], texts: list[str], n: int,
                  decode) -> list[dict]:
    """One studio item per prompt (its n responses in sampling order), token ids in ``meta``."""
    out = []
    for p, ex in enumerate(exs):
        prompt = ex.extra.get("prompt")
        if prompt is None:
            prompt = decode(ex.prompt)
        resp = texts[p * n:(p + 1) * n]
        if isinstance(prompt, list):  # conversational: responses as assistant messages
            resp = [[{"role": "assistant", "content": t}] for t in resp]
        out.append({"prompt": prompt, "responses": resp,
                    "meta": {"source": "online-dpo", "row": ex.row, "prompt_ids": list(ex.prompt),
                             "completion_ids": [list(c) for c in completion_ids[p * n:(p + 1) * n]]}})
    return out


def publish(engine, cfg: StudioLabellerConfig, name: str, records: list[dict], seed: int = 0) -> None:
    from .db import StudioError, create_project

    try:
        create_project(engine, name, cfg.kind, records, guidelines=cfg.guidelines, overlap=cfg.overlap,
                       assign=cfg.names(), seed=seed, source="online-dpo")
    except StudioError as e:
        raise ConfigError(f"studio: cannot publish round project '{name}': {e}") from e


def read_labels(engine, name: str) -> tuple[dict, list[dict], dict[int, list[dict]]]:
    """(project, items, non-skipped label values by item id)."""
    from .db import project_labels

    p, items, labels = project_labels(engine, name)
    votes: dict[int, list[dict]] = {}
    for lab in labels:
        if not lab["skipped"]:
            votes.setdefault(lab["item_id"], []).append(lab["value"])
    return p, items, votes


def wait_for_labels(engine, cfg: StudioLabellerConfig, name: str, log=print, clock=time.monotonic,
                    sleep=time.sleep, interrupted=lambda: False
                    ) -> tuple[dict, list[dict], dict[int, list[dict]], bool]:
    """Poll until every item has ``cfg.overlap`` labels, ``cfg.timeout_s`` passed or
    ``interrupted()`` (e.g. SIGTERM); (project, items, votes, complete)."""
    start = clock()
    last_log = None
    while True:
        p, items, votes = read_labels(engine, name)
        done = sum(len(votes.get(it["id"], [])) >= cfg.overlap for it in items)
        if done == len(items):
            return p, items, votes, True
        now = clock()
        if now - start >= cfg.timeout_s or interrupted():
            return p, items, votes, False
        if last_log is None or now - last_log >= 60:
            log(f"[online-dpo] waiting for labels of studio project '{name}': {done}/{len(items)} items complete "
                f"({cfg.overlap} label(s) each), {max(0.0, cfg.timeout_s - (now - start)):.0f}s left")
            last_log = now
        sleep(min(cfg.poll_s, max(0.0, cfg.timeout_s - (now - start)), 1.0))


def label_pairs(kind: str, items: list[dict], votes: dict[int, list[dict]], n: int) -> tuple[list[Example], int]:
    """(best-vs-worst pairs of the majority-aggregated labels, labelled items); see the module
    docstring and docs/algorithms.md#online-dpo."""
    from ..train.online_dpo import make_pairs
    from .export import aggregate_item

    exs, comps, scores, labelled = [], [], [], 0
    for it in items:
        agg = aggregate_item(kind, it, votes.get(it["id"], []), "majority")
        if agg is None:
            continue
        labelled += 1
        meta = it["meta"]
        exs.append(Example(meta["row"], meta["prompt_ids"], []))
        comps += meta["completion_ids"]
        scores += agg["scores"]
    return make_pairs(exs, comps, scores, n), labelled

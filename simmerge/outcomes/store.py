"""The outcome store: every measured merge, durable and append-only.

SQLite in WAL mode: one file, safe against a process killed mid-write (a transaction is either
in the file or not), readable while a collector appends. Each measured (pair, candidate) is
written as one transaction holding its rows for every task, so a resumed collection sees a
candidate as done or not done, never half done. The primary key (catalog, ordered pair,
candidate, task, eval hash) makes a repeated write a no-op instead of a duplicate row.

Rows carry the eval config hash of their task: outcomes measured on different data never mix.
Each row also keeps the expert score it was normalized by (``expert_score``); the single-model
scores themselves are cached by :mod:`simmerge.evaluation.scorer`. (Stores written before that
have a ``reference_scores`` table, which is left alone and not read.)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from simmerge.errors import OutcomeStoreError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Outcome:
    """One measurement: a merge of (model_a, model_b) with ``candidate``, scored on ``task``.

    ``normalized`` = score / ``expert_score``, the score on ``task`` of the better pair member
    that has ``task`` among its tasks (the expert the merge should keep). ``plan_id`` names the
    merge actually executed (for order-free candidates the pair in catalog order).
    """

    catalog: str
    model_a: str
    model_b: str
    candidate: str
    operator: str
    params: str  # JSON of the candidate's explicit parameters
    plan_id: str
    task: str
    eval_hash: str
    score: float
    expert_score: float
    normalized: float
    created: float = 0.0


_COLUMNS = tuple(f.name for f in fields(Outcome))
_KEY = ("catalog", "model_a", "model_b", "candidate", "task", "eval_hash")
_SQL_TYPES = {"score": "REAL", "expert_score": "REAL", "normalized": "REAL", "created": "REAL"}


_LOCK_WAIT_S = 30.0  # how long to wait for another process's lock (opening and writing)


class OutcomeStore:
    """Append-only store of :class:`Outcome` rows and reference scores (see module docs)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise OutcomeStoreError(
                f"Outcome store {str(self.path)!r} is not a file.", "pass a .sqlite file path."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            raise OutcomeStoreError(
                f"{str(self.path)!r} is not a readable outcome store ({exc}).",
                "point at a store written by simmerge, or at a new file name.",
            ) from exc

    def _open(self) -> sqlite3.Connection:
        """Connect, switch to WAL and create the schema, retrying while another process holds
        the lock. Why: switching a fresh file to WAL needs an exclusive lock and SQLite reports
        'database is locked' at once, without its busy timeout, when a second process opens the
        same new store in that instant -- which is what shard collectors started together do."""
        wait_s = _LOCK_WAIT_S
        deadline = time.monotonic() + wait_s
        delay = 0.01
        while True:
            db = sqlite3.connect(str(self.path), timeout=wait_s)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                self._db = db
                self._init_schema()
                return db
            except sqlite3.OperationalError as exc:
                db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except BaseException:
                db.close()
                raise

    def _init_schema(self) -> None:
        cols = ", ".join(f"{c} {_SQL_TYPES.get(c, 'TEXT')} NOT NULL" for c in _COLUMNS)
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS outcomes ({cols}, PRIMARY KEY ({', '.join(_KEY)}))"
            )
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        (version,) = self._db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        if int(version) != SCHEMA_VERSION:
            raise OutcomeStoreError(
                f"Outcome store {str(self.path)!r} has schema version {version}; this simmerge "
                f"reads version {SCHEMA_VERSION}.",
                "use the simmerge version that wrote it, or collect into a new store.",
            )

    # --- writing -------------------------------------------------------------------------------

    def add(self, outcomes: Iterable[Outcome]) -> int:
        """Append rows in ONE transaction (all or none); rows already present are skipped.
        Returns the number of new rows."""
        now = time.time()
        rows = [
            tuple(getattr(o, c) if c != "created" else (o.created or now) for c in _COLUMNS)
            for o in outcomes
        ]
        marks = ", ".join("?" for _ in _COLUMNS)
        try:
            with self._db:
                before = self._db.total_changes
                # ON CONFLICT (not OR IGNORE): only a repeated key is skipped; a NULL or
                # malformed row still fails, and the whole batch with it
                self._db.executemany(
                    f"INSERT INTO outcomes VALUES ({marks}) ON CONFLICT DO NOTHING", rows
                )
                return self._db.total_changes - before
        except sqlite3.IntegrityError as exc:
            raise OutcomeStoreError(
                f"Outcome rows rejected by {str(self.path)!r} ({exc}); none were written.",
                "fill every field of each Outcome.",
            ) from exc

    # --- reading -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Outcome]:
        return self.outcomes()

    def outcomes(self, catalog: str | None = None) -> Iterator[Outcome]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM outcomes"
        args: tuple[Any, ...] = ()
        if catalog is not None:
            sql, args = sql + " WHERE catalog=?", (catalog,)
        for row in self._db.execute(sql + f" ORDER BY {', '.join(_KEY)}", args):
            yield Outcome(*row)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])

    def to_records(self, catalog: str | None = None) -> list[dict[str, Any]]:
        return [asdict(o) for o in self.outcomes(catalog)]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> OutcomeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def params_json(params: Iterable[tuple[str, Any]]) -> str:
    return json.dumps(dict(params), sort_keys=True)

"""The results store: one SQLite file per results folder, one row per run.

``RESULTS_DIR/results.sqlite`` holds

- ``runs``: the latest outcome of every run id (cell, hyperparameters, seed, full config,
  status done/failed, metrics JSON, error line, timings, zotune version, host, hardware);
- ``attempts``: every attempt at a run, failed ones included (how often a cell had to be
  retried, and why);
- ``suites``: each suite's plan (its run ids and cells) and the command that runs it, so the
  report knows which cells are missing, not only which ones ran.

A write is one transaction across the tables: a runner killed mid-write leaves the previous
state, never a half-written row. WAL journaling lets the report read while a runner writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .suite import Cell, RunSpec, Suite

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 2
# Columns each schema version added, with their default for rows written before it.
MIGRATIONS = {2: ["ALTER TABLE runs ADD COLUMN variant TEXT NOT NULL DEFAULT ''"]}
STATUSES = ("done", "failed")
RUN_COLUMNS = (
    "id", "suite", "model", "task", "scheme", "optimizer", "variant", "hparams", "seed",
    "config", "status", "metrics", "error", "started_at", "finished_at", "duration_s",
    "attempts", "zotune_version", "hostname", "hardware",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    scheme TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    hparams TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    metrics TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    duration_s REAL NOT NULL,
    attempts INTEGER NOT NULL,
    zotune_version TEXT NOT NULL,
    hostname TEXT NOT NULL,
    hardware TEXT NOT NULL,
    variant TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    status TEXT NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS suites (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    command TEXT NOT NULL,
    plan TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass
class RunRecord:
    """A row of ``runs``: what one run (its latest attempt) produced."""

    id: str
    suite: str
    cell: Cell
    hparams: dict[str, Any]
    seed: int
    config: dict[str, Any]
    status: str
    metrics: dict[str, Any] | None
    error: str | None
    started_at: float
    finished_at: float
    zotune_version: str
    hostname: str
    hardware: str
    attempts: int = 1

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at

    @classmethod
    def for_run(cls, suite: str, run: RunSpec, **outcome: Any) -> RunRecord:
        return cls(
            id=run.id,
            suite=suite,
            cell=run.cell,
            hparams=dict(run.hparams),
            seed=run.seed,
            config=run.config,
            **outcome,
        )


@dataclass
class SuitePlan:
    """A suite as the store remembers it: its runs and the command that produces them."""

    name: str
    source: str
    command: str
    runs: list[dict[str, Any]] = field(default_factory=list)  # id, cell fields, hparams, seed

    @classmethod
    def of(cls, suite: Suite, command: str) -> SuitePlan:
        runs = [
            {"id": r.id, **asdict(r.cell), "hparams": r.hparams, "seed": r.seed}
            for r in suite.runs
        ]
        return cls(suite.name, suite.source, command, runs)


class ResultsStore:
    """The SQLite results database of one results folder (safe to share between threads)."""

    def __init__(self, results_dir: str | Path, *, create: bool = True) -> None:
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / DB_NAME
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no results database at {self.path}")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (see _transaction), not implicit.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: results schema version {version}, this zotune reads "
                    f"{SCHEMA_VERSION} and older"
                )
            fresh = not self._db.execute(
                "SELECT name FROM sqlite_master WHERE name = 'runs'"
            ).fetchone()
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            if not fresh:  # a store an older zotune wrote: add what it lacks, keep its rows
                for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything in the block commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record(self, record: RunRecord) -> None:
        """Store a run's outcome (replacing its previous one) and log the attempt.

        Sets ``record.attempts`` to the number of attempts so far, this one included.
        """
        if record.status not in STATUSES:
            raise ValueError(f"run status must be one of {STATUSES}, got {record.status!r}")
        with self._transaction() as db:
            previous = db.execute(
                "SELECT attempts FROM runs WHERE id = ?", (record.id,)
            ).fetchone()
            record.attempts = (previous["attempts"] + 1) if previous else 1
            db.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                (
                    record.id,
                    record.suite,
                    record.cell.model,
                    record.cell.task,
                    record.cell.scheme,
                    record.cell.optimizer,
                    record.cell.variant,
                    json.dumps(record.hparams),  # the suite's order, for display
                    record.seed,
                    json.dumps(record.config, sort_keys=True),
                    record.status,
                    json.dumps(record.metrics) if record.metrics is not None else None,
                    record.error,
                    record.started_at,
                    record.finished_at,
                    record.duration_s,
                    record.attempts,
                    record.zotune_version,
                    record.hostname,
                    record.hardware,
                ),
            )
            self._log_attempt(db, record)

    def _log_attempt(self, db: sqlite3.Connection, record: RunRecord) -> None:
        db.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?)",
            (record.id, record.started_at, record.finished_at, record.status, record.error),
        )

    def save_plan(self, plan: SuitePlan, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO suites VALUES (?, ?, ?, ?, ?)",
                (plan.name, plan.source, plan.command, json.dumps(plan.runs), now),
            )

    def plans(self) -> list[SuitePlan]:
        rows = self._db.execute("SELECT * FROM suites ORDER BY updated_at").fetchall()
        return [
            SuitePlan(row["name"], row["source"], row["command"], json.loads(row["plan"]))
            for row in rows
        ]

    def statuses(self) -> dict[str, str]:
        """Run id → ``done`` or ``failed``; runs never finished are absent."""
        return dict(self._db.execute("SELECT id, status FROM runs").fetchall())

    def records(self, suite: str | None = None) -> list[RunRecord]:
        query, args = "SELECT * FROM runs", ()
        if suite is not None:
            query, args = query + " WHERE suite = ?", (suite,)
        return [_record(row) for row in self._db.execute(query + " ORDER BY rowid", args)]

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY started_at", (run_id,)
        )
        return [dict(row) for row in rows]


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        suite=row["suite"],
        cell=Cell(row["model"], row["task"], row["scheme"], row["optimizer"], row["variant"]),
        hparams=json.loads(row["hparams"]),
        seed=row["seed"],
        config=json.loads(row["config"]),
        status=row["status"],
        metrics=json.loads(row["metrics"]) if row["metrics"] is not None else None,
        error=row["error"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        zotune_version=row["zotune_version"],
        hostname=row["hostname"],
        hardware=row["hardware"],
        attempts=row["attempts"],
    )

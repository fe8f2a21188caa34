"""The results store: one record file per run, indexed by a SQLite database.

The record of a results folder, what git should carry (the folder's ``.gitignore``, written
by the store, keeps out the rest):

- ``runs/<id>/record.json``: a run's latest outcome (cell, hyperparameters, seed, full
  config, status done/failed, metrics, error line, timings, zotune version, host, hardware)
  and every attempt at it, failed ones included;
- ``runs/<id>/curve.jsonl``: its training curve (the report's loss plot), copied from the
  run's ``metrics.jsonl`` when its outcome is recorded, so the two files always describe the
  same attempt: the ``metrics.jsonl`` a run writes as it trains stays local, and ``git add``
  of a store whose runs are still going carries no half curve (nor a rerun's curve beside the
  previous attempt's record);
- ``suites/<name>.json``: each suite's plan (its run ids and cells) and the command that runs
  it, so the report knows which cells are missing, not only which ones ran.

Everything else is local: ``metrics.jsonl``, checkpoints (``last.pt`` while a run is
unfinished: a run cut off here resumes from it, one cut off on another machine starts over;
``best.pt``, its best weights), logs, the runner's lock, and
``results.sqlite``, a cache of the record files (tables ``runs``, ``attempts``, ``suites``)
for queries and the report. Opening a store reconciles the two: record files the database
lacks (a fresh clone, a folder copied from elsewhere) are read in, rows without a record file
(a store written before the files existed, a crash between the two writes) are written out,
and a damaged database (truncated, a bad header, bad pages) is rebuilt from the record files,
saying so in one line.

A write is one transaction across the tables, then the record file, written atomically: a
runner killed mid-write leaves the previous state or the whole new one, never half a record.
WAL journaling lets the report read while a runner writes.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..training.run_folder import METRICS_FILE
from ..utils.files import atomic_write_text
from .suite import Cell, RunSpec, Suite, run_id

DB_NAME = "results.sqlite"
RUNS_DIR = "runs"
RECORD_FILE = "record.json"
CURVE_FILE = "curve.jsonl"
# A run's files that are its record; the rest of its folder is local (see the docstring).
RECORD_FILES = (RECORD_FILE, CURVE_FILE)
# The metrics that tell one attempt's outcome from another's (a resumed run's timings in its
# record are the attempt's sum, on its curve's final line the last stretch's).
OUTCOME_METRICS = ("test_accuracy", "best_val_accuracy", "best_step")
PLANS_DIR = "suites"
UNSAFE_IN_FILE_NAMES = re.compile(r"[^\w.-]")
# A run id names its folder under runs/ (12 hex digits; an older zotune's were words as
# plain): one from a file or a database that is anything else, a separator or ".." among
# others, is never made into a path.
SAFE_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What git carries of a results folder: the record files, the report, nothing else of a run.
GITIGNORE_HEADER = "# Written by zotune"
GITIGNORE = f"""\
{GITIGNORE_HEADER}: the record is runs/*/{{{RECORD_FILE},{CURVE_FILE}}} and {PLANS_DIR}/*.json;
# the database is a cache rebuilt from them; checkpoints, logs and the curve of a run still
# training ({METRICS_FILE}) stay on their machine.
/{DB_NAME}*
/.runner.lock
/{RUNS_DIR}/*/*
!/{RUNS_DIR}/*/{RECORD_FILE}
!/{RUNS_DIR}/*/{CURVE_FILE}
"""
SCHEMA_VERSION = 2
# Columns each schema version added, with their default for rows written before it.
MIGRATIONS = {2: ["ALTER TABLE runs ADD COLUMN variant TEXT NOT NULL DEFAULT ''"]}
STATUSES = ("done", "failed")
RUN_COLUMNS = (
    "id", "suite", "model", "task", "scheme", "optimizer", "variant", "hparams", "seed",
    "config", "status", "metrics", "error", "started_at", "finished_at", "duration_s",
    "attempts", "zotune_version", "hostname", "hardware",
)
ATTEMPT_COLUMNS = ("started_at", "finished_at", "status", "error")
# What a run's record file and a suite's plan file hold; one lacking any of these is damaged.
RECORD_KEYS = (
    "id", "suite", "model", "task", "scheme", "optimizer", "hparams", "seed", "status",
    "metrics", "error", "started_at", "finished_at", "zotune_version", "hostname", "hardware",
    "attempts", "config",
)
PLAN_KEYS = ("name", "source", "command", "runs", "updated_at")

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
    # id, cell fields, hparams, seed; ``confirm: true`` on a run of ``confirm_seeds``
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, suite: Suite, command: str) -> SuitePlan:
        runs = [
            {"id": r.id, **asdict(r.cell), "hparams": r.hparams, "seed": r.seed,
             **({"confirm": True} if r.confirm else {})}
            for r in suite.runs
        ]
        return cls(suite.name, suite.source, command, runs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuitePlan:
        return cls(data["name"], data["source"], data["command"], data["runs"])


def store_exists(results_dir: str | Path) -> bool:
    """Whether ``results_dir`` holds a store: a database, or record files to rebuild one from."""
    results_dir = Path(results_dir)
    return (results_dir / DB_NAME).is_file() or any(_record_paths(results_dir)) or any(
        _plan_paths(results_dir)
    )


def clear_run_files(run_dir: Path) -> None:
    """Delete a run's files but its record, before a retry starts it afresh."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if path.name in RECORD_FILES:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


class ResultsStore:
    """The results of one results folder: its record files and their SQLite index (safe to
    share between threads; see the module docstring)."""

    def __init__(self, results_dir: str | Path, *, create: bool = True) -> None:
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / DB_NAME
        if not create and not store_exists(self.results_dir):
            raise FileNotFoundError(f"no results database or run records in {self.results_dir}")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        gitignore = self.results_dir / ".gitignore"
        rules = gitignore.read_text() if gitignore.exists() else None
        if rules is None or (rules.startswith(GITIGNORE_HEADER) and rules != GITIGNORE):
            atomic_write_text(gitignore, GITIGNORE)  # an older zotune's rules are replaced
        self._lock = threading.Lock()
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            self._rebuild(error)
        self._reconcile()
        renamed = _rekey(self.results_dir)
        if renamed:
            # The index still holds the old ids: rebuild it from the re-keyed files.
            self._db.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._open()
            self._reconcile()
            _warn(
                f"{self.results_dir}: re-keyed {len(renamed)} "
                f"run{'s' if len(renamed) != 1 else ''} to this zotune's run ids "
                f"(their configs are unchanged; an older zotune hashed them differently)"
            )

    def _open(self) -> None:
        # isolation_level=None: transactions are explicit (see _transaction), not implicit.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._create_schema()
        except BaseException:
            self._db.close()
            raise

    def _create_schema(self) -> None:
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

    def _rebuild(self, error: sqlite3.DatabaseError) -> None:
        """Replace a damaged database with an empty one; :meth:`_reconcile` refills it."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        records = sum(1 for _ in _record_paths(self.results_dir))
        _warn(
            f"{self.path} was damaged ({error}); rebuilt it from the {records} run records in "
            f"{self.results_dir / RUNS_DIR}"
        )
        self._open()

    def _reconcile(self) -> None:
        """Read in record files the database lacks or has older; write out rows they lack."""
        files: dict[str, dict[str, Any]] = {}
        for path in _record_paths(self.results_dir):
            payload = _read_json(path, RECORD_KEYS)
            if payload is not None and not _safe_id(payload["id"]):
                _warn(f"{path}: {payload['id']!r} is not a run id; ignored")
            elif payload is not None and payload["id"] == path.parent.name:
                files[payload["id"]] = payload
            elif payload is not None:
                _warn(f"{path}: holds the record of run {payload['id']!r}; ignored")
        for payload in files.values():
            _adopt_curve(self.results_dir / RUNS_DIR / payload["id"], payload["metrics"] or {})
        plans = {}
        for path in _plan_paths(self.results_dir):
            payload = _read_json(path, PLAN_KEYS)
            if payload is not None:
                plans[payload["name"]] = payload
        with self._transaction() as db:
            counts = dict(db.execute("SELECT id, attempts FROM runs").fetchall())
            for payload in sorted(files.values(), key=lambda p: (p["finished_at"], p["id"])):
                if len(payload["attempts"]) > counts.get(payload["id"], 0):
                    self._insert(db, _record_of(payload), payload["attempts"])
            updated = dict(db.execute("SELECT name, updated_at FROM suites").fetchall())
            for payload in plans.values():
                if payload["updated_at"] > updated.get(payload["name"], float("-inf")):
                    _insert_plan(db, SuitePlan.from_dict(payload), payload["updated_at"])
        for record in self.records():
            known = files.get(record.id)
            if known is None or len(known["attempts"]) < record.attempts:
                self._write_record_file(record, self.attempts(record.id))
        for row in self._db.execute("SELECT * FROM suites").fetchall():
            known = plans.get(row["name"])
            if known is None or known["updated_at"] < row["updated_at"]:
                self._write_plan_file(_plan_of(row), row["updated_at"])

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
            self._insert(db, record, [])
            self._log_attempt(db, record)
            attempts = _attempts(db, record.id)
        self._write_record_file(record, attempts)
        _record_curve(self.run_dir(record.id))

    def amend_metrics(self, run_id: str, extra: dict[str, Any]) -> None:
        """Add ``extra`` to a finished run's metrics, keeping its attempts and timings: for
        figures derived later from what the run recorded (never for a new outcome, which
        :meth:`record` stores as an attempt)."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] != "done":
                raise ValueError(f"run {run_id} has no finished record to amend")
            record = _record(row)
            record.metrics = {**record.metrics, **extra}
            self._insert(db, record, [])
            attempts = _attempts(db, run_id)
        self._write_record_file(record, attempts)

    def _insert(
        self, db: sqlite3.Connection, record: RunRecord, attempts: list[dict[str, Any]]
    ) -> None:
        """Write ``record`` as its run's row; ``attempts``, when given, replace its attempt log."""
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
        if attempts:
            db.execute("DELETE FROM attempts WHERE run_id = ?", (record.id,))
            for attempt in attempts:
                db.execute(
                    "INSERT INTO attempts VALUES (?, ?, ?, ?, ?)",
                    (record.id, *(attempt[key] for key in ATTEMPT_COLUMNS)),
                )

    def _log_attempt(self, db: sqlite3.Connection, record: RunRecord) -> None:
        db.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?)",
            (record.id, record.started_at, record.finished_at, record.status, record.error),
        )

    def _write_record_file(self, record: RunRecord, attempts: list[dict[str, Any]]) -> None:
        payload = {
            "id": record.id,
            "suite": record.suite,
            **asdict(record.cell),
            "hparams": record.hparams,
            "seed": record.seed,
            "status": record.status,
            "metrics": record.metrics,
            "error": record.error,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "zotune_version": record.zotune_version,
            "hostname": record.hostname,
            "hardware": record.hardware,
            "attempts": attempts,
            "config": record.config,
        }
        path = self.run_dir(record.id) / RECORD_FILE
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    def run_dir(self, run_id: str) -> Path:
        """The folder of run ``run_id`` in this store; an id that is no run id is refused
        (it could name a folder elsewhere: ``../../x``)."""
        if not _safe_id(run_id):
            raise ValueError(f"{self.results_dir}: {run_id!r} is not a run id")
        return self.results_dir / RUNS_DIR / run_id

    def save_plan(self, plan: SuitePlan, now: float) -> None:
        """Remember ``plan``; an unchanged plan keeps its file as it is (no diff for git)."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM suites WHERE name = ?", (plan.name,)).fetchone()
            if row is not None and asdict(_plan_of(row)) == json.loads(json.dumps(asdict(plan))):
                return
            _insert_plan(db, plan, now)
        self._write_plan_file(plan, now)

    def _write_plan_file(self, plan: SuitePlan, updated_at: float) -> None:
        payload = {**asdict(plan), "updated_at": updated_at}
        path = self.results_dir / PLANS_DIR / (UNSAFE_IN_FILE_NAMES.sub("_", plan.name) + ".json")
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    def plans(self) -> list[SuitePlan]:
        rows = self._db.execute("SELECT * FROM suites ORDER BY updated_at").fetchall()
        return [_plan_of(row) for row in rows]

    def statuses(self) -> dict[str, str]:
        """Run id → ``done`` or ``failed``; runs never finished are absent."""
        return dict(self._db.execute("SELECT id, status FROM runs").fetchall())

    def records(self, suite: str | None = None) -> list[RunRecord]:
        query, args = "SELECT * FROM runs", ()
        if suite is not None:
            query, args = query + " WHERE suite = ?", (suite,)
        records = []
        for row in self._db.execute(query + " ORDER BY rowid", args).fetchall():
            if _safe_id(row["id"]):
                records.append(_record(row))
            else:
                _warn(f"{self.path}: {row['id']!r} is not a run id; its row is ignored")
        return records

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        return _attempts(self._db, run_id, with_id=True)


def _attempts(
    db: sqlite3.Connection, run_id: str, with_id: bool = False
) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT * FROM attempts WHERE run_id = ? ORDER BY started_at, rowid", (run_id,)
    )
    keys = ("run_id", *ATTEMPT_COLUMNS) if with_id else ATTEMPT_COLUMNS
    return [{key: row[key] for key in keys} for row in rows]


def _insert_plan(db: sqlite3.Connection, plan: SuitePlan, updated_at: float) -> None:
    db.execute(
        "INSERT OR REPLACE INTO suites VALUES (?, ?, ?, ?, ?)",
        (plan.name, plan.source, plan.command, json.dumps(plan.runs), updated_at),
    )


def _plan_of(row: sqlite3.Row) -> SuitePlan:
    return SuitePlan(row["name"], row["source"], row["command"], json.loads(row["plan"]))


def _rekey(results_dir: Path) -> dict[str, str]:
    """Move each record whose folder is named by an id an older zotune computed to the id
    :func:`run_id` gives its config now, and rename it in the plans; ``{old: new}``.

    A run in progress under its old id (checkpoints, no record yet) is left where it is and
    starts over under the new one.
    """
    renamed: dict[str, str] = {}
    for path in sorted(_record_paths(results_dir)):
        payload = _read_json(path, RECORD_KEYS)
        if payload is None or payload["id"] != path.parent.name:
            continue  # damaged or misfiled: _reconcile names it
        new = run_id(payload["config"])
        if new == payload["id"]:
            continue
        target = path.parent.parent / new
        if (target / RECORD_FILE).exists():
            _warn(f"{path}: its run id is now {new}, which already has a record; left as it is")
            continue
        if target.exists():
            shutil.rmtree(target)  # an unfinished attempt under the new id; the record wins
        path.parent.rename(target)
        renamed[payload["id"]] = new
        atomic_write_text(target / RECORD_FILE, json.dumps({**payload, "id": new}, indent=2)
                          + "\n")
    if renamed:
        for plan_path in _plan_paths(results_dir):
            payload = _read_json(plan_path, PLAN_KEYS)
            if payload is None:
                continue
            runs = [{**entry, "id": renamed.get(entry["id"], entry["id"])}
                    for entry in payload["runs"]]
            if runs != payload["runs"]:
                atomic_write_text(plan_path, json.dumps({**payload, "runs": runs}, indent=2)
                                  + "\n")
    return renamed


def _record_curve(run_dir: Path) -> None:
    """Copy the curve of the attempt just recorded into the record; an attempt that wrote
    none leaves none (an earlier attempt's curve would not be this record's)."""
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        atomic_write_text(run_dir / CURVE_FILE, metrics.read_text())
    else:
        (run_dir / CURVE_FILE).unlink(missing_ok=True)


def _adopt_curve(run_dir: Path, recorded: dict[str, Any]) -> None:
    """Give a recorded run that has no curve file the ``metrics.jsonl`` beside its record,
    when that file is the recorded attempt's: a store from before curve files (which carried
    ``metrics.jsonl`` itself), or a runner stopped between the record and the curve.
    ``recorded`` is the record's metrics.

    The attempt's is the one whose final line holds the record's outcome; a curve without one
    (a failed attempt) counts when it is not newer than the record. Anything else is a rerun
    still going, and waits for its own record."""
    metrics, record = run_dir / METRICS_FILE, run_dir / RECORD_FILE
    if (run_dir / CURVE_FILE).exists() or not metrics.is_file():
        return
    curve = metrics.read_text()
    final = _final_metrics(curve)
    if final is None:
        ours = metrics.stat().st_mtime <= record.stat().st_mtime
    else:
        ours = all(recorded.get(key) == final.get(key) for key in OUTCOME_METRICS)
    if ours:
        atomic_write_text(run_dir / CURVE_FILE, curve)


def _final_metrics(curve: str) -> dict[str, Any] | None:
    """The metrics on a curve's final line (training writes it last), if it has one."""
    lines = curve.splitlines()
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None  # the line a killed run was writing
    final = last.get("final") if isinstance(last, dict) else None
    return final if isinstance(final, dict) else None


def _safe_id(run_id: Any) -> bool:
    return isinstance(run_id, str) and SAFE_RUN_ID.fullmatch(run_id) is not None


def _record_paths(results_dir: Path) -> Iterator[Path]:
    return (results_dir / RUNS_DIR).glob(f"*/{RECORD_FILE}")


def _plan_paths(results_dir: Path) -> Iterator[Path]:
    return (results_dir / PLANS_DIR).glob("*.json")


def _read_json(path: Path, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """A record file's contents, or None (saying so, naming the file) when it is damaged."""
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
        missing = [key for key in keys if key not in payload]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        if "attempts" in keys and not (isinstance(payload["attempts"], list)
                                       and payload["attempts"]):
            raise ValueError("no attempts")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        _warn(f"{path}: damaged ({error}); ignored")
        return None
    return payload


def _warn(message: str) -> None:
    print(f"zotune: warning: {message}", file=sys.stderr, flush=True)


# RunRecord's fields that a record file and a database row both hold under their own names.
_PLAIN_FIELDS = (
    "id", "suite", "hparams", "seed", "config", "status", "metrics", "error", "started_at",
    "finished_at", "zotune_version", "hostname", "hardware",
)


def _record_from(values: dict[str, Any], attempts: int) -> RunRecord:
    """A RunRecord from a record file's payload or a decoded database row."""
    cell = Cell(
        values["model"], values["task"], values["scheme"], values["optimizer"],
        values.get("variant", ""),
    )
    return RunRecord(cell=cell, attempts=attempts, **{k: values[k] for k in _PLAIN_FIELDS})


def _record_of(payload: dict[str, Any]) -> RunRecord:
    return _record_from(payload, attempts=len(payload["attempts"]))


def _record(row: sqlite3.Row) -> RunRecord:
    values = dict(row)
    for key in ("hparams", "config", "metrics"):
        values[key] = json.loads(row[key]) if row[key] is not None else None
    return _record_from(values, attempts=row["attempts"])

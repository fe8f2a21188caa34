"""The resumable runner: each pending run in its own worker process, results into the store.

Running the same suite again executes only the runs that have no row yet, and (by default)
the failed ones but those that diverged (their settings would diverge again); finished and
diverged runs are redone only when ``rerun`` (``--rerun``) names them. A
run is recorded the moment its process ends, in one transaction, so Ctrl-C or a kill loses
only the runs in flight:

- a run interrupted mid-training resumes from its ``last.pt`` checkpoint next time (a
  finished run's ``last.pt`` is deleted once it is recorded: nothing resumes it, and for
  full fine-tuning it is the size of the model, with the optimizer's state; ``best.pt``,
  the weights ``zotune eval`` and ``zotune export`` read, stays);
- a worker whose runner died stops itself (it would otherwise train on, unrecorded);
- an outcome a worker wrote just before its runner died is picked up, not recomputed.

A suite's confirming seeds (``confirm_seeds``) run at a cell's chosen setting once the
cell's sweep is recorded: the runner works in waves, each the runs whose turn has come, until
a wave finds nothing new to run (a run is attempted once per invocation).

With ``time_limit`` (``--time-limit``), a run still going after that many seconds is stopped
(SIGTERM, then SIGKILL after a grace period) and recorded as failed, saying so; the suite
goes on, and the next invocation retries it from scratch like any failed run.

``jobs`` runs go at once (threads, each waiting on one subprocess); each subprocess gets
``usable CPUs // jobs`` torch/OpenMP threads so they do not fight over cores.

:class:`Runner` keeps the bookkeeping (plan, lock, store, progress, summary, recording an
outcome) apart from how runs execute (``_start``, ``_run_all``, ``_finish``), so another
backend (:mod:`zotune.bench.ray_backend`) replaces only the execution.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..training.checkpoints import LAST_FILE
from ..utils.environment import hardware_description, hostname, usable_cpus, zotune_version
from ..utils.files import FolderLock
from .progress import ProgressDisplay
from .selection import confirmations_due, diverged, select
from .store import RUNS_DIR, ResultsStore, RunRecord, SuitePlan, clear_run_files
from .suite import Cell, RunSpec, Suite
from .worker import STDERR_FILE, read_outcome, write_job

LOCK_FILE = ".runner.lock"
# How a worker process starts: ``python -m`` would put the working folder first on sys.path,
# so a ``yaml.py`` or ``torch.py`` lying there would run in every worker. This drops the
# entry ``-c`` puts there (what ``-P`` does from Python 3.11; zotune runs on 3.10) and
# keeps the rest of the path, PYTHONPATH included.
WORKER_COMMAND = (
    sys.executable,
    "-c",
    "import sys\n"
    "if not getattr(sys.flags, 'safe_path', False): del sys.path[0]\n"
    "from zotune.bench.worker import main\n"
    "sys.exit(main(sys.argv[1:]))",
)
# Seconds a worker gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_SECONDS = 10.0


@dataclass
class PlannedRun:
    spec: RunSpec
    state: str  # done, failed, diverged or pending (no row yet)
    will_run: bool
    # A confirming run whose setting is not (or not yet) its cell's choice: it does not run.
    waiting: bool = False


@dataclass
class BenchSummary:
    total: int
    done_before: int
    ran: int
    done: int  # done now, in all
    failed: int  # failed now, in all
    results_dir: Path

    def line(self) -> str:
        return (
            f"{self.total} runs: {self.done} done, {self.failed} failed "
            f"({self.ran} run now, {self.done_before} done before) in {self.results_dir}"
        )


def plan(
    suite: Suite,
    statuses: dict[str, str],
    retry_failed: bool = True,
    only: list[str] | None = None,
    rerun: list[str] | None = None,
    records: list[RunRecord] | None = None,
) -> list[PlannedRun]:
    """Each run with its state in the store (``statuses``: id → done, failed or diverged, as
    :func:`run_states` gives them) and whether to run.

    A failed run runs again with ``retry_failed`` unless it diverged: divergence is what its
    settings do (the same seed diverges again), where a crash or a kill is not. ``only``
    (selectors, as in a suite file) limits what runs to the cells it picks; the rest of the
    suite stays in the plan, so the report shows it as missing. ``rerun`` (selectors) runs the
    finished and diverged runs of the cells it picks again, from scratch. A confirming run
    runs only once its cell's choice, made on ``records`` (the store's), is its setting.
    """
    wanted = {run.id for run in suite.select(only)} if only else None
    again = {run.id for run in suite.select(rerun, "--rerun")} if rerun else set()
    due = _confirmations_due(suite, records or []) if any(r.confirm for r in suite.runs) else set()
    planned = []
    for run in suite.distinct_runs:  # a run two cells share executes once
        state = statuses.get(run.id, "pending")
        will_run = (state == "pending" or (state == "failed" and retry_failed)
                    or (state in ("done", "diverged") and run.id in again))
        if wanted is not None and run.id not in wanted:
            will_run = False
        waiting = run.confirm and (run.cell, _setting(run)) not in due
        planned.append(PlannedRun(run, state, will_run and not waiting, waiting))
    return planned


def _confirmations_due(suite: Suite, records: list[RunRecord]) -> set[tuple[Cell, str]]:
    entries = SuitePlan.of(suite, "").runs
    ids = {entry["id"] for entry in entries}
    return confirmations_due(select([r for r in records if r.id in ids], entries))


def _setting(run: RunSpec) -> str:
    return json.dumps(run.hparams, sort_keys=True)


def describe_plan(planned: list[PlannedRun]) -> str:
    """The ``--dry-run`` listing: one line per run, then the counts."""
    lines = []
    for item in planned:
        action = "wait" if item.waiting else "run" if item.will_run else "skip"
        confirm = " (confirming: runs if this setting is chosen)" if item.spec.confirm else ""
        lines.append(f"{item.spec.id}  {item.state:8s}  {action:4s}  {item.spec.label()}{confirm}")
    pending = sum(item.will_run for item in planned)
    waiting = sum(item.waiting for item in planned)
    lines.append(f"{len(planned)} runs, {pending} to run"
                 + (f", {waiting} confirming runs waiting for their cell's choice"
                    if waiting else ""))
    return "\n".join(lines)


def run_states(store: ResultsStore) -> dict[str, str]:
    """Run id → ``done``, ``failed``, or ``diverged`` (a failure its settings caused, which
    a retry would repeat); runs never finished are absent."""
    return {
        record.id: "diverged" if record.status == "failed" and diverged(record) else record.status
        for record in store.records()
    }


def threads_per_job(jobs: int) -> int:
    return max(1, usable_cpus() // max(1, jobs))


class Runner:
    """Runs a suite's pending runs into ``results_dir`` (see the module docstring)."""

    def __init__(
        self,
        suite: Suite,
        results_dir: str | Path,
        *,
        jobs: int = 1,
        retry_failed: bool = True,
        only: list[str] | None = None,
        rerun: list[str] | None = None,
        command: str | None = None,
        stream: TextIO | None = None,
        time_limit: float | None = None,
    ) -> None:
        if jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {jobs}")
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"--time-limit must be a positive number of seconds, got {time_limit}")
        self.suite = suite
        self.results_dir = Path(results_dir)
        self.jobs = jobs
        self.retry_failed = retry_failed
        self.only = only
        self.rerun = rerun
        self.command = command or suite.command(self.results_dir)
        self.stream = stream
        self.threads = threads_per_job(jobs)
        self.time_limit = time_limit
        self._stopping = threading.Event()
        self._live: set[subprocess.Popen] = set()
        self._live_lock = threading.Lock()

    def run(self) -> BenchSummary:
        if self.only:
            self.suite.select(self.only)  # a bad selector fails before the store is touched
        if self.rerun:
            self.suite.select(self.rerun, "--rerun")
        with _exclusive(self.results_dir), ResultsStore(self.results_dir) as store:
            store.save_plan(SuitePlan.of(self.suite, self.command), time.time())
            attempted: set[str] = set()
            done_before = None
            try:
                with _sigterm_as_interrupt():
                    while True:  # a wave: the runs whose turn has come (confirming runs wait)
                        statuses = run_states(store)
                        planned = plan(self.suite, statuses, self.retry_failed, self.only,
                                       self.rerun, store.records())
                        to_run = [item.spec for item in planned
                                  if item.will_run and item.spec.id not in attempted]
                        if done_before is None:
                            done_before = sum(item.state == "done" for item in planned)
                        elif not to_run:
                            break
                        attempted.update(run.id for run in to_run)
                        at_once, how = self._start(to_run)
                        progress = ProgressDisplay(len(to_run), at_once, self.stream)
                        progress.say(self._wave_line(planned, done_before, to_run, how))
                        self._run_all(to_run, statuses, store, progress)
                        if not to_run:
                            break
            finally:
                self._finish()
            final = store.statuses()
            ids = [item.spec.id for item in planned if not item.waiting]
            return BenchSummary(
                total=len(ids),
                done_before=done_before or 0,
                ran=len(attempted),
                done=sum(final.get(i) == "done" for i in ids),
                failed=sum(final.get(i) == "failed" for i in ids),
                results_dir=self.results_dir,
            )

    def _wave_line(
        self, planned: list[PlannedRun], done_before: int, to_run: list[RunSpec], how: str
    ) -> str:
        confirming = sum(run.confirm for run in to_run)
        waiting = sum(item.waiting for item in planned)
        return (
            f"suite {self.suite.name}: {len(planned) - waiting} runs, {done_before} done "
            f"before, {len(to_run)} to run"
            + (f" ({confirming} confirming a chosen setting)" if confirming else "")
            + f" ({how}) → {self.results_dir}"
            + (f"; {waiting} confirming runs wait for their cell's choice" if waiting else "")
        )

    def _start(self, to_run: list[RunSpec]) -> tuple[int, str]:
        """Get ready to execute ``to_run``; returns how many go at once and how (for progress)."""
        return self.jobs, f"{self.jobs} at a time, {_plural(self.threads, 'thread')} each"

    def _finish(self) -> None:
        """Release what :meth:`_start` took; called even when the runs were interrupted."""

    def _run_all(
        self,
        to_run: list[RunSpec],
        statuses: dict[str, str],
        store: ResultsStore,
        progress: ProgressDisplay,
    ) -> None:
        """Execute ``to_run``, recording each run and reporting it to ``progress`` as it ends."""
        if not to_run:
            return
        executor = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="bench-run")
        futures: set[Future] = {
            executor.submit(self._execute, run, statuses.get(run.id), store) for run in to_run
        }
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    record = future.result()
                    if record is not None:
                        report_finished(progress, record)
        except BaseException:
            self._stop()
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        executor.shutdown(wait=True)

    def _stop(self) -> None:
        """Stop the workers in flight; their runs stay pending and resume next time."""
        self._stopping.set()
        with self._live_lock:
            live = list(self._live)
        _terminate(live)

    def _execute(
        self, run: RunSpec, previous: str | None, store: ResultsStore
    ) -> RunRecord | None:
        """Run one worker process and record its outcome; None when interrupted."""
        if self._stopping.is_set():
            return None
        recovered = self._recover(store, run, previous)
        if recovered is not None:
            return recovered
        run_dir = self.run_dir(run)
        if previous is not None:
            # A retry starts afresh, not from the failed checkpoint; a rerun of a finished
            # run, not from its final one.
            clear_run_files(run_dir)
        resume = (run_dir / LAST_FILE).is_file()
        run_dir.mkdir(parents=True, exist_ok=True)
        job = write_job(run_dir, run.config, run.id, self.threads, resume)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        started = time.time()
        log_path = run_dir / STDERR_FILE
        with log_path.open("a" if resume else "w") as log:
            log_start = log.tell()
            # A new session: Ctrl-C reaches the runner alone, which then stops the workers,
            # so an interrupted run is left pending rather than recorded as failed.
            process = subprocess.Popen(
                [*WORKER_COMMAND, str(job)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
            with self._live_lock:
                self._live.add(process)
            try:
                code = process.wait(self.time_limit)
            except subprocess.TimeoutExpired:
                _terminate([process])
                finished = time.time()
                error = f"stopped after the time limit of {self.time_limit:g} s"
                return self._record_failure(store, run, error, started, finished)
            finally:
                with self._live_lock:
                    self._live.discard(process)
        finished = time.time()
        if self._stopping.is_set() and code != 0:
            return None
        outcome = read_outcome(run_dir, run.id)
        if code == 0 and outcome is not None:
            return self._record_outcome(store, run, outcome, started, finished)
        error = _failure_message(code, log_path, log_start)
        return self._record_failure(store, run, error, started, finished)

    def run_dir(self, run: RunSpec) -> Path:
        """Where a run's files live: its log, outcome, metrics and (locally) checkpoints."""
        return self.results_dir / RUNS_DIR / run.id

    def _recover(self, store: ResultsStore, run: RunSpec, previous: str | None) -> RunRecord | None:
        """Record the outcome a run left on disk when its runner died before recording it."""
        if previous is not None:
            return None
        outcome = read_outcome(self.run_dir(run), run.id)
        if outcome is None:
            return None
        return self._record_outcome(
            store, run, outcome, outcome["started_at"], outcome["finished_at"]
        )

    def _record_failure(
        self,
        store: ResultsStore,
        run: RunSpec,
        error: str,
        started: float,
        finished: float,
        *,
        host: str | None = None,
        hardware: str | None = None,
    ) -> RunRecord:
        """Record a failed run; ``host``/``hardware`` default to this machine's."""
        record = RunRecord.for_run(
            self.suite.name,
            run,
            status="failed",
            metrics=None,
            error=error,
            started_at=started,
            finished_at=finished,
            zotune_version=zotune_version(),
            hostname=host or hostname(),
            hardware=hardware or hardware_description(),
        )
        store.record(record)
        return record

    def _record_outcome(
        self, store: ResultsStore, run: RunSpec, outcome: dict, started: float, finished: float
    ) -> RunRecord:
        """Record a worker's outcome; the timings are the runner's (process start-up included)."""
        record = RunRecord.for_run(
            self.suite.name,
            run,
            status="done",
            metrics=outcome["metrics"],
            error=None,
            started_at=started,
            finished_at=finished,
            zotune_version=outcome["zotune_version"],
            hostname=outcome["hostname"],
            hardware=outcome["hardware"],
        )
        store.record(record)
        (self.run_dir(run) / LAST_FILE).unlink(missing_ok=True)
        return record


def _terminate(processes: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL whatever has not exited after the grace period."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def report_finished(progress: ProgressDisplay, record: RunRecord) -> None:
    progress.run_finished(_label(record), record.status, record.duration_s, record.error)


def _label(record: RunRecord) -> str:
    from .suite import hparams_label

    cell = record.cell
    return f"{cell.optimizer}/{cell.scheme} {hparams_label(record.hparams)} seed {record.seed}"


def _failure_message(code: int, log_path: Path, start: int) -> str:
    """The last line this attempt wrote to its log, with how the process ended."""
    with log_path.open("rb") as log:
        log.seek(max(start, log_path.stat().st_size - 65536))
        lines = [line.strip() for line in log.read().decode(errors="replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
        return f"{how} (last output: {last})" if last else how
    if code == 0:
        return f"the worker wrote no outcome (last output: {last})" if last else "no outcome"
    return last or f"the worker exited with code {code} and no output"


def _exclusive(results_dir: Path) -> FolderLock:
    """An exclusive lock on a results folder: two runners there would do the same runs twice."""
    return FolderLock(results_dir, LOCK_FILE, f"another zotune bench is running in {results_dir}")


class _sigterm_as_interrupt:
    """In the main thread, SIGTERM stops the runner the way Ctrl-C does (workers stopped)."""

    def __enter__(self) -> None:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

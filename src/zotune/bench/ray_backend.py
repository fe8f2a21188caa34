"""``zotune bench SUITE --ray [ADDRESS]``: each pending run as one Ray task.

Only the execution differs from the local runner (:class:`~zotune.bench.runner.Runner`): the
plan, the resume rules, the lock, the progress lines and the records are its own.

- A run is a Ray task that asks for the run's ``resources`` (suite key; 1 CPU by default, plus
  1 GPU when the run's device is CUDA) and trains with :func:`zotune.bench.worker.execute`, the
  function the local worker process calls, with as many torch threads as it asked CPUs. A
  task sees only the GPUs Ray gave it: write ``model.device`` as ``cuda``, not ``cuda:N``, and
  note that ``auto`` asks for no GPU, so it runs on the CPU.
- Each task gets a fresh Ray worker process (``max_calls=1``), as a local run gets its own
  subprocess: a crash, a leak or a CUDA error stays in its run, and each peak-memory reading
  is its own.
- The task trains in a scratch folder on whichever node Ray chose and returns plain data: the
  outcome file, its log and its other small files (``metrics.jsonl``, ``result.json``,
  ``config.yaml``; checkpoints stay behind, they can be gigabytes). The driver writes them to
  ``RESULTS/runs/<id>/``, where the local runner puts them, and is the only writer of the
  SQLite store, so the nodes need no shared filesystem.
- Each result is recorded the moment its task ends; Ctrl-C (or SIGTERM) cancels the tasks
  still queued or running, and their runs stay pending. A run cut off on Ray starts over next
  time: its checkpoint was in the node's scratch folder.
- Tasks are not retried by Ray (``max_retries=0``): a run that kills its worker (out of
  memory, a segfault) is recorded as failed, like a local one, and the next invocation retries
  it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..utils.environment import hardware_description, hostname
from .progress import ProgressDisplay
from .runner import Runner, report_finished
from .store import ResultsStore, RunRecord, clear_run_files
from .suite import Resources, RunSpec
from .worker import STDERR_FILE, error_line, execute, make_job, read_outcome

RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'zotune[ray]'"
# Files a task leaves behind on its node rather than send to the driver.
CHECKPOINT_SUFFIX = ".pt"


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    return ray


def run_task(job: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The body of a run's Ray task: train in a scratch folder, return the run's files.

    A training error is returned, not raised, so the log that explains it comes back too.
    """
    started = time.time()
    error = None
    with tempfile.TemporaryDirectory(prefix=f"zotune-{job['run_id']}-") as scratch:
        run_dir = Path(scratch)
        with _output_to(run_dir / STDERR_FILE):
            try:
                execute(job, run_dir)
            except Exception as exc:
                traceback.print_exc()
                error = error_line(exc)
                print(error, file=sys.stderr, flush=True)
        files = {
            path.name: path.read_bytes()
            for path in sorted(run_dir.iterdir())
            if path.is_file() and path.suffix != CHECKPOINT_SUFFIX
        }
    return {
        "error": error,
        "files": files,
        "started_at": started,
        "finished_at": time.time(),
        "hostname": hostname(),
        "hardware": hardware_description(device),
    }


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr, C libraries' included, to ``path`` for a while."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


class RayRunner(Runner):
    """The runner with each run as a Ray task (see the module docstring).

    ``address`` goes to ``ray.init``; None starts a local Ray instance or joins the one
    ``RAY_ADDRESS`` names. A Ray connection the caller already opened is used and left open.
    """

    def __init__(
        self, suite: Any, results_dir: str | Path, *, address: str | None = None, **options: Any
    ) -> None:
        self._ray = import_ray()  # before anything is touched: the fix is an install
        super().__init__(suite, results_dir, **options)
        self.address = address
        self._connected_here = False

    def _start(self, to_run: list[RunSpec]) -> tuple[int, str]:
        if not to_run:
            return 1, "on Ray"
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
            self._connected_here = True
        cluster = ray.cluster_resources()
        cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
        largest = Resources(
            cpus=max(run.resources.cpus for run in to_run),
            gpus=max(run.resources.gpus for run in to_run),
        )
        at_once = _fits(largest, cpus, gpus)
        how = f"Ray tasks of {largest.label()}, ~{at_once} at a time on {cpus:g} CPUs"
        return at_once, how + (f", {gpus:g} GPUs" if gpus else "")

    def _finish(self) -> None:
        if self._connected_here:
            self._ray.shutdown()
            self._connected_here = False

    def _run_all(
        self,
        to_run: list[RunSpec],
        statuses: dict[str, str],
        store: ResultsStore,
        progress: ProgressDisplay,
    ) -> None:
        if not to_run:
            return
        ray = self._ray
        task = ray.remote(max_calls=1, max_retries=0)(run_task)
        _warn_if_too_big(progress, to_run, ray.cluster_resources())
        pending: dict[Any, tuple[RunSpec, float]] = {}
        try:
            for run in to_run:
                recovered = self._recover(store, run, statuses.get(run.id))
                if recovered is not None:
                    report_finished(progress, recovered)
                    continue
                job = make_job(run.config, run.id, run.resources.threads, resume=False)
                ref = task.options(
                    num_cpus=run.resources.cpus,
                    num_gpus=run.resources.gpus,
                    name=f"zotune-bench-{run.id}",
                ).remote(job, run.config["model"].get("device"))
                pending[ref] = (run, time.time())
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    run, submitted = pending.pop(ref)
                    report_finished(progress, self._collect(store, run, ref, submitted))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def _collect(self, store: ResultsStore, run: RunSpec, ref: Any, submitted: float) -> RunRecord:
        """Write a finished task's files where a local run leaves them, then record the run."""
        try:
            result = self._ray.get(ref)
        except self._ray.exceptions.RayError as error:  # the task's worker died, or Ray failed
            return self._record_failure(store, run, _ray_error(error), submitted, time.time())
        run_dir = self.run_dir(run)
        clear_run_files(run_dir)  # an earlier attempt's files, checkpoints included
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, data in result["files"].items():
            (run_dir / name).write_bytes(data)
        outcome = read_outcome(run_dir, run.id)
        times = result["started_at"], result["finished_at"]
        if result["error"] is None and outcome is not None:
            return self._record_outcome(store, run, outcome, *times)
        error = result["error"] or "the worker wrote no outcome"
        host, hardware = result["hostname"], result["hardware"]
        return self._record_failure(store, run, error, *times, host=host, hardware=hardware)


def _fits(request: Resources, cpus: float, gpus: float) -> int:
    """How many runs of ``request`` the cluster holds at once (at least 1, for the estimate)."""
    counts = [cpus // request.cpus]
    if request.gpus:
        counts.append(gpus // request.gpus)
    return max(1, int(min(counts)))


def _warn_if_too_big(
    progress: ProgressDisplay, runs: list[RunSpec], cluster: dict[str, float]
) -> None:
    """Say so when runs ask for more than the cluster has: Ray would queue them silently."""
    for key, field in (("CPU", "cpus"), ("GPU", "gpus")):
        have = cluster.get(key, 0)
        too_big = [run for run in runs if getattr(run.resources, field) > have]
        if too_big:
            wanted = max(getattr(run.resources, field) for run in too_big)
            progress.say(
                f"warning: {len(too_big)} runs ask for up to {wanted:g} {key}, the Ray cluster "
                f"has {have:g}; they wait until it grows (see the suite's resources and "
                f"model.device)"
            )


def _ray_error(error: BaseException) -> str:
    text = str(error).strip()
    return f"ray: {type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"

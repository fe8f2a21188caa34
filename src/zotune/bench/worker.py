"""One benchmark run in its own process: ``python -m zotune.bench.worker RUN_DIR/job.json``.

The runner writes ``job.json`` (the run's config, its output folder, the thread count); the
worker trains with :func:`zotune.training.train.finetune` and writes ``outcome.json``
atomically beside it. A crash writes nothing: the runner then records the run as failed
with the last line of ``stderr.log``, which the worker makes a one-line
``zotune: error: ...`` when it can.

A separate process per run means a crash, a leak or a CUDA error in one run cannot touch the
others, and each run's peak-memory reading is its own.

:func:`execute` is the run itself, shared by both backends: this process entry point calls it
on a job file, and a ``zotune bench --ray`` task calls it on the same job in a fresh Ray worker
process, so a run computes and reports the same thing wherever it runs.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write_text

JOB_FILE = "job.json"
OUTCOME_FILE = "outcome.json"
STDERR_FILE = "stderr.log"
# What an outcome file holds; one lacking any of these is damaged.
OUTCOME_KEYS = frozenset(
    {"run_id", "metrics", "started_at", "finished_at", "zotune_version", "hostname", "hardware"}
)
# How often an orphaned worker notices that its runner is gone.
PARENT_POLL_SECONDS = 1.0


def make_job(config: dict[str, Any], run_id: str, threads: int, resume: bool) -> dict[str, Any]:
    """What a worker needs to train one run: its config, id, thread count, whether to resume."""
    return {"run_id": run_id, "config": config, "threads": threads, "resume": resume}


def write_job(
    run_dir: Path, config: dict[str, Any], run_id: str, threads: int, resume: bool
) -> Path:
    """The job file the runner hands to a worker."""
    path = run_dir / JOB_FILE
    atomic_write_text(path, json.dumps(make_job(config, run_id, threads, resume), indent=2))
    return path


def read_outcome(run_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The worker's outcome for ``run_id``, or None when it wrote none (it crashed).

    A damaged outcome file counts as none, saying so in one line that names it: the run then
    runs (or resumes) again, and its worker writes the file anew.
    """
    path = run_dir / OUTCOME_FILE
    if not path.is_file():
        return None
    try:
        outcome = json.loads(path.read_text())
        if not isinstance(outcome, dict) or not outcome.keys() >= OUTCOME_KEYS:
            raise ValueError(f"not an outcome (needs {', '.join(sorted(OUTCOME_KEYS))})")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        print(f"zotune: warning: {path}: damaged ({error}); running the run again",
              file=sys.stderr, flush=True)
        return None
    return outcome if outcome.get("run_id") == run_id else None


def _exit_when_orphaned() -> None:
    """Stop if the runner dies: an orphan would train on, unrecorded, beside its own rerun."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="orphan-watch").start()


def error_line(error: BaseException) -> str:
    """The one line a failed run leaves as its error: ``zotune: error: Type: first line``."""
    text = str(error).strip()
    message = text.splitlines()[0] if text else type(error).__name__
    return f"zotune: error: {type(error).__name__}: {message}"


def run_job(job_path: Path) -> dict[str, Any]:
    """Train the run of a job file, in the file's folder; returns the outcome it wrote."""
    return execute(json.loads(job_path.read_text()), job_path.parent)


def execute(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train ``job``'s run with ``run_dir`` as its output folder; returns the outcome.

    The outcome is also written to ``run_dir/outcome.json`` (atomically) before returning, so
    a runner that dies before recording it finds it there next time.
    """
    import torch

    from ..config import build_config
    from ..training.train import finetune
    from ..utils.environment import hardware_description, hostname, zotune_version

    job = copy.deepcopy(job)
    torch.set_num_threads(job["threads"])
    data = job["config"]
    # The run folder is the bench's: a run killed before its first checkpoint starts over.
    data["train"].update(
        output_dir=str(run_dir), resume=job["resume"], overwrite=not job["resume"],
        progress=False,
    )
    # A suite's relative export path lands in the run's folder (the suite checked it has no
    # ".."); one from the command line arrives absolute.
    save_model = data["train"].get("save_model")
    if save_model and not Path(save_model).is_absolute():
        data["train"]["save_model"] = str(run_dir / save_model)
    config = build_config(data)
    started = time.time()
    result = finetune(config)
    finished = time.time()
    metrics = {k: v for k, v in result.record().items() if k != "output_dir"}
    metrics["threads"] = job["threads"]
    outcome = {
        "run_id": job["run_id"],
        "status": "done",
        "metrics": metrics,
        "started_at": started,
        "finished_at": finished,
        "zotune_version": zotune_version(),
        "hostname": hostname(),
        "hardware": hardware_description(config.model.device),
    }
    atomic_write_text(run_dir / OUTCOME_FILE, json.dumps(outcome, indent=2))
    return outcome


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m zotune.bench.worker RUN_DIR/job.json", file=sys.stderr)
        return 2
    _exit_when_orphaned()
    try:
        run_job(Path(argv[0]))
    except BaseException as error:
        traceback.print_exc()
        print(error_line(error), file=sys.stderr, flush=True)
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

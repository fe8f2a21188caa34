"""The runner's progress lines on stderr: runs done/total, failures, estimated time left.

Plain lines rather than a redrawn bar, so a log file or CI output reads the same as a terminal.
The estimate is the mean duration of the runs finished so far times the runs left, divided
by how many run at once.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``75`` → ``"1m15s"``; ``5400`` → ``"1h30m"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressDisplay:
    def __init__(self, to_run: int, jobs: int, stream: TextIO | None = None) -> None:
        self.to_run = to_run
        self.jobs = max(1, jobs)
        self.stream = stream if stream is not None else sys.stderr
        self.finished = 0
        self.failed = 0
        self.durations: list[float] = []
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        print(f"zotune bench: {message}", file=self.stream, flush=True)

    def run_finished(self, label: str, status: str, seconds: float, error: str | None) -> None:
        self.finished += 1
        self.durations.append(seconds)
        if status != "done":
            self.failed += 1
        detail = f": {error}" if error else ""
        self.say(
            f"[{self.finished}/{self.to_run}] {status} {label} in {format_duration(seconds)}"
            f"{detail} · {self.failed} failed · {self.eta()}"
        )

    def eta(self) -> str:
        left = self.to_run - self.finished
        if left <= 0:
            return f"all finished in {format_duration(time.monotonic() - self.started)}"
        mean = sum(self.durations) / len(self.durations)
        return f"~{format_duration(mean * math.ceil(left / self.jobs))} left"

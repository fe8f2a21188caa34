"""Measurement primitives: peak memory and step timers.

Peak memory
    * CUDA: bytes allocated by torch's caching allocator (``torch.cuda.memory_allocated``),
      peak since the last ``torch.cuda.reset_peak_memory_stats``. Excludes the CUDA context
      and the allocator's cached-but-free blocks.
    * CPU: the process's resident set (``VmRSS`` in ``/proc/self/status``), peak = ``VmHWM``,
      the high-water mark of the resident set. Linux resets it when "5" is written to
      ``/proc/self/clear_refs``; where that is not possible (not Linux, no permission) the
      peak is ``getrusage(RUSAGE_SELF).ru_maxrss``, the lifetime peak of the process.
      A resident set counts pages, not tensors: it includes the Python interpreter, the
      loaded libraries (≈ 0.3–0.5 GB for torch + transformers), thread stacks, and any memory
      the C allocator keeps after ``free``. :func:`track_allocations_in_rss` makes glibc
      return large freed blocks to the OS at once, so the resident set follows the live
      tensors and "peak minus a baseline taken just before" is the memory a piece of work
      added; :func:`reuse_freed_memory` restores heap reuse for timing.

Timers
    :func:`time_calls` runs a function ``warmup`` times untimed, then ``repeats`` times,
    each bracketed by ``torch.cuda.synchronize`` on CUDA (kernels run asynchronously, so
    without it the clock stops before the GPU does), and reports the median.

The analytic memory model these measurements are compared with is
:mod:`zotune.profiling.memory_model`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MB = 2**20

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_HWM = "5"  # clear_refs code that resets the resident-set high-water mark (Linux ≥ 4.0)
# Pages other threads touch between the reset and the read; a real reset leaves HWM ≈ RSS.
_HWM_RESET_SLACK_KB = 1024

# glibc mallopt parameter: allocations at or above this size are mmap'd, and unmapped on free.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024
_MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


# Peak memory -------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    return _status_values_kb(key)[0]


def _status_values_kb(*keys: str) -> list[int | None]:
    """Fields of /proc/self/status in KiB, read in one go (so they describe one instant)."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return [None] * len(keys)
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            values[name] = int(rest.split()[0])
    return [values.get(key) for key in keys]


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def current_memory_bytes(device: torch.device | str = "cpu") -> int:
    """CUDA: bytes held by live tensors on ``device``. CPU: the process's resident set now."""
    if _is_cuda(device):
        return torch.cuda.memory_allocated(device)
    rss_kb = _status_kb("VmRSS")
    if rss_kb is None:  # no /proc: the best available figure is the lifetime peak
        return _ru_maxrss_bytes()
    return rss_kb * 1024


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """CUDA: peak bytes of live tensors since the last :func:`reset_peak_memory`.

    CPU: the process's peak resident set (``VmHWM``) since the start of the process or the
    last successful :func:`reset_peak_memory`; ``ru_maxrss`` (lifetime peak) without /proc.
    """
    if _is_cuda(device):
        return torch.cuda.max_memory_allocated(device)
    hwm_kb = _status_kb("VmHWM")
    return hwm_kb * 1024 if hwm_kb is not None else _ru_maxrss_bytes()


def reset_peak_memory(device: torch.device | str = "cpu") -> bool:
    """Start a new peak window; True if the next :func:`peak_memory_bytes` starts from now.

    CPU: resets ``VmHWM`` to the current resident set by writing "5" to
    ``/proc/self/clear_refs``. Returns False where that is impossible: the peak then remains
    the lifetime peak of the process, so measure in a fresh process instead. Some sandboxed
    kernels accept the write and ignore it, so the reset counts only if ``VmHWM`` then sits
    at the resident set.
    """
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text(_RESET_HWM)
    except OSError:
        return False
    hwm_kb, rss_kb = _status_values_kb("VmHWM", "VmRSS")
    if hwm_kb is None or rss_kb is None:
        return False
    return hwm_kb <= rss_kb + _HWM_RESET_SLACK_KB


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory in MiB, as :func:`peak_memory_bytes` defines it (the training loop's figure).

    CUDA: peak allocated by torch. CPU: the process's peak resident set (a high-water mark).
    """
    return peak_memory_bytes(device) / MB


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _mallopt_mmap_threshold(size: int) -> bool:
    libc = _libc()
    if libc is None:  # not glibc
        return False
    accepted = bool(libc.mallopt(_M_MMAP_THRESHOLD, size))
    libc.malloc_trim(0)
    return accepted


def release_freed_memory() -> None:
    """Give the pages of freed heap blocks back to the OS (``malloc_trim(0)``), so they stop
    counting as resident. Blocks freed while heap reuse was on stay in the heap's free
    lists and are handed out again before any new mapping: call this before reading a
    baseline, or the baseline carries them and the work that reuses them looks free.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def track_allocations_in_rss() -> bool:
    """Make the CPU resident set follow live tensors; True if the C allocator accepted it.

    glibc's malloc raises its mmap threshold dynamically once large blocks have been freed,
    after which freed tensors stay in the heap and still count as resident: a baseline taken
    after a warm-up would then already contain the warm-up's activations. Pinning the
    threshold at 128 KiB (``mallopt(M_MMAP_THRESHOLD)``, which also disables the dynamic
    adjustment) makes every tensor of that size or larger its own mapping, returned to the OS
    on free; ``malloc_trim(0)`` releases what the heap holds now.

    Every such allocation then costs fresh zeroed pages from the kernel, which slows
    allocation-heavy code: time with :func:`reuse_freed_memory` in force instead.
    """
    return _mallopt_mmap_threshold(_MMAP_THRESHOLD_BYTES)


def reuse_freed_memory() -> bool:
    """Undo :func:`track_allocations_in_rss` for timing: blocks below 32 MiB come from the
    heap again and are reused after free, as in glibc's steady state (its dynamic threshold
    tops out at 32 MiB on 64-bit systems)."""
    return _mallopt_mmap_threshold(_MMAP_THRESHOLD_MAX_BYTES)


@dataclass
class PeakWindow:
    """Memory over a window of work, in bytes (see :func:`peak_memory_bytes` for the meaning).

    ``baseline``: memory just before the window; ``peak``: peak inside it; ``added`` =
    ``peak − baseline``, what the work added on top of what was already there. ``reset``
    is False when the CPU peak could not be reset, in which case ``peak`` may predate the
    window.
    """

    device: str
    baseline: int = 0
    peak: int = 0
    reset: bool = True

    @property
    def added(self) -> int:
        return max(0, self.peak - self.baseline)


@contextmanager
def track_peak(device: torch.device | str = "cpu") -> Iterator[PeakWindow]:
    """``with track_peak(device) as window: work()``; then read ``window.added``."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)
    window = PeakWindow(device=str(device))
    window.reset = reset_peak_memory(device)
    window.baseline = current_memory_bytes(device)
    yield window
    if _is_cuda(device):
        torch.cuda.synchronize(device)
    window.peak = max(peak_memory_bytes(device), window.baseline)


# Timers ------------------------------------------------------------------------------------


@dataclass
class StepTimes:
    """Wall-clock seconds of the timed calls (warm-up calls excluded)."""

    seconds: list[float]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max − min) / median: how noisy the timed calls were."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median else 0.0


def time_calls(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> StepTimes:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; report each time.

    On CUDA every timed call is bracketed by ``torch.cuda.synchronize`` so the time covers
    the kernels, not just their launch.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"invalid repeats: {repeats!r} (must be an int >= 1)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"invalid warmup: {warmup!r} (must be an int >= 0)")
    cuda = _is_cuda(device)
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return StepTimes(seconds=seconds, warmup=warmup)

"""Measurement primitives: peak-memory windows and step timers."""

from __future__ import annotations

import sys

import pytest
import torch

from zotune.utils import measure
from zotune.utils.measure import MB, time_calls, track_peak

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/clear_refs is Linux")


# Peak memory -------------------------------------------------------------------------------


@linux_only
def test_cpu_peak_resets_after_a_big_tensor_is_freed():
    assert measure.track_allocations_in_rss()
    big = torch.ones(32 * MB // 4)  # 32 MiB, every page touched
    big_peak = measure.peak_memory_bytes("cpu")
    del big
    # A block of that size freed earlier in this process may have served it from the heap,
    # where it stays after del: hand its pages back, as measurements do before a baseline.
    measure.release_freed_memory()
    # A high-water mark until reset (the kernel's RSS counters lag by a few pages).
    assert measure.peak_memory_bytes("cpu") > big_peak - MB
    assert measure.peak_memory_bytes("cpu") - measure.current_memory_bytes("cpu") > 24 * MB
    with track_peak("cpu") as window:
        small = torch.ones(1024)
    assert window.reset
    assert window.added < 8 * MB
    assert window.peak - window.baseline == window.added
    del small


@linux_only
def test_cpu_peak_window_sees_a_transient_tensor():
    measure.track_allocations_in_rss()
    with track_peak("cpu") as window:
        transient = torch.ones(16 * MB // 4)
        del transient
    # Whether the allocator gives the pages back afterwards is glibc's choice (its mmap
    # threshold grows after large frees), so only the window's own figure is checked.
    assert window.added > 12 * MB


def test_peak_memory_mb_is_the_training_loops_figure():
    from zotune.training import train

    assert train.peak_memory_mb is measure.peak_memory_mb
    assert measure.peak_memory_mb(torch.device("cpu")) > 1  # the interpreter alone is more


def test_peak_memory_falls_back_to_ru_maxrss_without_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(measure, "_STATUS", tmp_path / "missing")
    monkeypatch.setattr(measure, "_CLEAR_REFS", tmp_path / "no" / "clear_refs")
    assert measure.peak_memory_bytes("cpu") == measure._ru_maxrss_bytes()
    assert measure.reset_peak_memory("cpu") is False
    with track_peak("cpu") as window:
        pass
    assert not window.reset


# Timers ------------------------------------------------------------------------------------


def test_time_calls_runs_warmup_untimed_and_reports_the_median():
    calls = []
    times = time_calls(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7
    assert len(times.seconds) == 5 and times.warmup == 2
    assert min(times.seconds) <= times.median <= max(times.seconds)
    assert times.spread >= 0


@pytest.mark.parametrize(("repeats", "warmup"), [(0, 1), (2, -1), (True, 1)])
def test_time_calls_rejects_bad_counts(repeats, warmup):
    with pytest.raises(ValueError, match="invalid"):
        time_calls(lambda: None, repeats=repeats, warmup=warmup)

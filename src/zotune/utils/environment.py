"""Where a run ran: hostname, CPU model and core count, GPU name, zotune version.

Stored with every benchmark row and profile result so a table can say which machine
produced it.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_affinity() -> str | None:
    """``taskset -c`` form of the CPUs this process is pinned to (``"0"``, ``"0-3,6"``), or
    None when it may run on every CPU the system has (or the platform cannot say)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if not cpus or len(cpus) >= (os.cpu_count() or 0):
        return None
    ranges: list[list[int]] = []
    for cpu in cpus:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name(device: str | None) -> str | None:
    """The CUDA device's name when ``device`` is a CUDA device and torch is already loaded."""
    if not device or not device.startswith("cuda"):
        return None
    torch = sys.modules.get("torch")  # only the worker has torch loaded; the parent never loads it
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def hardware_description(device: str | None = None) -> str:
    """``"NVIDIA H100 80GB HBM3; AMD EPYC 7B13 (16 cores)"`` or ``"<CPU> (2 cores)"``."""
    cpu = f"{cpu_model()} ({usable_cpus()} cores)"
    gpu = gpu_name(device)
    return f"{gpu}; {cpu}" if gpu else cpu


def hostname() -> str:
    return socket.gethostname()


def zotune_version() -> str:
    from .. import __version__

    return __version__

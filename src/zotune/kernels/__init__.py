"""Native kernels for the passes of a zeroth-order step over bf16 weights.

In bf16 a ZO step is three passes over the weights (+εz; −εz−εz; +εz and the stochastically
rounded update), each made of several element-wise torch ops per chunk (a bf16 add per leg;
widen, multiply, add, add the rounding bits, mask and narrow for the update), each a
separate sweep with its own dtype conversions; that cost five times the fp32 step's passes
on half the bytes. ``bf16_pass.c`` does one pass as one sweep: every element is loaded
once, goes through all legs and the update in registers, and is stored once (the file
states the arithmetic); Sparse-MeZO's masks ride along bit-packed, and LOZO's and
SubZero's low-rank directions are formed element by element inside the sweep (z = σ·L R,
r fmas) instead of as an fp32 block per chunk. A stateful rule's update has its own sweep:
Adam (with decoupled decay) reads the fp32 gradient and moments, updates the moments in
place and rounds the weights stochastically in one pass where the torch ops make ten. It is
compiled with the system's C compiler at first use into a per-user cache (a few hundred
milliseconds), keyed by the source, the flags and the CPU.

Without a C compiler (or with ``ZOTUNE_FUSED_KERNELS=0``) the callers fall back to the torch
ops, with one warning line. The two paths draw the same directions and rounding bits; the
fused one computes every move as one fma and sums a low-rank product in a fixed order (a
BLAS picks its own), so their bits can differ in the last place of an intermediate (each is
deterministic on its own).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("bf16_pass.c")
SWITCH = "ZOTUNE_FUSED_KERNELS"  # "0" keeps the torch ops
CACHE = "ZOTUNE_KERNEL_CACHE"  # where the compiled library goes (default ~/.cache/zotune)
FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-pthread")
NATIVE = ("-march=native",)

_loaded: dict[str, ctypes.CDLL | None] = {}

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F = ctypes.c_float
PASS_ARGUMENTS = (
    _I64, _P, _P, _P, _I64, _I64, _P, _P, _I64, _P, _P, ctypes.c_int, ctypes.c_float,
    _P, _I64, _P, _P, ctypes.c_int,
)
FACTORED_ARGUMENTS = (
    _I64, _P, _P, _P, _P, _P, _I64, _P, _P, _P, _I64, _P, _P, _I64, _P, _P, ctypes.c_int,
    ctypes.c_float, _P, _I64, _P, ctypes.c_int,
)
HESSIAN_ARGUMENTS = (
    _I64, _P, _P, _P, _P, _I64, _P, _I64, _P, _P, ctypes.c_int, _F, _F, _F, _F, _P, _I64,
    _P, ctypes.c_int,
)
PACK_SMALL_ARGUMENTS = (_P, _I64, _F, _P)
MAX_TERMS = 8  # distinct directions in one factored pass (bf16_pass.c)
ADD_ROUNDED_ARGUMENTS = (_P, _P, _I64, ctypes.c_float, _P, _I64, _I64, ctypes.c_int)
ADAM_ROUNDED_ARGUMENTS = (
    _P, _P, _P, _P, _I64, _F, _F, _F, _F, _F, _F, _F, _F, _P, _I64, _I64, ctypes.c_int,
)


def enabled() -> bool:
    """Whether the fused kernels are wanted (``ZOTUNE_FUSED_KERNELS`` is not ``0``)."""
    return os.environ.get(SWITCH, "1") != "0"


def _cpu_identity() -> str:
    """The CPU the library is built for (``-march=native`` code may not run on another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags",
                                                                      "Features"))]
    return platform.machine() + "\n" + "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    root = os.environ.get(CACHE)
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zotune" / "kernels"


def _compile(target: Path) -> str | None:
    """Build the library at ``target`` (atomically); the reason it failed, or None."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc) found"
    target.parent.mkdir(parents=True, exist_ok=True)
    error = ""
    for extra in (NATIVE, ()):
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            partial = Path(tmp.name)
        command = [compiler, *FLAGS, *extra, "-o", str(partial), str(SOURCE)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as failure:
            partial.unlink(missing_ok=True)
            return f"{compiler} failed: {failure}"
        if done.returncode == 0:
            os.replace(partial, target)  # another process may have raced us: same content
            return None
        partial.unlink(missing_ok=True)
        error = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return f"{compiler} could not build {SOURCE.name}: {error}"


def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None (after one warning) when
    they are switched off or cannot be built."""
    if not enabled():
        return None
    if "lib" in _loaded:
        return _loaded["lib"]
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        source + " ".join(FLAGS).encode() + _cpu_identity().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"bf16_pass-{key}.so"
    lib = None
    reason = None if target.exists() else _compile(target)
    if reason is None:
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as failure:
            reason = f"could not load {target}: {failure}"
    if lib is not None:
        lib.zotune_bf16_pass.argtypes = PASS_ARGUMENTS
        lib.zotune_bf16_pass.restype = ctypes.c_int
        lib.zotune_bf16_factored_pass.argtypes = FACTORED_ARGUMENTS
        lib.zotune_bf16_factored_pass.restype = ctypes.c_int
        lib.zotune_bf16_hessian_pass.argtypes = HESSIAN_ARGUMENTS
        lib.zotune_bf16_hessian_pass.restype = ctypes.c_int
        lib.zotune_bf16_pack_small.argtypes = PACK_SMALL_ARGUMENTS
        lib.zotune_bf16_pack_small.restype = ctypes.c_int
        lib.zotune_bf16_add_rounded.argtypes = ADD_ROUNDED_ARGUMENTS
        lib.zotune_bf16_add_rounded.restype = ctypes.c_int
        lib.zotune_bf16_adam_rounded.argtypes = ADAM_ROUNDED_ARGUMENTS
        lib.zotune_bf16_adam_rounded.restype = ctypes.c_int
    else:
        warnings.warn(
            f"zotune: fused bf16 kernels unavailable ({reason}); bf16 steps use torch ops "
            f"(slower; set {SWITCH}=0 to silence)",
            RuntimeWarning,
            stacklevel=2,
        )
    _loaded["lib"] = lib
    return lib

"""Atomic file writes (a reader sees the old file or the new one, never half of one) and
folder locks (one process at a time in a run or results folder)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> None:
    """Delete the temporary files :func:`atomic_write` left beside ``names`` in ``folder``
    when its process was killed (SIGKILL leaves no chance to); call it holding the folder's
    lock, so no writer is mid-write."""
    for name in names:
        for path in Path(folder).glob(f".{name}.*"):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)


def disk_full_message(error: BaseException, path: Path) -> str | None:
    """One line for a write that failed because the disk is full, else None: torch's
    (``[enforce fail at inline_container.cc…] … file write failed``) and safetensors'
    (``IoError(Os { code: 28 …``) errors do not say so themselves."""
    import errno
    import shutil

    text = str(error)
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "code: 28" in text or "file write failed" in text or "No space left" in text
    )
    if not full:
        return None
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return f"{path}: cannot write it: no space left on the device"
    return f"{path}: cannot write it: no space left on the device ({free / 2**20:.0f} MiB free)"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class FolderLock:
    """An exclusive advisory lock on ``folder`` (a lock file inside it), held while in the
    ``with`` block; a second holder gets RuntimeError("<busy>") at once, never a wait."""

    def __init__(self, folder: Path, lock_name: str, busy: str) -> None:
        self.path = Path(folder) / lock_name
        self.busy = busy
        self._file: TextIO | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one process per folder is up to you
            return self
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            self._file = None
            raise RuntimeError(self.busy) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

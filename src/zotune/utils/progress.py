"""Progress bars for training and evaluation, on a terminal only.

A bar redraws itself in place on a terminal; written into a log file (``make demo > log``)
each redraw is one more line, so bars are off when stderr is not a terminal, and with
``--quiet`` / ``--no-progress`` (``train.progress: false``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def bars_wanted(setting: bool) -> bool:
    """Whether to draw bars: asked for, and stderr is a terminal."""
    return setting and sys.stderr.isatty()


def bar(items: Iterable, *, enabled: bool, desc: str, unit: str, total: int | None = None,
        initial: int = 0, leave: bool = True) -> Iterable:
    """``items`` wrapped in a tqdm bar on stderr, or as they are when not ``enabled``."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, total=total, initial=initial, leave=leave,
                file=sys.stderr)

"""matplotlib for zotune's figures (the report's and the profile's), loaded on demand.

matplotlib is an optional dependency (the ``report`` extra); it is imported here only, with
the Agg backend, so figures are drawn on machines with no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import atomic_write

# Marker shapes, cycled through to tell series apart beside their colours.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or a one-line error with the install hint."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "plots need matplotlib: pip install 'zotune[report]' "
            "(zotune report: or pass --no-plots)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def require_matplotlib() -> None:
    """Fail now, with the install hint, rather than after a long measurement."""
    pyplot()


def save_figure(figure: Any, path: Path) -> None:
    """Write ``figure`` as a PNG at ``path`` (atomically) and close it."""
    plt = pyplot()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)


def series_colors() -> list[str]:
    """The colours of matplotlib's default property cycle."""
    return pyplot().rcParams["axes.prop_cycle"].by_key()["color"]

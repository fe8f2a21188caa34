"""matplotlib for zotune's figures (the report's and the profile's), loaded on demand.

matplotlib is an optional dependency (the ``report`` extra); it is imported here only, with
the Agg backend, so figures are drawn on machines with no display.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .files import atomic_write

DPI = 120
PALETTE_COLORS = 256
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
    """Write ``figure`` as a PNG at ``path`` (atomically) and close it.

    The image is stored with a palette of :data:`PALETTE_COLORS` colours: a line plot's
    anti-aliased edges and shaded bands need no more to look the same, and the file is about
    a third of the full-colour one (reports and their HTML pages are committed to git)."""
    plt = pyplot()
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png")
    plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        paletted = image.convert("RGB").quantize(
            colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    atomic_write(path, lambda tmp: paletted.save(tmp, format="PNG", optimize=True))


def series_colors() -> list[str]:
    """The colours of matplotlib's default property cycle."""
    return pyplot().rcParams["axes.prop_cycle"].by_key()["color"]

"""What the README's "Adding ..." recipe tests share: their test module made a plugin that a
bench worker (another process) imports through ``ZOTUNE_PLUGINS``."""

from __future__ import annotations

import os
from pathlib import Path


def import_as_plugin(monkeypatch, test_file: str) -> str:
    """Name ``test_file``'s module in ``ZOTUNE_PLUGINS`` and put its folder on ``PYTHONPATH``
    for the processes the test starts; returns the module name."""
    module = Path(test_file).stem
    monkeypatch.setenv("ZOTUNE_PLUGINS", module)
    paths = [str(Path(test_file).parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return module

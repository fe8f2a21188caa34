"""Profile results on disk: the ``zotune profile --json`` file, written and read back."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write_text
from .render import describe_setup
from .spec import ProfileResult


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")


def profile_payload(
    results: Sequence[ProfileResult], *, command: str | None = None, note: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"kind": "profile", "setup": describe_setup(results)}
    if command:
        payload["command"] = command
    if note:
        payload["note"] = note
    payload["results"] = [r.as_dict() for r in results]
    return payload


def load_payload(path: str | os.PathLike) -> dict[str, Any]:
    """A ``zotune profile --json`` file: ``setup``, ``results`` and, if recorded, ``command``
    and ``note``."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind != "profile":
        raise ValueError(f"{path}: not a zotune profile result (kind {kind!r})")
    return data


def load_results(path: str | os.PathLike) -> list[ProfileResult]:
    """Results from a ``zotune profile --json`` file."""
    return [ProfileResult.from_dict(item) for item in load_payload(path)["results"]]

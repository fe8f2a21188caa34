"""Reading a task's labelled rows, from a local data directory or the Hugging Face hub.

The data directory is the ``data_dir`` argument, else the ``ZOTUNE_DATA_DIR`` environment
variable; with neither, the hub is used (this needs a network). Every row is normalized,
checked and its label validated here, so a bad row fails the load whether or not it would be
sampled.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import TaskDataError
from .formats import Row
from .spec import TaskSpec

DATA_DIR_ENV = "ZOTUNE_DATA_DIR"


@dataclass(frozen=True)
class Record:
    """One checked canonical row and where it came from."""

    where: str
    row: Row


@dataclass(frozen=True)
class Pool:
    """The labelled rows of one source split; ``name`` says which (``dev.tsv``, ``validation``)."""

    name: str
    records: list[Record]


@dataclass(frozen=True)
class Pools:
    dev: Pool
    train: Pool | None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory to read, or None for the hub."""
    if data_dir is not None and str(data_dir):
        chosen, origin = data_dir, "--data-dir"
    elif os.environ.get(DATA_DIR_ENV):
        chosen, origin = os.environ[DATA_DIR_ENV], DATA_DIR_ENV
    else:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise TaskDataError(f"data directory {path} (from {origin}) does not exist")
    return path


def read_pools(spec: TaskSpec, data_dir: Path | None) -> Pools:
    """The task's pools: a task file's own files, the data directory's, else the hub's."""
    if spec.local is not None and Path(spec.local.folder).is_absolute():
        return _read_local(spec, Path(spec.local.folder))
    if spec.hub is None and spec.local is not None:
        if data_dir is None:
            raise TaskDataError(
                f"{spec.name}: no hub dataset; pass --data-dir or set {DATA_DIR_ENV}"
            )
        return _read_local(spec, data_dir)
    if data_dir is None or spec.local is None:
        return _read_hub(spec)
    return _read_local(spec, data_dir)


def _read_local(spec: TaskSpec, data_dir: Path) -> Pools:
    folder = data_dir / spec.local.folder
    if not folder.is_dir():
        if spec.hub is not None and spec.local.hub_fallback:
            return _read_hub(spec)
        raise TaskDataError(f"{spec.name}: no folder {folder} in the data directory")
    dev_path = _first_existing(folder, spec.local.dev)
    if dev_path is None:
        looked = ", ".join(spec.local.dev)
        missing = folder / spec.local.dev[0]
        raise TaskDataError(f"{spec.name}: missing {missing} (looked for {looked})")
    train_path = _first_existing(folder, spec.local.train)
    return Pools(
        dev=_read_file(spec, dev_path),
        train=None if train_path is None else _read_file(spec, train_path),
    )


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def _read_file(spec: TaskSpec, path: Path) -> Pool:
    records: list[Record] = []
    for number, raw in spec.local.reader(path):
        # A line number, or a reader's own location of the row (a SQuAD question id).
        where = f"{path} line {number}" if isinstance(number, int) else f"{path} {number}"
        records.extend(_records(spec, raw, where))
    return Pool(path.name, records)


def _records(spec: TaskSpec, raw: Row, where: str) -> list[Record]:
    try:
        rows = spec.normalize(raw)
        for row in rows:
            spec.check(row)
            spec.label_of(row)
        return [Record(where, row) for row in rows]
    except TaskDataError as err:
        raise TaskDataError(f"{where}: {err}") from None


def _read_hub(spec: TaskSpec) -> Pools:
    hub = spec.hub
    name = f"{hub.path} ({hub.config})" if hub.config else hub.path
    split_names = (hub.dev, hub.train)
    try:
        load_dataset = importlib.import_module("datasets").load_dataset
        splits = {split: load_dataset(hub.path, hub.config, split=split) for split in split_names}
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise TaskDataError(
            f"{spec.name}: cannot load {name} from the Hugging Face hub "
            f"({type(err).__name__}: {reason}); pass --data-dir or set {DATA_DIR_ENV} "
            "to read local files"
        ) from err
    pools = []
    for split in split_names:
        records: list[Record] = []
        for index, raw in enumerate(splits[split]):
            records.extend(_records(spec, dict(raw), f"{name} {split} row {index}"))
        pools.append(Pool(split, records))
    return Pools(dev=pools[0], train=pools[1])

"""Sampling train / val / test as the paper does, carving what the public data lacks.

The paper samples 1000 train, 500 val and 1000 test examples with a seed. The public test
splits of GLUE / SuperGLUE / WinoGrande carry no labels, so, as in MeZO, the official
validation split ("dev") becomes the test source and val is carved out of train. Which
files each task reads is listed by ``zotune tasks --markdown``; what a load got from them is
logged and kept in :attr:`Splits.notes`.

The rule, for any source: test = ``num_test`` examples of dev; val and train
come from train when a train split exists (a local ``train*`` file, or the hub, which has
BoolQ's and WinoGrande's), else from what test left of dev. Val and train are disjoint and
never meet test: the pool that feeds them drops every example whose input (contexts and
continuations, label aside) repeats an earlier one's or one of dev's (SST-2's train repeats
371 phrases; WSC's train, 29 prompts that differ only in span offsets). A split that cannot be
filled takes all there is: test first, then val and train share what is left in proportion
to what was asked (COPA: 400 rows for 500 + 1000 asked → val 133, train 267). Every carving,
shortfall and drop is logged on one line and kept in :attr:`Splits.notes`.

Sampling is a seeded shuffle of each pool with a local ``random.Random`` keyed by task and
seed, never the global RNG; val is the head of the shuffled pool and train follows it, so val
stays the same when only ``num_train`` changes and a smaller train set is a prefix of a larger
one. MultiRC is sampled per answer option (MeZO's unit), so val and train may share a
paragraph, never an example.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .example import Example
from .sources import Pool, Pools, read_pools, resolve_data_dir
from .specs import TaskSpec, get_task


@dataclass
class Splits:
    """The examples of one task, and what was carved from what to get them."""

    train: list[Example]
    val: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Carving:
    """Indices drawn from the pools: ``test`` into dev; ``val`` and ``train`` into train,
    or into dev when ``shared`` (no train split)."""

    test: list[int]
    val: list[int]
    train: list[int]
    shared: bool


def carve(
    dev_size: int,
    train_size: int | None,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    key: str,
) -> Carving:
    """Disjoint, seeded draws; see the module docstring for the rule."""
    dev_order = _shuffled(dev_size, f"{key}:dev")
    test = dev_order[:num_test]
    rest = dev_order[len(test) :] if train_size is None else _shuffled(train_size, f"{key}:train")
    n_val, n_train = _share(len(rest), num_val, num_train)
    return Carving(test, rest[:n_val], rest[n_val : n_val + n_train], train_size is None)


def _shuffled(size: int, key: str) -> list[int]:
    order = list(range(size))
    random.Random(key).shuffle(order)
    return order


def _share(available: int, num_val: int, num_train: int) -> tuple[int, int]:
    if num_val + num_train <= available:
        return num_val, num_train
    n_val = round(available * num_val / (num_val + num_train))
    return n_val, available - n_val


def load_splits(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    num_train: int = 1000,
    num_val: int = 500,
    num_test: int = 1000,
    seed: int = 0,
    template: bool = True,
    log: Callable[[str], object] = print,
) -> Splits:
    """Sample a task's train / val / test examples.

    ``data_dir`` (else ``$ZOTUNE_DATA_DIR``, else the Hugging Face hub) holds one folder per
    task; ``template=False`` drops the task-aligned prompt (see :mod:`zotune.tasks.specs`).
    Notes on carving and shortfalls go to ``log``, one line each, and into ``Splits.notes``.
    """
    spec = get_task(name)
    for what, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    pools = read_pools(spec, resolve_data_dir(data_dir))
    notes: list[str] = []
    dev = _examples(spec, pools.dev, template)
    if pools.train is None:
        dev = train = _unique(spec, pools.dev, dev, set(), notes)
    else:
        seen = {_input(example) for example in dev}
        train = _unique(spec, pools.train, _examples(spec, pools.train, template), seen, notes)
    carving = carve(
        len(dev),
        None if pools.train is None else len(train),
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        key=f"{spec.name}:{seed}",
    )
    notes.insert(0, _carving_note(spec, pools, carving, num_train, num_val, num_test))
    for note in notes:
        log(note)
    return Splits(
        train=[train[i] for i in carving.train],
        val=[train[i] for i in carving.val],
        test=[dev[i] for i in carving.test],
        notes=notes,
    )


def _examples(spec: TaskSpec, pool: Pool, template: bool) -> list[Example]:
    return [spec.example(record.row, template) for record in pool.records]


def _input(example: Example) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return example.contexts, example.continuations


def _unique(
    spec: TaskSpec,
    pool: Pool,
    examples: list[Example],
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]],
    notes: list[str],
) -> list[Example]:
    """``examples`` minus those whose input (what the model reads) is in ``seen`` or repeats
    an earlier one's; the first of a repeated input is kept, whatever its label."""
    kept = []
    for example in examples:
        key = _input(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    if len(kept) < len(examples):
        notes.append(
            f"{spec.name}: dropped {len(examples) - len(kept)} examples of {pool.name} whose "
            "input repeats another's, so that val, train and test cannot share an input"
        )
    return kept


def _carving_note(
    spec: TaskSpec, pools: Pools, carving: Carving, num_train: int, num_val: int, num_test: int
) -> str:
    dev, train = pools.dev, pools.train
    missing = "test has no labels" + ("" if train is not None else " and there is no train split")
    source = train.name if train is not None else f"the rest of {dev.name}"
    note = f"{spec.name}: {missing}; test = {len(carving.test)} examples of {dev.name}"
    if len(carving.test) < num_test:
        note += f" (all there are; asked {num_test})"
    note += (
        f", val = {len(carving.val)} and train = {len(carving.train)} drawn disjointly "
        f"from {source}"
    )
    if (len(carving.val), len(carving.train)) != (num_val, num_train):
        note += f" (asked {num_val} + {num_train}; shared what there was in proportion)"
    return note

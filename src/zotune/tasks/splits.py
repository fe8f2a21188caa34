"""Sampling train / val / test as the paper's code does, carving what the public data lacks.

ZO-Bench samples ``num_train`` train, ``num_dev`` validation and ``num_eval`` test examples
with ``train_set_seed`` (``zo-bench/run.py``), here ``num_train``, ``num_val``, ``num_test``
and ``data_seed``. The public test splits of GLUE / SuperGLUE / WinoGrande carry no labels,
so, as in MeZO, the official validation split ("dev") becomes the test source and val is
carved out of train.

``zotune tasks --markdown`` lists the files each task reads; what a load got from them is
logged and kept in :attr:`Splits.notes`. The defaults get 1000 train, 1000 test and the task's
declared val size, :attr:`TaskSpec.num_val`: 100 for COPA and WinoGrande (``zo-bench/sweeps``),
100 for CB (MeZO ``large_models/mezo.sh``), else 500.

The rule, ZO-Bench's (``zo-bench/tasks.py::Dataset.sample_train_sets`` and
``sample_subset``; ``zo-bench/run.py::main``): with ``p(n)`` the permutation of ``range(n)``
drawn by ``numpy.random.seed(data_seed); numpy.random.permutation(n)``,

* test = the first ``num_test`` of ``p(len(dev))``;
* the first ``num_train + num_val`` of ``p(len(train))`` are drawn; val is the *last*
  ``num_val`` of them and train the rest. A pool too small for both gives val its full
  ``num_val`` and train what is left (COPA: 400 rows → val 100, train 300, the paper's
  split). A pool too small for val alone is an error when ``num_val`` was asked for; the
  task's default val size scales down to a fifth of the pool instead, on one logged line.

Where no train split exists (a local ``train*`` file, or the hub, which has BoolQ's and
WinoGrande's) val and train are drawn the same way from what test left of ``p(len(dev))``, in
its order (ZO-Bench has no such case). Val and train are disjoint and never meet test: the
pool that feeds them drops every example whose input (contexts and continuations, label
aside) repeats an earlier one's or one of dev's (SST-2's train repeats 371 phrases; WSC's
train, 29 prompts that differ only in span offsets). Where nothing is dropped and the pools are
the hub's in the hub's order (COPA's SuperGLUE files), the draw picks the very examples
ZO-Bench's does. Every carving, shortfall and drop is logged on one line and kept in
:attr:`Splits.notes`.

The permutation comes from a local ``numpy.random.RandomState``, never the global RNG. A
smaller train set is a prefix of a larger one when the pool holds both (val then moves with
``num_train``, as in ZO-Bench). The data seed is apart from the run seed (``train.seed``:
adapter init, batch order, directions), so seeds of a run vary the optimizer with the data
fixed, as ZO-Bench's sweeps do (``--train_set_seed=0`` throughout). MultiRC is sampled per
answer option (MeZO's unit), so val and train may share a paragraph, never an example.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .builtin import get_task
from .errors import TaskDataError
from .example import Example
from .sources import Pool, Pools, read_pools, resolve_data_dir
from .spec import REFERENCE, TaskSpec, check_version

# Where a task's default val size does not fit its data, val takes this fraction (1/N) of it.
VAL_SHARE_OF_SMALL_POOL = 5


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
    seed: int,
) -> Carving:
    """Disjoint, seeded draws; see the module docstring for the rule."""
    dev_order = permutation(dev_size, seed)
    test = dev_order[:num_test]
    rest = dev_order[len(test) :] if train_size is None else permutation(train_size, seed)
    # zo-bench/tasks.py::sample_train_sets draws num_train + num_dev; zo-bench/run.py::main
    # takes dev from the end of the draw and train from the rest.
    drawn = rest[: num_train + num_val]
    n_val = min(num_val, len(drawn))
    val = drawn[len(drawn) - n_val :]
    return Carving(test, val, drawn[: len(drawn) - n_val], train_size is None)


def carve_by_group(
    groups: list, *, num_train: int, num_val: int, num_test: int, seed: int
) -> Carving:
    """Test, val and train from one pool so that no group (SQuAD: an article, hence no
    paragraph) is in two splits.

    The groups, in first-appearance order, are permuted with ``seed``; test takes whole
    groups in that order until it holds ``num_test`` examples, val the next ones until it
    holds ``num_val``, train the rest. Each split then keeps the first ``num_*`` of its
    examples in the seeded permutation of their count (ZO-Bench's draw within a split).
    """
    names = list(dict.fromkeys(groups))
    members: dict = {name: [] for name in names}
    for index, group in enumerate(groups):
        members[group].append(index)
    order = [names[i] for i in permutation(len(names), seed)]
    pools: list[list[int]] = [[], [], []]
    stage = 0
    for name in order:
        while stage < 2 and len(pools[stage]) >= (num_test, num_val)[stage]:
            stage += 1
        pools[stage].extend(members[name])
    test, val, train = (
        [pool[i] for i in permutation(len(pool), seed)[:wanted]]
        for pool, wanted in zip(pools, (num_test, num_val, num_train), strict=True)
    )
    return Carving(test, val, train, shared=True)


def permutation(size: int, seed: int) -> list[int]:
    """ZO-Bench's draw (zo-bench/tasks.py::sample_subset under zo-bench/utils.py::temp_seed):
    ``numpy.random.seed(seed); numpy.random.permutation(size)``, from a local generator."""
    return np.random.RandomState(seed).permutation(size).tolist()


def load_splits(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    num_train: int = 1000,
    num_val: int | None = None,
    num_test: int = 1000,
    seed: int = 0,
    template: bool = True,
    template_version: str = REFERENCE,
    log: Callable[[str], object] = print,
) -> Splits:
    """Sample a task's train / val / test examples.

    ``data_dir`` (else ``$ZOTUNE_DATA_DIR``, else the Hugging Face hub) holds one folder per
    task; ``num_val=None`` takes the task's declared val size; ``seed`` is the data seed
    (ZO-Bench's ``train_set_seed``); ``template=False`` drops the task-aligned prompt and
    ``template_version`` names the aligned one (see :mod:`zotune.tasks.templates`). Notes on
    carving and shortfalls go to ``log``, one line each, and into ``Splits.notes``.
    """
    spec = get_task(name)
    check_version(template_version)
    asked_val = num_val
    if num_val is None:
        num_val = spec.num_val
    for what, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"data seed must be an integer in [0, 2**32), got {seed!r}")
    pools = read_pools(spec, resolve_data_dir(data_dir))
    notes: list[str] = []

    def examples(pool: Pool) -> list[Example]:
        return [spec.example(record.row, template, template_version) for record in pool.records]

    dev = examples(pools.dev)
    counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "seed": seed}
    if pools.train is None:
        kept = _unique(spec, pools.dev, dev, set(), notes)
        dev = train = [dev[i] for i in kept]
        if asked_val is None and spec.group_field is None:
            counts["num_val"] = num_val = _fitting_val(
                spec, num_val, len(dev) - min(num_test, len(dev)), f"the rest of {pools.dev.name}",
                notes,
            )
        if spec.group_field is not None:
            groups = [pools.dev.records[i].row[spec.group_field] for i in kept]
            carving = carve_by_group(groups, **counts)
        else:
            carving = carve(len(dev), None, **counts)
    else:
        seen = {_input(example) for example in dev}
        train_all = examples(pools.train)
        train = [train_all[i] for i in _unique(spec, pools.train, train_all, seen, notes)]
        if asked_val is None:
            counts["num_val"] = num_val = _fitting_val(
                spec, num_val, len(train), pools.train.name, notes
            )
        carving = carve(len(dev), len(train), **counts)
    if num_train > 0 and not carving.train:
        source = pools.train.name if pools.train is not None else f"the rest of {pools.dev.name}"
        raise TaskDataError(
            f"{spec.name}: val takes all {len(carving.val)} examples left in {source} "
            f"(num_val={num_val}), none are left for train; ask for a smaller num_val"
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


def _fitting_val(
    spec: TaskSpec, num_val: int, pool: int, source: str, notes: list[str]
) -> int:
    """The default val size, scaled down where it would leave train nothing (a small task
    file): a fifth of the ``pool``, at least 1. Where train keeps one example the paper's
    rule stands (val its full size, train the rest); an asked-for ``num_val`` is never
    changed."""
    if pool > num_val:
        return num_val
    fitted = max(1, pool // VAL_SHARE_OF_SMALL_POOL)
    notes.append(
        f"{spec.name}: val = {fitted} of the {pool} examples in {source} (the default "
        f"num_val={num_val} does not fit; --num-val sets it)"
    )
    return fitted


def _input(example: Example) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return example.contexts, example.continuations


def _unique(
    spec: TaskSpec,
    pool: Pool,
    examples: list[Example],
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]],
    notes: list[str],
) -> list[int]:
    """The indices of ``examples`` minus those whose input (what the model reads) is in
    ``seen`` or repeats an earlier one's; the first of a repeated input is kept, whatever its
    label."""
    kept = []
    for index, example in enumerate(examples):
        key = _input(example)
        if key not in seen:
            seen.add(key)
            kept.append(index)
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
    # A task file names only labelled files: its test comes from dev because it has none.
    missing = "no test file" if spec.source is not None else "test has no labels"
    missing += "" if train is not None else " and there is no train split"
    if spec.group_field is not None and train is None:
        missing = f"only {dev.name} is here (no train split)"
    source = train.name if train is not None else f"the rest of {dev.name}"
    note = f"{spec.name}: {missing}; test = {len(carving.test)} examples of {dev.name}"
    if spec.group_field is not None and train is None:
        note += f" (whole {spec.group_field}s: no {spec.group_field} is in two splits)"
    if len(carving.test) < num_test:
        note += f" (all there are; asked {num_test})"
    note += (
        f", val = {len(carving.val)} and train = {len(carving.train)} drawn disjointly "
        f"from {source}"
    )
    if (len(carving.val), len(carving.train)) != (num_val, num_train):
        note += f" (asked {num_val} + {num_train}; val first, train the rest)"
    return note

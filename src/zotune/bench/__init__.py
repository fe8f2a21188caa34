"""The benchmark: suites of runs, a resumable runner, a results store, and the report.

Data flows one way::

    suite YAML ──expand──▶ RunSpecs ──runner (one subprocess each)──▶ results.sqlite
                                                                        │
                                         report (select on val, test once) ◀┘

``zotune bench SUITE`` runs a suite (built-in name or YAML path); ``zotune report DIR`` writes
the tables and plots; ``zotune compare`` and :mod:`.findings` test cells against each other;
:mod:`.recipes` turns each scheme's best cells into the commands that run them.
The profiler (``zotune profile``) is :mod:`zotune.profiling`.

This package imports only :mod:`.suite`, for the names below. Reading results needs no
torch: the report, findings, recipes, comparison and index modules load without it (a profile's
figures import it when a report is given one); the runner, :mod:`.fidelity` and
:mod:`.backfill` read the optimizer, checkpoint and task code, which do. The training happens
in the worker process (or, with ``--ray``, in a Ray task that calls the same worker function).
"""

from .suite import Cell, RunSpec, Suite, SuiteError, builtin_suites, load_suite

__all__ = ["Cell", "RunSpec", "Suite", "SuiteError", "builtin_suites", "load_suite"]

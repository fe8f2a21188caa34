"""Test predictions for records written before runs kept them, derived exactly.

    python -m zotune.bench.backfill STORE [STORE ...]

A run now records the candidate it gave each test example (``test_predictions``), which lets
the report mark a constant predictor (:mod:`zotune.bench.selection`). Older records hold
each example's score only (``test_scores``: 1 right, 0 wrong). Where every test example has
exactly two candidates and one right answer (SST-2, COPA, WinoGrande, ...), the score
determines the prediction: the label when right, the other candidate when wrong. This reads
the run's test split (its recorded config, the data under ``ZOTUNE_DATA_DIR``) and adds the
predictions so derived to the record, leaving its attempts and every other metric as they
were. Records of other tasks (more candidates, several right answers, generation) are left
alone and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import config_from
from ..tasks.example import Example
from ..training.run import load_task_splits
from .store import ResultsStore


def derived_predictions(examples: Sequence[Example], scores: Sequence[float]) -> list[int] | None:
    """Each example's predicted candidate from its 0/1 score; None unless every example has
    two candidates and one right answer, and every score is 0 or 1, one per example."""
    if len(examples) != len(scores):
        return None
    predictions = []
    for example, score in zip(examples, scores, strict=True):
        if example.num_candidates != 2 or example.correct or example.generation:
            return None
        if score not in (0.0, 1.0):
            return None
        predictions.append(example.label if score == 1.0 else 1 - example.label)
    return predictions


def backfill(results_dir: Path, log: Callable[[str], None] = print) -> tuple[int, int]:
    """Add derived ``test_predictions`` to the store's finished records that lack them;
    returns (records amended, records left as they were)."""
    amended = left = 0
    splits: dict[str, list[Example] | None] = {}
    with ResultsStore(results_dir, create=False) as store:
        for record in store.records():
            metrics = record.metrics or {}
            if (record.status != "done" or metrics.get("test_predictions")
                    or metrics.get("metric", "accuracy") != "accuracy"
                    or not metrics.get("test_scores")):
                continue
            key = json.dumps(record.config["task"], sort_keys=True)
            if key not in splits:
                config = config_from(record.config)
                splits[key] = list(load_task_splits(config, lambda message: None).test)
            predictions = derived_predictions(splits[key], metrics["test_scores"])
            if predictions is None:
                left += 1
                continue
            store.amend_metrics(record.id, {"test_predictions": predictions})
            amended += 1
    log(f"{results_dir}: test predictions derived for {amended} records; {left} left as they "
        "were (not two candidates with one right answer)")
    return amended, left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zotune.bench.backfill",
        description="Derive test predictions for records written before runs kept them.",
    )
    parser.add_argument("stores", nargs="+", help="results folders")
    args = parser.parse_args(argv)
    try:
        for store in args.stores:
            backfill(Path(store))
    except (ValueError, OSError) as error:
        print(f"zotune: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

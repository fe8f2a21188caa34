"""``zotune quickstart``: train, evaluate and export a tiny random model end to end, in
seconds, with nothing downloaded.

It writes a small sentiment task (a task file and its rows, :mod:`zotune.tasks.taskfile`)
into a fresh run folder, fine-tunes a random tiny LLaMA on it with ZO-Adam, measures test
accuracy before and after, exports the kept checkpoint and prints what it did and where
everything is. The model is random and tiny, so its accuracy says that the pipeline works,
not what zotune does on a real model (``make demo`` is that).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from ..config import RunConfig, build_config

QUICKSTART_ROOT = Path("runs")
TASK_FILE = "task/reviews.yaml"
MODEL_FOLDER = "model"
RUN_FOLDER = "run"

TASK_YAML = """\
name: reviews
data: {dev: reviews-dev.jsonl, train: reviews-train.jsonl}
template: "{review} It was"
candidates: [" terrible", " great"]
label_field: label
labels: {neg: 0, pos: 1}
"""

POSITIVE = ("great fun", "a joy", "warm and witty", "simply lovely", "a real delight")
NEGATIVE = ("a dull mess", "so tedious", "flat and slow", "truly awful", "a painful bore")

# Chosen by a short sweep on the random tiny LLaMA (seed 0, 150 steps): ZO-SGD at lr 0.03-0.2
# ended a constant predictor or left test where it was; ZO-Adam at 3e-3 lifted test accuracy
# 52.5% -> 73.8% in about 10 s. tests/test_quickstart.py checks that it learns.
RECIPE: dict[str, dict] = {
    "model": {"name": "random:tiny-llama"},
    "task": {"num_train": 200, "num_val": 40, "num_test": 80},
    "tuning": {"scheme": "full"},
    "optimizer": {"name": "zo-adam", "lr": 3e-3, "eps": 1e-3},
    "train": {"steps": 150, "batch_size": 16, "eval_every": 50, "eval_test_before": True},
}
# A 39k-parameter model gains nothing from threads, and on a busy machine they cost it up to
# 50x in step time (7.6 s vs 0.13 s per step measured side by side on 2 shared cores).
QUICKSTART_THREADS = 1


def review_rows(count: int, seed: int) -> list[dict]:
    """Rows whose label follows from the phrase, numbered so that no two inputs repeat."""
    generator = random.Random(seed)
    rows = []
    for index in range(count):
        positive = generator.random() < 0.5
        phrase = generator.choice(POSITIVE if positive else NEGATIVE)
        rows.append({"review": f"{phrase} ({seed}-{index})", "label": "pos" if positive else
                     "neg"})
    return rows


def write_task(folder: Path) -> Path:
    """The task file and its rows under ``folder``; returns the task file."""
    task = folder / TASK_FILE
    task.parent.mkdir(parents=True, exist_ok=True)
    task.write_text(TASK_YAML)
    for name, count, seed in (("reviews-dev.jsonl", 120, 1), ("reviews-train.jsonl", 300, 2)):
        rows = review_rows(count, seed)
        (task.parent / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return task


def fresh_folder(root: Path, prefix: str) -> Path:
    """``root/prefix-N`` for the smallest N ≥ 1 not yet taken: each run gets its own."""
    number = 1
    while (root / f"{prefix}-{number}").exists():
        number += 1
    return root / f"{prefix}-{number}"


def quickstart_config(folder: Path, steps: int | None = None) -> RunConfig:
    recipe = {section: dict(values) for section, values in RECIPE.items()}
    recipe["task"]["name"] = str(folder / TASK_FILE)
    recipe["train"]["output_dir"] = str(folder / RUN_FOLDER)
    if steps is not None:
        recipe["train"]["steps"] = steps
        recipe["train"]["eval_every"] = max(1, min(recipe["train"]["eval_every"], steps))
    return build_config(recipe)


def run_quickstart(root: Path = QUICKSTART_ROOT, steps: int | None = None) -> Path:
    """Train, evaluate and export into a fresh ``root/quickstart-N``; returns that folder."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(QUICKSTART_THREADS)
    try:
        return _quickstart(root, steps)
    finally:
        torch.set_num_threads(threads)


def _quickstart(root: Path, steps: int | None) -> Path:
    from ..models.export import export_run
    from ..training.train import finetune

    folder = fresh_folder(root, "quickstart")
    task = write_task(folder)
    config = quickstart_config(folder, steps)
    say = print
    say(f"zotune quickstart: a random tiny LLaMA, ZO-Adam on a {len(POSITIVE) * 2}-phrase "
        f"sentiment task, in {folder}")
    say(f"  task file  {task} (check it: zotune tasks --check {task})")
    sys.stdout.flush()
    result = finetune(config)
    model = export_run(config.train.output_dir, folder / MODEL_FOLDER,
                       allow_untrained=bool(result.untrained))
    before, after = result.test_accuracy_before, result.test_accuracy
    say(f"  trained    {result.steps} ZO-Adam steps, {result.train_seconds:.0f} s; test "
        f"accuracy {before:.1%} -> {after:.1%} (best validation checkpoint, step "
        f"{result.best_step})")
    if result.untrained:
        say(f"  WARNING    {result.untrained}")
    say(f"  run folder {config.train.output_dir} (config.yaml, metrics.jsonl, best.pt, "
        "result.json)")
    say(f"  model      {model} (AutoModelForCausalLM.from_pretrained, with its model card)")
    say("next: make demo fine-tunes the real embedded model (SmolLM2-135M) on SST-2; "
        "README.md, 'Use it from Python', shows the same in code")
    return folder

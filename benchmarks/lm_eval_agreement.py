"""Does lm-evaluation-harness score a zotune export as zotune does? One run, both evaluators.

Exports RUN_DIR with ``--lm-eval-task`` into a work folder, runs the ``lm_eval`` command its
model card gives (as written, plus device, batch size and sample logging; offline), once per
``--precision``: ``card`` (the card's command: float32 for half-precision weights) and
``native`` (the same without ``dtype=float32``, so lm-eval computes in the weights' dtype).
Then scores the same checkpoint with zotune in the same precision as each lm-eval run, each
candidate's token log-probabilities summed (lm-eval's ranking), and writes a Markdown page:
each accuracy, the examples the two rank differently, the largest and median difference of the
candidates' log-likelihoods, and the ties lm-eval's scores hold.

    ZOTUNE_DATA_DIR=../shared/datasets python benchmarks/lm_eval_agreement.py runs/demo-1 \\
        --out docs/results/demo/lm-eval.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zotune.config import load_config
from zotune.evaluation.lm_eval_task import (
    FOLDER,
    ranked_accuracy,
    read_samples,
    summed_loglikelihoods,
)
from zotune.models.export import CARD_FILE, export_run
from zotune.training.run_folder import CONFIG_FILE
from zotune.utils.environment import hardware_description
from zotune.utils.files import atomic_write_text


def card_command(folder: Path) -> list[str]:
    lines = [line for line in (folder / CARD_FILE).read_text().splitlines()
             if line.startswith("lm_eval ")]
    if len(lines) != 1:
        raise SystemExit(f"{folder / CARD_FILE}: {len(lines)} lm_eval commands (expected one)")
    return shlex.split(lines[0])


def run_lm_eval(command: list[str], out: Path, batch_size: int) -> float:
    """Run the command; lm-eval's accuracy (its samples stay under ``out``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", *command[1:], "--device", "cpu", "--batch_size",
         str(batch_size), "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lm_eval failed:\n{done.stderr[-3000:]}")
    (results,) = out.rglob("results_*.json")
    task = command[command.index("--tasks") + 1]
    return json.loads(results.read_text())["results"][task]["acc,none"]


def without_float32(command: list[str]) -> list[str]:
    index = command.index("--model_args") + 1
    args = [a for a in command[index].split(",") if a != "dtype=float32"]
    return [*command[:index], ",".join(args), *command[index + 1:]]


def compare(ours, theirs, labels) -> dict:
    """lm-eval's scores (``theirs``) against zotune's (``ours``) on the same examples."""
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
              if max(range(len(a)), key=a.__getitem__) != max(range(len(b)), key=b.__getitem__)]
    pairs = zip(ours, theirs, strict=True)
    gaps = [abs(x - y) for a, b in pairs for x, y in zip(a, b, strict=True)]
    return {
        "accuracy": ranked_accuracy(theirs, labels),
        "zotune_accuracy": ranked_accuracy(ours, labels),
        "rank_otherwise": len(differ),
        "max_abs_difference": max(gaps),
        "median_abs_difference": statistics.median(gaps),
        "ties": sum(len(set(s)) < len(s) for s in theirs),
    }


def page(run_dir: Path, result: dict, rows: dict, labels, dtypes: dict, command: str,
         seconds: float) -> str:
    n = len(labels)
    lines = [
        "# lm-evaluation-harness on an exported run",
        "",
        f"reproduce: `{command}`",
        "",
        f"Run `{run_dir}` (its own evaluation: test accuracy "
        f"{result['test_accuracy'] * 100:.1f}% on {n} examples, in the run's dtype, candidates "
        "ranked as the run's `task.reduction` says), exported with `zotune export "
        "--lm-eval-task` and scored by lm-eval with the command its card gives, beside zotune's "
        "scores of the same checkpoint in the same precision, candidates ranked by their summed "
        f"log-likelihood as lm-eval's `acc` ranks; {hardware_description('cpu')}, "
        f"{seconds / 60:.0f} min in all.",
        "",
        "| lm-eval run | precision | lm-eval acc (%) | zotune acc (%) | examples ranked "
        "otherwise | max abs Δ log-likelihood | median abs Δ | examples whose candidates tie "
        "in lm-eval |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {dtypes[name]} | {row['accuracy'] * 100:.1f} | "
                     f"{row['zotune_accuracy'] * 100:.1f} | {row['rank_otherwise']} of {n} "
                     f"| {row['max_abs_difference']:.2g} | {row['median_abs_difference']:.2g} "
                     f"| {row['ties']} |")
    lines += ["", "`card`: the card's command (half-precision weights scored in float32); "
              "`native`: the same without `dtype=float32`, lm-eval in the weights' dtype.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished `zotune train` run folder")
    parser.add_argument("--out", type=Path, help="the Markdown page to write")
    parser.add_argument("--precision", default="card,native",
                        help="comma-separated: card, native (default: both)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, help="keep the export and lm-eval's output here")
    args = parser.parse_args(argv)
    precisions = args.precision.split(",")
    if not set(precisions) <= {"card", "native"}:
        parser.error(f"--precision: {args.precision!r} (choose from card, native)")
    result = json.loads((args.run_dir / "result.json").read_text())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        folder = export_run(args.run_dir, work / "export", lm_eval_task=True)
        command = card_command(folder)
        task = command[command.index("--tasks") + 1].removeprefix("zotune_")
        labels = [json.loads(line)["label"] for line in
                  (folder / FOLDER / f"zotune_{task}.jsonl").read_text().splitlines()]
        native = load_config(args.run_dir / CONFIG_FILE).model.dtype
        card = "float32" if "dtype=float32" in " ".join(command) else native
        dtypes = {"card": card, "native": native}
        rows = {}
        for name in precisions:
            ours = summed_loglikelihoods(args.run_dir, dtype=dtypes[name])
            run = command if name == "card" else without_float32(command)
            run_lm_eval(run, work / f"lm-eval-{name}", args.batch_size)
            rows[name] = compare(ours, read_samples(work / f"lm-eval-{name}", task), labels)
            print(f"{name}: lm-eval acc {rows[name]['accuracy']:.4f}, "
                  f"{rows[name]['rank_otherwise']} ranked otherwise", flush=True)
    text = page(args.run_dir, result, rows, labels, dtypes,
                "python benchmarks/lm_eval_agreement.py " + " ".join(argv or sys.argv[1:]),
                time.perf_counter() - start)
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

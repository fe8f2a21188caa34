"""Forward and ZO-SGD step time, and peak memory, in fp32, bf16 weights and fp32 + autocast.

    taskset -c 1 python benchmarks/half_precision.py [--repeats 3] [--model smollm2-135m] \
        [--batch-size 16] [--seq-len 48] [--threads 1] [--json PATH]

For each precision — ``float32``, ``bfloat16`` (weights in bf16, ZO updates stochastically
rounded) and ``autocast-bfloat16`` (fp32 weights, bf16 compute under ``torch.autocast``) —
two measurements of :func:`zotune.profiling.measurement.measure_isolated`, each in a fresh
process: ``inference`` (one forward of the last-position loss) and ``zo-sgd`` (a full-tuning
step: two forwards, three passes over the weights). Each is repeated ``--repeats`` times, the
precisions interleaved, so a load change on a shared machine hits all of them alike.
``zotune profile --optimizers inference,zo-sgd --dtype float32,bfloat16,autocast-bfloat16``
takes the same measurements once each; this script adds the repeats and the ranges.

Reported per precision: the median and the range (min–max) of all timed calls over the
repeats (``--steps`` each), the ratio of medians to fp32, and the peak memory
(:attr:`zotune.profiling.spec.ProfileResult.memory_bytes`: the weights + what a step adds
to the resident set of the loaded model; median over repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from zotune.profiling.measurement import measure_isolated
from zotune.profiling.spec import ProfileSpec
from zotune.utils.measure import MB

PRECISIONS = {
    "float32": ("float32", None),
    "bfloat16": ("bfloat16", None),
    "autocast-bfloat16": ("float32", "bfloat16"),
}
METHODS = ("inference", "zo-sgd")


def run(args: argparse.Namespace) -> dict:
    seconds: dict[tuple[str, str], list[float]] = {}
    memory: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for precision, (dtype, autocast) in PRECISIONS.items():
            for method in METHODS:
                spec = ProfileSpec(
                    method=method,
                    model=args.model,
                    batch_size=args.batch_size,
                    seq_len=args.seq_len,
                    dtype=dtype,
                    autocast=autocast,
                    steps=args.steps,
                    threads=args.threads,
                )
                result = measure_isolated(spec)
                seconds.setdefault((precision, method), []).extend(result.step_seconds)
                memory.setdefault((precision, method), []).append(result.memory_bytes / MB)
                print(
                    f"[{repeat + 1}/{args.repeats}] {precision} {method}: "
                    f"{result.seconds_per_step:.3f} s, {result.memory_bytes / MB:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
    rows = []
    for precision in PRECISIONS:
        row = {"precision": precision}
        for method in METHODS:
            times = seconds[(precision, method)]
            base = statistics.median(seconds[("float32", method)])
            peak = statistics.median(memory[(precision, method)])
            base_peak = statistics.median(memory[("float32", method)])
            row[method] = {
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "calls": len(times),
                "time_vs_fp32": statistics.median(times) / base,
                "peak_mb": peak,
                "peak_vs_fp32": peak / base_peak,
            }
        rows.append(row)
    return {"setup": vars(args), "rows": rows}


def table(payload: dict) -> str:
    lines = [
        "| precision | forward s (range) | × fp32 | ZO-SGD step s (range) | × fp32 "
        "| step peak MB | × fp32 | forward peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        fwd, step = row["inference"], row["zo-sgd"]
        lines.append(
            f"| {row['precision']} "
            f"| {fwd['median_s']:.3f} ({fwd['min_s']:.3f}–{fwd['max_s']:.3f}) "
            f"| {fwd['time_vs_fp32']:.2f} "
            f"| {step['median_s']:.3f} ({step['min_s']:.3f}–{step['max_s']:.3f}) "
            f"| {step['time_vs_fp32']:.2f} "
            f"| {step['peak_mb']:.0f} | {step['peak_vs_fp32']:.2f} | {fwd['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results as JSON")
    args = parser.parse_args(argv)
    for name in ("batch_size", "seq_len", "steps", "repeats", "threads"):
        value = getattr(args, name)
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    payload = run(args)
    print(table(payload))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

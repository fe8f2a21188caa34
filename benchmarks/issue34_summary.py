"""The summary page of ``benchmarks/issue34_rows.sh``: issue 34's targets against the step-cost
rows it measured, the demo's wall time and accuracies, and whether compiling pays off there.

    python benchmarks/issue34_summary.py FOLDER --demo-seconds S --demo-command C --script C \
        [--compiled-demo-seconds S]

Reads FOLDER/step-cost.json (``zotune profile --step-cost --json``) and, when the demo ran,
FOLDER/demo-result.json (the run folder's result.json), and FOLDER/demo-compiled-result.json
when the same demo was also run with ``--compile`` (its wall time in --compiled-demo-seconds:
then the demo's compile decision is the two measured wall times, not the step-cost
extrapolation); writes FOLDER/README.md and
FOLDER/summary.json. Every figure comes from those files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
from pathlib import Path

# (method, compiled, what is compared, limit): issue 34's targets, checked for each bf16
# precision measured (bfloat16, or bfloat16+matmul=native and +matmul=float32 side by side).
TARGETS = (
    ("zo-sgd", False, "ratio", 1.10),
    ("zo-sgd-mmt", False, "ratio", 1.30),
    ("zo-adam", False, "ratio", 1.30),
    ("zo-sgd", True, "compiled_over_eager", 0.75),
)
WHAT = {"ratio": "T_step / (2·T_fwd)", "compiled_over_eager": "T_step / eager bf16 T_step"}


def bf16_precisions(rows: dict[tuple[str, str], dict]) -> list[str]:
    """The eager bf16 precisions measured, in their order: ``bfloat16`` or its matmul modes."""
    return list(dict.fromkeys(
        precision for _, precision in rows
        if precision.startswith("bfloat16") and not precision.endswith("+compile")
    ))


def target_rows(rows: dict[tuple[str, str], dict]) -> list[dict]:
    """Each target, for each bf16 precision, with its measured value and whether it holds
    (None: row not measured)."""
    found = []
    for base in bf16_precisions(rows) or ["bfloat16"]:
        for method, compiled, key, limit in TARGETS:
            precision = base + "+compile" if compiled else base
            found.append(_target(rows, method, precision, key, limit))
    return found


def _target(rows, method: str, precision: str, key: str, limit: float) -> dict:
    row = rows.get((method, precision))
    value = None if row is None else row.get(key)
    return {
        "method": method, "precision": precision, "measure": WHAT[key], "limit": limit,
        "value": value, "holds": None if value is None else value <= limit,
    }


CPU_SUITE = Path(__file__).resolve().parent.parent / "src/zotune/bench/suites/cpu.yaml"


def cpu_suite_steps() -> int | None:
    """The ZO steps of each run of the ``cpu`` suite (its base recipe), None if unreadable."""
    try:
        import yaml

        return int(yaml.safe_load(CPU_SUITE.read_text())["base"]["train"]["steps"])
    except Exception:  # no yaml in this interpreter, or the suite moved: say undecided
        return None


def compile_decision(
    rows: dict[tuple[str, str], dict], demo_steps: int | None, base: str = "bfloat16"
) -> dict:
    """Whether compiling a run's bf16 ZO-SGD forward (precision ``base``) wins back its
    compile time within the run's ``demo_steps`` steps (evaluation forwards, also compiled,
    are left out: the call errs towards eager)."""
    row = rows.get(("zo-sgd", base + "+compile"))
    if row is None or row.get("eager_seconds") is None:
        return {"pays_off": None, "why": "no compiled bf16 ZO-SGD row beside an eager one"}
    amortise = row.get("steps_to_amortise")
    saved = row["eager_seconds"] - row["seconds_per_step"]
    decision = {
        "compile_seconds": row["compile_seconds"],
        "seconds_saved_per_step": saved,
        "steps_to_amortise": amortise,
        "demo_steps": demo_steps,
    }
    if amortise is None:
        return {**decision, "pays_off": False, "why": "the compiled step is not faster"}
    if demo_steps is None:
        return {**decision, "pays_off": None, "why": "the run's step count is unknown"}
    net = demo_steps * saved - row["compile_seconds"]
    pays = amortise <= demo_steps
    why = (f"{row['compile_seconds']:.0f} s of compiling is won back after {amortise:.0f} "
           f"steps; the run makes {demo_steps}, net {net:+.0f} s")
    return {**decision, "net_seconds_over_demo": net, "pays_off": pays, "why": why}


def measured_demo_decision(eager_seconds: float, compiled_seconds: float, eager: dict,
                           compiled: dict) -> dict:
    """Whether ``--compile`` pays off for the demo, from the demo run both ways: its wall
    times (compiling, every evaluation and training included) and steps."""
    pays = compiled_seconds < eager_seconds
    why = (f"measured: the whole demo took {compiled_seconds:.0f} s compiled against "
           f"{eager_seconds:.0f} s eager ({compiled['seconds_per_step']:.2f} against "
           f"{eager['seconds_per_step']:.2f} s a step; test accuracy "
           f"{compiled['test_accuracy']:.1%} against {eager['test_accuracy']:.1%})")
    return {"pays_off": pays, "why": why, "eager_wall_seconds": eager_seconds,
            "compiled_wall_seconds": compiled_seconds}


def matmul_speedups(rows: dict[tuple[str, str], dict]) -> dict[str, float]:
    """Per method: its bf16 step with products in fp32 (``+matmul=float32``) over the same
    step with native bf16 products; empty when the two were not measured side by side."""
    found = {}
    for (method, precision), row in rows.items():
        if precision == "bfloat16+matmul=float32":
            native = rows.get((method, "bfloat16+matmul=native"))
            if native is not None:
                found[method] = row["seconds_per_step"] / native["seconds_per_step"]
    return found


def fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--demo-seconds", type=float, default=math.nan)
    parser.add_argument("--compiled-demo-seconds", type=float, default=math.nan)
    parser.add_argument("--compiled-demo-command", default="")
    parser.add_argument("--demo-command", default="")
    parser.add_argument("--script", required=True)
    args = parser.parse_args()
    cost = json.loads((args.folder / "step-cost.json").read_text())
    rows = {(r["method"], r["precision"]): r for r in cost["rows"]}
    demo_file = args.folder / "demo-result.json"
    demo = json.loads(demo_file.read_text()) if demo_file.is_file() else None
    demo_steps = None if demo is None else demo["steps"]
    targets = target_rows(rows)
    # The compile decision for the precision a run gets by default: the last bf16 one listed
    # (issue34_rows.sh lists matmul=native, then matmul=float32, what auto picks here).
    base = (bf16_precisions(rows) or ["bfloat16"])[-1]
    decision = compile_decision(rows, demo_steps, base)
    compiled_file = args.folder / "demo-compiled-result.json"
    compiled = (json.loads(compiled_file.read_text())
                if compiled_file.is_file() and not math.isnan(args.compiled_demo_seconds)
                else None)
    if compiled is not None and demo is not None:
        decision = measured_demo_decision(args.demo_seconds, args.compiled_demo_seconds,
                                          demo, compiled)
    suite_steps = cpu_suite_steps()
    suite_decision = compile_decision(rows, suite_steps, base)
    speedups = matmul_speedups(rows)
    load = os.getloadavg()
    summary = {
        "script": args.script,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"setup": cost["setup"], "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1_5_15_min_at_end": load},
        "step_cost_command": cost.get("command"),
        "targets": targets,
        "fp32_products_over_native": speedups,
        "compile_precision": base,
        "compile_for_demo": decision,
        "compile_for_cpu_suite_run": suite_decision,
        "demo": None if demo is None else {
            "command": args.demo_command,
            "wall_seconds": args.demo_seconds,
            "steps": demo_steps,
            "seconds_per_step": demo["seconds_per_step"],
            "test_accuracy_before": demo["test_accuracy_before"],
            "test_accuracy": demo["test_accuracy"],
            "best_val_accuracy": demo["best_val_accuracy"],
            "test_examples": demo["test_examples"],
        },
    }
    (args.folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    lines = [
        "# Issue 34: bf16 step rows, compiled rows, the demo on one core", "",
        f"Measured with `{args.script}` on {summary['date_utc']}.", "",
        f"Machine: {cost['setup']}; {os.cpu_count()} CPUs; load average (1, 5, 15 min) at the "
        f"end {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.", "",
        "## Targets", "",
        "| method | precision | measure | measured | target | holds |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for t in targets:
        holds = "–" if t["holds"] is None else "yes" if t["holds"] else "**no**"
        lines.append(f"| {t['method']} | {t['precision']} | {t['measure']} | {fmt(t['value'])} "
                     f"| ≤ {t['limit']:.2f} | {holds} |")
    lines += ["", f"All rows: [step-cost.md](step-cost.md) (`{cost.get('command')}`).", ""]
    if speedups:
        lines += ["## Products in fp32 from bf16 weights (`model.matmul`)", "",
                  "Each bf16 step with `--matmul float32` over the same step with native bf16 "
                  "products: " + ", ".join(f"{m} {v:.2f}" for m, v in speedups.items())
                  + " (below 1: faster).", ""]
    lines += [f"## Compiling the demo's forward ({base})", ""]
    if "compile_seconds" in decision:
        lines.append(
            f"Compile time {decision['compile_seconds']:.1f} s (empty inductor cache); the "
            f"compiled bf16 ZO-SGD step saves {decision['seconds_saved_per_step']:.3f} s; "
            f"it pays off after {fmt(decision['steps_to_amortise'], 0)} steps.")
    verdict = {True: "pays off", False: "does not pay off", None: "undecided"}
    lines += [f"- `make demo`: {verdict[decision['pays_off']]} ({decision['why']}).",
              f"- each run of the `cpu` suite ({suite_steps} ZO steps, its own process, so its "
              f"own compile): {verdict[suite_decision['pays_off']]} ({suite_decision['why']}).",
              "", "Savings measured at the step-cost threads (above); the demo below runs on one "
              "core. Evaluation forwards, compiled too, are not counted.", ""]
    if demo is not None:
        lines += [
            "## `make demo` on one core", "",
            f"`{args.demo_command}`: wall time {args.demo_seconds:.0f} s "
            f"({args.demo_seconds / 60:.1f} min), {demo_steps} steps at "
            f"{demo['seconds_per_step']:.2f} s/step; test accuracy "
            f"{demo['test_accuracy_before']:.1%} zero-shot → {demo['test_accuracy']:.1%} "
            f"({demo['test_examples']} examples; best validation {demo['best_val_accuracy']:.1%}). "
            "Output: [demo.log](demo.log), [demo-result.json](demo-result.json).", "",
        ]
    if demo is not None and compiled is not None:
        lines += [
            f"The same recipe compiled, `{args.compiled_demo_command}` (empty inductor cache): "
            f"wall time {args.compiled_demo_seconds:.0f} s "
            f"({args.compiled_demo_seconds / 60:.1f} min), {compiled['seconds_per_step']:.2f} "
            f"s/step; test accuracy {compiled['test_accuracy']:.1%}. Output: "
            "[demo-compiled.log](demo-compiled.log), "
            "[demo-compiled-result.json](demo-compiled-result.json).", "",
        ]
    (args.folder / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

"""``zotune profile``: its command-line arguments and what it does with them.

:func:`add_arguments` declares the flags on the ``profile`` subparser; :func:`run` checks
their combination (one-line errors, before anything is measured), then measures
(:mod:`zotune.profiling.measurement`), times the step cost (:mod:`.step_cost`) or only
estimates (:mod:`.estimates`), and prints and writes the results; ``--from-json`` renders
saved results without measuring.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .spec import DEFAULT_MODEL

HELP = "peak memory and time per step of each optimizer (or --step-cost)"
DESCRIPTION = (
    "zotune profile: per optimizer and scheme, peak memory and median time per step on a "
    "synthetic B x T batch, beside the analytic estimate; --seq-lens sweeps the sequence "
    "length; --step-cost times ZO steps against forwards and a MeZO-style reference step"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``zotune profile`` flags."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, folder, or random:<shape> (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--optimizers", help="comma-separated; also inference, mezo-ref (default: all); "
        "with --step-cost, which of its rows (e.g. zo-sgd,zo-sgd-mmt,zo-adam)"
    )
    parser.add_argument("--schemes", help="comma-separated tuning schemes (default: full)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument(
        "--micro-batch-size",
        type=int,
        help="rows per forward: the batch goes through in parts, as a training run's "
        "--micro-batch-size (default: the whole batch at once)",
    )
    parser.add_argument(
        "--seq-lens",
        help="comma-separated: memory against sequence length (zo-sgd, fo-sgd, "
        "fo-adam unless --optimizers)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        help="comma-separated precisions, rows side by side: float32, bfloat16, float16 "
        "(the weights' dtype), autocast-bfloat16, autocast-float16 (fp32 weights, "
        "half-precision compute); default float32",
    )
    parser.add_argument(
        "--matmul",
        default="auto",
        help="comma-separated model.matmul modes, rows side by side: auto, native, float32 "
        "(products of half-precision weights in fp32; see zotune.models.matmul); default auto",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attn-implementation", default=None)
    parser.add_argument(
        "--compile", action="store_true",
        help="--step-cost: also time each --dtype with the forward compiled (compile_model)",
    )
    parser.add_argument("--steps", type=int, help="timed steps (default 3; 5 with --step-cost)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's); 1 gives steadier CPU timings on a "
        "busy machine",
    )
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="fresh processes per row, round by round over the rows; each row is shown from "
        "its median process, with the range over them (default 1)",
    )
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one fresh process per memory measurement (default: on)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--step-cost", action="store_true", help="T_step vs 2 T_fwd, vs MeZO-style, memory"
    )
    mode.add_argument(
        "--estimate-only",
        action="store_true",
        help="print the analytic estimates only (meta-device model: any size, no memory)",
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUES",
        help="an optimizer option, each comma-separated value a row (e.g. "
        "hybrid_layers=0,10,20,30); repeatable",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        default=None,
        help="also measure each method with its weights offloaded to CPU memory "
        "(accelerate's cpu_offload, copied to --device for each forward), each row after its "
        "resident one; full scheme, inference and the random-gradient ZO optimizers",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        default=None,
        help="a measurement that fails (e.g. a half-precision optimizer whose loss turns "
        "non-finite) is reported and skipped, the others go on; exit status 1 if any failed",
    )
    parser.add_argument("--json", help="write the results as JSON (atomic)")
    parser.add_argument(
        "--markdown",
        help="write the results as a Markdown page (atomic), headed by the command that "
        "reproduces it",
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="with --seq-lens: plot memory against sequence length (needs matplotlib)",
    )
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="measure nothing: print and render (--markdown, --plot) results saved by --json",
    )
    parser.add_argument(
        "--note", help="a line for the Markdown page and JSON (e.g. what else ran on the machine)"
    )


def _csv(text: str | None, kind=str) -> list | None:
    if text is None:
        return None
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def reproduce_command(argv: list[str]) -> str:
    """``zotune ARGV``, behind ``taskset -c CPUS`` when this process is pinned to some CPUs."""
    from ..utils.environment import cpu_affinity

    command = shlex.join(["zotune", *argv])
    cpus = cpu_affinity()
    return f"taskset -c {cpus} {command}" if cpus else command


# Options that only shape a measurement: --from-json re-renders results as they were measured.
MEASUREMENT_ONLY = (
    "optimizers", "schemes", "seq_lens", "steps", "threads", "option", "offload", "keep_going",
    "micro_batch_size",
)


def _option_grid(items: list[str]) -> list[dict[str, Any]]:
    """``["hybrid_layers=0,10", "q=1"]`` → every combination, values read as YAML scalars."""
    import itertools

    import yaml

    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE[,VALUE...]")
        axes[key.strip()] = [yaml.safe_load(v) for v in _csv(values)]
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


PRECISIONS = ("float32", "bfloat16", "float16", "autocast-bfloat16", "autocast-float16")


def parse_precision(text: str) -> tuple[str, str | None]:
    """``"bfloat16"`` → (bfloat16, None); ``"autocast-bfloat16"`` → (float32, bfloat16)."""
    if text not in PRECISIONS:
        choices = ", ".join(PRECISIONS)
        raise ValueError(f"--dtype: unknown precision {text!r} (choose from {choices})")
    if text.startswith("autocast-"):
        return "float32", text.removeprefix("autocast-")
    return text, None


def _check_arguments(args: argparse.Namespace) -> None:
    """Reject combinations that cannot work before anything is measured (one-line errors)."""
    mode = "--step-cost" if args.step_cost else "--estimate-only" if args.estimate_only else None
    if args.from_json is None:
        _check_sizes(args)
    if args.option and mode:
        raise ValueError(f"--option applies to measured profiles; drop {mode}")
    if args.step_cost and args.optimizers is not None and args.from_json is None:
        _check_step_cost_methods(_csv(args.optimizers), _csv(args.schemes))
    if getattr(args, "compile", False) and not args.step_cost:
        raise ValueError("--compile adds compiled rows to --step-cost; add --step-cost")
    if args.offload and mode:
        raise ValueError(f"--offload applies to measured profiles; drop {mode}")
    if args.repeats > 1 and mode:
        raise ValueError(f"--repeats applies to measured profiles; drop {mode}")
    if args.offload and args.from_json is None:
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise ValueError("--offload places the weights with accelerate: pip install accelerate")
    if args.from_json is not None:
        if mode:
            raise ValueError(f"--from-json re-renders saved profile results; drop {mode}")
        given = [name for name in MEASUREMENT_ONLY if getattr(args, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} shapes a measurement; --from-json renders the file as it is")
        if args.json:
            raise ValueError("--json with --from-json would only copy the file it reads")
    if args.plot is None:
        return
    if mode:
        raise ValueError(f"--plot draws measured memory against sequence length; drop {mode}")
    if args.from_json is None and len(set(_csv(args.seq_lens, int) or [])) < 2:
        raise ValueError(
            "--plot draws memory against sequence length: give --seq-lens with two or more "
            "lengths (e.g. --seq-lens 32,64,128)"
        )
    from ..utils.figures import require_matplotlib

    require_matplotlib()


def _check_step_cost_methods(methods: list[str], schemes: list[str] | None) -> None:
    """--optimizers with --step-cost picks among the step-cost rows of the schemes asked for."""
    from .step_cost import SCHEMES, methods_for

    rows = dict.fromkeys(m for s in (schemes or SCHEMES) for m in methods_for(s))
    unknown = [m for m in methods if m not in rows]
    if unknown:
        raise ValueError(f"--optimizers {unknown[0]}: not a --step-cost row (choose from "
                         f"{', '.join(rows)})")


def _check_sizes(args: argparse.Namespace) -> None:
    """Counts that must be positive, and lengths the model has positions for (a longer one
    would run until killed on positions it does not have)."""
    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                               ("--repeats", args.repeats, 1),
                               ("--seq-len", args.seq_len, 1),
                               ("--micro-batch-size", args.micro_batch_size, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    flag, lengths = ("--seq-lens", _csv(args.seq_lens, int)) if args.seq_lens else (
        "--seq-len", [args.seq_len])
    limit = _position_limit(args.model)
    too_long = [length for length in lengths if limit is not None and length > limit]
    if too_long:
        raise ValueError(
            f"{flag} {max(too_long)} is longer than {args.model}'s {limit} positions"
        )
    if min(lengths) < 1:
        raise ValueError(f"{flag} must be at least 1, got {min(lengths)}")


def _position_limit(model: str) -> int | None:
    """The longest input ``model`` takes, when its config is at hand (a shape or a folder)."""
    from ..models.anatomy import position_limit
    from ..models.embedded import EMBEDDED_MODEL
    from ..models.random_shapes import shape_config

    if model.startswith("random:") or model == EMBEDDED_MODEL:
        config = shape_config(model.removeprefix("random:"))
    elif Path(model, "config.json").is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    else:
        return None  # a hub id: its config is read when the model loads
    return position_limit(config)


def run(args: argparse.Namespace) -> int:
    """Peak memory and time per step of each optimizer, or the step-cost benchmark."""
    _check_arguments(args)
    command = reproduce_command(getattr(args, "argv", None) or sys.argv[1:])
    if args.from_json is not None:
        return _render_saved(args, command)
    precisions = [
        (dtype, autocast, matmul)
        for dtype, autocast in (parse_precision(item) for item in _csv(args.dtype))
        for matmul in _matmul_modes(args.matmul)
    ]
    common = {
        "model": args.model,
        "batch_size": args.batch_size,
        "device": args.device,
        "warmup": args.warmup,
        "seed": args.seed,
        "attn_implementation": args.attn_implementation,
        "threads": args.threads,
        "micro_batch_size": args.micro_batch_size,
    }
    results = None
    failures: list | None = [] if args.keep_going else None
    if args.step_cost:
        if any(autocast is not None for _, autocast, _ in precisions):
            raise ValueError("--step-cost measures weight dtypes: give --dtype from "
                             "float32, bfloat16, float16")
        variants = [(dtype, matmul, False) for dtype, _, matmul in precisions]
        if args.compile:
            variants += [(dtype, matmul, True) for dtype, _, matmul in precisions]
        payload, markdown = _step_cost(args, common, variants, failures, command)
    elif args.estimate_only:
        from . import estimates

        rows = estimates.estimate_specs(_specs(args, common, precisions))
        print(estimates.estimate_table(rows))
        payload = {"kind": "estimates", "rows": rows}
        markdown = estimates.render_estimates_markdown(rows, command)
    else:
        from .measurement import run_profile
        from .results import profile_payload

        results = run_profile(
            _specs(args, common, precisions), isolate=args.isolate, repeats=args.repeats,
            log=_log, failures=failures
        )
        payload = profile_payload(results, command=command, note=args.note)
        markdown = _show_profile(args, results, command, payload["setup"])
    if failures:
        payload["failed"] = [
            {"label": spec.label(), "spec": dataclasses.asdict(spec), "error": error}
            for spec, error in failures
        ]
        markdown += "\n## Failed measurements\n\n" + "".join(
            f"- {spec.label()}: {error}\n" for spec, error in failures
        )
        _log(f"{len(failures)} measurement(s) failed: " + "; ".join(
            spec.label() for spec, _ in failures))
    if args.json:
        from .results import write_json

        write_json(args.json, payload)
        _log(f"wrote {args.json}")
    _write_pages(args, markdown, results)
    return 1 if failures else 0


def _log(message: str) -> None:
    print(f"zotune profile: {message}", file=sys.stderr, flush=True)


def _matmul_modes(text: str) -> list[str]:
    """``--matmul``'s modes, each checked (one line naming a wrong one)."""
    from ..models.matmul import check_matmul

    modes = _csv(text)
    for mode in modes:
        check_matmul(mode)
    return modes


def _specs(
    args: argparse.Namespace, common: dict[str, Any],
    precisions: list[tuple[str, str | None, str]],
) -> list:
    """The grid of measurements the flags ask for (a sweep when --seq-lens is given), each
    precision's rows after the previous one's."""
    from .methods import SWEEP_OPTIMIZERS, default_methods
    from .spec import grid

    sweep = args.seq_lens is not None
    return [
        spec
        for dtype, autocast, matmul in precisions
        for spec in grid(
            _csv(args.optimizers) or (SWEEP_OPTIMIZERS if sweep else default_methods()),
            schemes=_csv(args.schemes) or ["full"],
            seq_lens=_csv(args.seq_lens, int) or [args.seq_len],
            steps=args.steps or 3,
            options=_option_grid(args.option or []),
            offloads=(False, True) if args.offload else (False,),
            dtype=dtype,
            autocast=autocast,
            matmul=matmul,
            **common,
        )
    ]


def _step_cost(
    args: argparse.Namespace, common: dict[str, Any],
    variants: list[tuple[str, str, bool]], failures: list | None, command: str,
) -> tuple[dict, str]:
    """--step-cost: run it for each (dtype, matmul, compiled) variant, print one table of all their
    rows; return its JSON payload and Markdown page."""
    from .step_cost import (
        SCHEMES,
        StepCostConfig,
        merge_step_costs,
        render_step_cost_markdown,
        run_step_cost,
        step_cost_table,
    )

    results = []
    for number, (dtype, matmul, compiled) in enumerate(variants, 1):
        config = StepCostConfig(
            **common,
            dtype=dtype,
            matmul=matmul,
            compile=compiled,
            seq_len=args.seq_len,
            steps=args.steps or 5,
            schemes=tuple(_csv(args.schemes) or SCHEMES),
            methods=None if args.optimizers is None else tuple(_csv(args.optimizers)),
        )
        _log(f"step cost {number}/{len(variants)}: {config.precision()}")
        results.append(run_step_cost(config, isolate=args.isolate, log=_log, failures=failures))
    result = merge_step_costs(results)
    print(result.setup + f"; memory measured {result.memory_method}")
    print(step_cost_table(result))
    payload = {**result.as_dict(), "command": command, "note": args.note}
    return payload, render_step_cost_markdown(result, command=command, note=args.note)


def _show_profile(args, results, command: str, setup: str) -> str:
    """Print the tables; return the Markdown page (linking the --plot image)."""
    from .render import profile_table, render_markdown, sweep_table

    print(setup)
    print(profile_table(results))
    if len({r.spec.seq_len for r in results}) > 1:
        print()
        print(sweep_table(results))
    plot = None
    if args.plot and args.markdown:
        plot = Path(os.path.relpath(Path(args.plot), Path(args.markdown).parent)).as_posix()
    return render_markdown(results, command=command, note=args.note, setup=setup, plot=plot)


def _render_saved(args: argparse.Namespace, command: str) -> int:
    """--from-json: tables, --markdown and --plot from saved results, measuring nothing."""
    from .render import describe_setup
    from .results import load_payload
    from .spec import ProfileResult

    payload = load_payload(args.from_json)
    results = [ProfileResult.from_dict(item) for item in payload["results"]]
    if not results:
        raise ValueError(f"{args.from_json}: holds no profile results")
    if args.plot and len({r.spec.seq_len for r in results}) < 2:
        raise ValueError(
            f"--plot draws memory against sequence length: {args.from_json} holds one "
            f"length only (T={results[0].spec.seq_len})"
        )
    measured = payload.get("command")
    command = f"{measured} && {command}" if measured else command
    args.note = args.note or payload.get("note")
    setup = payload.get("setup") or describe_setup(results)
    _write_pages(args, _show_profile(args, results, command, setup), results)
    return 0


def _write_pages(args: argparse.Namespace, markdown: str, results) -> None:
    """--markdown, then --plot (last: the measurements are saved if the plot fails)."""
    from ..utils.files import atomic_write_text
    from .plot import plot_memory_vs_seq_len

    if args.markdown:
        atomic_write_text(Path(args.markdown), markdown)
        _log(f"wrote {args.markdown}")
    if not (args.plot and results):
        return
    if not plot_memory_vs_seq_len(results, Path(args.plot)):
        raise ValueError(
            "--plot draws memory against sequence length: the results hold one length only "
            f"(T={results[0].spec.seq_len})"
        )
    _log(f"wrote {args.plot}")

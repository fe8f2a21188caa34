"""``zotune`` command line: train, eval, tasks, demo, bench, report, profile."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def _config_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """``(flag, dotted key, add_argument keywords)`` for every config key: the sections'
    fields with their help, and every optimizer option the registry declares."""
    import dataclasses
    import typing

    from .config import RUN_LEVEL_OPTIONS, OptimizerConfig, RunConfig
    from .optim.registry import REGISTRY, all_options

    flags = []
    for section in dataclasses.fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[section.name]
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if cls is OptimizerConfig and item.name == "settings":
                continue
            dotted = f"{section.name}.{item.name}"
            flag = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
            kind = next(t for t in (*typing.get_args(hints[item.name]), hints[item.name])
                        if t in (str, int, float, bool))
            help_ = item.metadata.get("help", f"sets {dotted}")
            if kind is bool:
                flag = f"--no-{flag[2:]}" if item.default else flag
                keywords = {"action": "store_const", "const": not item.default}
                flags.append((flag, dotted, {**keywords, "help": help_}))
                continue
            shown = "unset" if item.default is None else item.default
            keywords = {
                "type": kind,
                "metavar": item.name.upper(),
                "help": f"{help_} (config {dotted}; default {shown})",
            }
            flags.append((flag, dotted, keywords))
    for name, option in all_options().items():
        if name in RUN_LEVEL_OPTIONS:
            continue
        takers = [k for k, e in REGISTRY.items() if name in e.accepted()]
        where = "every optimizer" if len(takers) == len(REGISTRY) else ", ".join(takers)
        help_ = f"{option.describe()} (config optimizer.{name}; {where})"
        flags.append(("--" + name.replace("_", "-"), f"optimizer.{name}",
                      {"type": option.from_text, "help": help_, "metavar": name.upper()}))
    return flags


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    for flag, dotted, keywords in _config_flags():
        parser.add_argument(flag, dest=dotted, default=None, **keywords)


def _overrides(args: argparse.Namespace, positional: list[str]) -> tuple[str | None, list]:
    """Split ``[CONFIG.yaml] [key=value ...]`` and merge the flag shorthands after them."""
    config_path = None
    dotted: list[tuple[str, Any]] = []
    from .config import ConfigError, parse_override

    for item in positional:
        if "=" in item:
            dotted.append(parse_override(item))
        elif config_path is None:
            config_path = item
        else:
            raise ConfigError(f"unexpected argument {item!r} (expected key=value)")
    for key, value in vars(args).items():
        if "." in key and value is not None:
            dotted.append((key, value))
    return config_path, dotted


def _config_from(args, positional):
    from .config import load_config

    path, dotted = _overrides(args, positional)
    return load_config(path, dict(dotted))


def cmd_train(args: argparse.Namespace) -> int:
    from .train import finetune

    config = _config_from(args, args.items)
    result = finetune(config)
    print(result.summary())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Accuracy of a model (zero-shot) or of a run's best checkpoint on a split."""
    from .checkpoints import BEST_FILE, load_trainable_checkpoint, load_trainable_state
    from .config import load_config
    from .run import check_config, setup

    run_dir = Path(args.run_dir) if args.run_dir else None
    _, dotted = _overrides(args, [])
    if run_dir is not None:
        config = load_config(run_dir / "config.yaml", dict(dotted))
    else:
        config = load_config(None, dict(dotted))
    check_config(config)
    run = setup(config, for_training=False)
    if run_dir is not None:
        load_trainable_state(run.model, load_trainable_checkpoint(run_dir / BEST_FILE))
    accuracy = run.accuracy(getattr(run.splits, args.split))
    print(json.dumps({"task": config.task.name, "split": args.split, "accuracy": accuracy}))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import get_task, list_tasks

    for name in list_tasks():
        print(f"{name:12s} {get_task(name).description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(steps=args.steps)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark suite: only its missing (and, by default, failed) runs."""
    from .bench.runner import Runner, describe_plan, plan
    from .bench.store import ResultsStore, store_exists
    from .bench.suite import load_suite

    if args.ray is not None and "=" in args.ray:
        # `--ray key=value`: an override that followed a bare --ray (addresses have no "=").
        args.overrides.append(args.ray)
        args.ray = ""
    if args.ray is not None and args.jobs != 1:
        raise ValueError(f"--jobs {args.jobs} does not apply to --ray: runs take their resources")
    if args.ray is not None and args.time_limit is not None:
        raise ValueError("--time-limit applies to local runs; it is not implemented for --ray")
    suite = load_suite(args.suite, args.overrides)
    results = Path(args.results) if args.results else Path("results") / suite.name
    if args.dry_run:
        statuses = {}
        if store_exists(results):
            with ResultsStore(results, create=False) as store:
                statuses = store.statuses()
        print(describe_plan(plan(suite, statuses, args.retry_failed, args.only)))
        return 0
    options = {
        "retry_failed": args.retry_failed,
        "only": args.only,
        "command": suite.command(results if args.results else None),
    }
    if args.ray is None:
        runner = Runner(suite, results, jobs=args.jobs, time_limit=args.time_limit, **options)
    else:
        from .bench.ray_backend import RayRunner

        runner = RayRunner(suite, results, address=args.ray or None, **options)
    summary = runner.run()
    print(summary.line())
    print(f"tables and plots: zotune report {results}")
    return 0 if summary.failed == 0 else 1


def cmd_report(args: argparse.Namespace) -> int:
    from .bench.report import build_report

    written = build_report(args.results_dir, out=args.out, plots=not args.no_plots)
    for path in written:
        print(path)
    return 0


def _csv(text: str | None, kind=str) -> list | None:
    if text is None:
        return None
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def reproduce_command(argv: list[str]) -> str:
    """``zotune ARGV``, behind ``taskset -c CPUS`` when this process is pinned to some CPUs."""
    from .bench.environment import cpu_affinity

    command = shlex.join(["zotune", *argv])
    cpus = cpu_affinity()
    return f"taskset -c {cpus} {command}" if cpus else command


# Options that only shape a measurement: --from-json re-renders results as they were measured.
MEASUREMENT_ONLY = ("optimizers", "schemes", "seq_lens", "steps", "threads", "option")


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


def _check_profile_options(args: argparse.Namespace) -> None:
    """Reject combinations that cannot work before anything is measured (one-line errors)."""
    mode = "--step-cost" if args.step_cost else "--estimate-only" if args.estimate_only else None
    if args.from_json is None:
        _check_profile_sizes(args)
    if args.option and mode:
        raise ValueError(f"--option applies to measured profiles; drop {mode}")
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
    from .bench.plots import require_matplotlib

    require_matplotlib()


def _check_profile_sizes(args: argparse.Namespace) -> None:
    """Counts that must be positive, and lengths the model has positions for (a longer one
    would run until killed on positions it does not have)."""
    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                               ("--seq-len", args.seq_len, 1)):
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
    from .models import EMBEDDED_MODEL, max_sequence_length, shape_config

    if model.startswith("random:") or model == EMBEDDED_MODEL:
        config = shape_config(model.removeprefix("random:"))
    elif Path(model, "config.json").is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    else:
        return None  # a hub id: its config is read when the model loads
    return max_sequence_length(config)


def cmd_profile(args: argparse.Namespace) -> int:
    """Peak memory and time per step of each optimizer, or the step-cost benchmark."""
    from .bench import profile as prof

    def log(message: str) -> None:
        print(f"zotune profile: {message}", file=sys.stderr, flush=True)

    _check_profile_options(args)
    command = reproduce_command(getattr(args, "argv", None) or sys.argv[1:])
    if args.from_json is not None:
        return _render_profile(args, command, log)
    common = {
        "model": args.model,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "warmup": args.warmup,
        "seed": args.seed,
        "attn_implementation": args.attn_implementation,
        "threads": args.threads,
    }
    if args.step_cost:
        from .bench.step_cost import (
            SCHEMES,
            StepCostConfig,
            render_step_cost_markdown,
            run_step_cost,
            step_cost_table,
        )

        config = StepCostConfig(
            **common,
            seq_len=args.seq_len,
            steps=args.steps or 5,
            schemes=tuple(_csv(args.schemes) or SCHEMES),
        )
        result = run_step_cost(config, isolate=args.isolate, log=log)
        print(result.setup + f"; memory measured {result.memory_method}")
        print(step_cost_table(result))
        payload, markdown = result.as_dict(), render_step_cost_markdown(result)
    else:
        results = None
        sweep = args.seq_lens is not None
        default_methods = prof.SWEEP_OPTIMIZERS if sweep else prof.default_methods()
        specs = prof.grid(
            _csv(args.optimizers) or default_methods,
            schemes=_csv(args.schemes) or ["full"],
            seq_lens=_csv(args.seq_lens, int) or [args.seq_len],
            steps=args.steps or 3,
            options=_option_grid(args.option or []),
            **common,
        )
        if args.estimate_only:
            from .bench import estimates

            rows = estimates.estimate_specs(specs)
            print(estimates.estimate_table(rows))
            payload = {"kind": "estimates", "rows": rows}
            markdown = estimates.render_estimates_markdown(rows)
        else:
            results = prof.run_profile(specs, isolate=args.isolate, log=log)
            payload = prof.profile_payload(results, command=command, note=args.note)
            markdown = _show_profile(args, results, command, payload["setup"])
    if args.json:
        prof.write_json(args.json, payload)
        log(f"wrote {args.json}")
    if args.markdown:
        _write_markdown(args.markdown, markdown, log)
    if args.plot and results:  # last: the measurements are saved if the plot fails
        _write_plot(args.plot, results, log)
    return 0


def _show_profile(args, results, command: str, setup: str) -> str:
    """Print the tables; return the Markdown page (linking the --plot image)."""
    from .bench import profile as prof

    print(setup)
    print(prof.profile_table(results))
    if len({r.spec.seq_len for r in results}) > 1:
        print()
        print(prof.sweep_table(results))
    plot = None
    if args.plot and args.markdown:
        plot = Path(os.path.relpath(Path(args.plot), Path(args.markdown).parent)).as_posix()
    return prof.render_markdown(results, command=command, note=args.note, setup=setup, plot=plot)


def _write_plot(path: str, results, log) -> None:
    from .bench.plots import plot_memory_vs_seq_len

    if not plot_memory_vs_seq_len(results, Path(path)):
        raise ValueError(
            "--plot draws memory against sequence length: the results hold one length only "
            f"(T={results[0].spec.seq_len})"
        )
    log(f"wrote {path}")


def _render_profile(args: argparse.Namespace, command: str, log) -> int:
    """--from-json: tables, --markdown and --plot from saved results, measuring nothing."""
    from .bench import profile as prof

    payload = prof.load_payload(args.from_json)
    results = [prof.ProfileResult.from_dict(item) for item in payload["results"]]
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
    setup = payload.get("setup") or prof.describe_setup(results)
    markdown = _show_profile(args, results, command, setup)
    if args.markdown:
        _write_markdown(args.markdown, markdown, log)
    if args.plot:
        _write_plot(args.plot, results, log)
    return 0


def _write_markdown(path: str, markdown: str, log) -> None:
    from .files import atomic_write_text

    atomic_write_text(Path(path), markdown)
    log(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zotune", description="Fine-tune language models with zeroth-order optimizers."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="fine-tune a model on a task",
        description="zotune train [CONFIG.yaml] [section.key=value ...] [flags]",
    )
    train.add_argument("items", nargs="*", help="a YAML config and/or section.key=value overrides")
    _add_train_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="accuracy of a model or a run's best checkpoint")
    evaluate.add_argument("run_dir", nargs="?", help="a `zotune train --output-dir` folder")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test")
    _add_train_flags(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    tasks = commands.add_parser("tasks", help="list the tasks")
    tasks.set_defaults(func=cmd_tasks)

    demo = commands.add_parser("demo", help="fine-tune the embedded model on SST-2 (CPU)")
    demo.add_argument("--steps", type=int, default=None)
    demo.set_defaults(func=cmd_demo)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark suite (resumable)",
        description="zotune bench SUITE [section.key=value ...]: SUITE is a built-in suite "
        "(smoke, cpu, paper) or a suite YAML file; running it again runs only what is missing",
    )
    bench.add_argument("suite", help="built-in suite name or path to a suite YAML")
    bench.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value applied to every run (e.g. model.device=cuda)",
    )
    bench.add_argument("--results", help="results folder (default: results/<suite>)")
    bench.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    bench.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop a run still going after this long and record it as failed",
    )
    bench.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run each run as a Ray task with the suite's resources (needs zotune[ray]); "
        "ADDRESS joins a cluster, none starts or joins a local Ray",
    )
    bench.add_argument(
        "--dry-run", action="store_true", help="list the runs and which ones would run"
    )
    bench.add_argument(
        "--only",
        action="append",
        metavar="SELECTOR",
        help="run only the cells a selector picks (zo-sgd, lora, zo-sgd/lora); repeatable",
    )
    bench.add_argument(
        "--retry-failed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run failed runs again (default: on)",
    )
    bench.set_defaults(func=cmd_bench)

    report = commands.add_parser(
        "report", help="tables (Markdown, CSV) and plots of a results folder"
    )
    report.add_argument("results_dir", help="a `zotune bench` results folder")
    report.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    report.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    report.set_defaults(func=cmd_report)

    profile = commands.add_parser(
        "profile",
        help="peak memory and time per step of each optimizer (or --step-cost)",
        description="zotune profile: per optimizer and scheme, peak memory and median time "
        "per step on a synthetic B x T batch, beside the analytic estimate; --seq-lens sweeps "
        "the sequence length; --step-cost times ZO steps against forwards and a MeZO-style "
        "reference step",
    )
    profile.add_argument(
        "--model",
        default="random:opt-125m",
        help="hub id, folder, or random:<shape> (default: random:opt-125m)",
    )
    profile.add_argument(
        "--optimizers", help="comma-separated; also inference, mezo-ref (default: all)"
    )
    profile.add_argument("--schemes", help="comma-separated tuning schemes (default: full)")
    profile.add_argument("--batch-size", type=int, default=16)
    profile.add_argument("--seq-len", type=int, default=64)
    profile.add_argument(
        "--seq-lens",
        help="comma-separated: memory against sequence length (zo-sgd, fo-sgd, "
        "fo-adam unless --optimizers)",
    )
    profile.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    profile.add_argument("--device", default="cpu")
    profile.add_argument("--attn-implementation", default=None)
    profile.add_argument("--steps", type=int, help="timed steps (default 3; 5 with --step-cost)")
    profile.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    profile.add_argument("--seed", type=int, default=0)
    profile.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's); 1 gives steadier CPU timings on a "
        "busy machine",
    )
    profile.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one fresh process per memory measurement (default: on)",
    )
    mode = profile.add_mutually_exclusive_group()
    mode.add_argument(
        "--step-cost", action="store_true", help="T_step vs 2 T_fwd, vs MeZO-style, memory"
    )
    mode.add_argument(
        "--estimate-only",
        action="store_true",
        help="print the analytic estimates only (meta-device model: any size, no memory)",
    )
    profile.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUES",
        help="an optimizer option, each comma-separated value a row (e.g. "
        "hybrid_layers=0,10,20,30); repeatable",
    )
    profile.add_argument("--json", help="write the results as JSON (atomic)")
    profile.add_argument(
        "--markdown",
        help="write the results as a Markdown page (atomic), headed by the command that "
        "reproduces it",
    )
    profile.add_argument(
        "--plot",
        metavar="PNG",
        help="with --seq-lens: plot memory against sequence length (needs matplotlib)",
    )
    profile.add_argument(
        "--from-json",
        metavar="FILE",
        help="measure nothing: print and render (--markdown, --plot) results saved by --json",
    )
    profile.add_argument(
        "--note", help="a line for the Markdown page and JSON (e.g. what else ran on the machine)"
    )
    profile.set_defaults(func=cmd_profile)
    return parser


# Where each command collects its ``key=value`` overrides, wherever they stand among its flags.
OVERRIDE_LISTS = {"train": "items", "bench": "overrides"}


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, with a command's ``key=value`` items accepted after its flags too.

    argparse fills a ``nargs="*"`` positional from one run of arguments only; the ones after a
    flag come back unrecognized, and are overrides when the command takes them.
    """
    args, extras = parser.parse_known_args(argv)
    dest = OVERRIDE_LISTS.get(args.command)
    stray = [item for item in extras if dest is None or item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        getattr(args, dest).extend(extras)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("zotune: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError, RuntimeError) as error:
        if args.debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"zotune: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

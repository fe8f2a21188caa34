"""The ``zotune`` command line: one subcommand per job (train, eval, bench, profile, ...)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _config_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """``(flag, dotted key, add_argument keywords)`` for every config key: the sections'
    fields with their help, and every optimizer option the registry declares."""
    import dataclasses
    import typing

    from .config import RUN_LEVEL_OPTIONS, RunConfig, config_flag
    from .optim.registry import REGISTRY, all_options
    from .tuning.registry import all_options as scheme_options
    from .tuning.registry import owners

    flags = []
    for section in dataclasses.fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[section.name]
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if item.name == "settings":  # the registries' options, below
                continue
            dotted = f"{section.name}.{item.name}"
            flag = config_flag(dotted)
            kind = next(t for t in (*typing.get_args(hints[item.name]), hints[item.name])
                        if t in (str, int, float, bool))
            help_ = item.metadata.get("help", f"sets {dotted}")
            if callable(help_):
                help_ = help_()
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
        if section.name == "tuning":
            flags += [_scheme_option_flag(name, option, owners(name))
                      for name, option in scheme_options().items()]
    for name, option in all_options().items():
        if name in RUN_LEVEL_OPTIONS:
            continue
        takers = [k for k, e in REGISTRY.items() if name in e.accepted()]
        where = "every optimizer" if len(takers) == len(REGISTRY) else ", ".join(takers)
        own = [  # entries that redeclare the option with a default of their own
            f"{k}: default {e.accepted()[name].describe().rpartition('default ')[2]}"
            for k, e in REGISTRY.items()
            if name in e.accepted() and e.accepted()[name].default != option.default
        ]
        help_ = f"{option.describe()} (config optimizer.{name}; {where})"
        if own:
            help_ = f"{option.describe()}; {'; '.join(own)} (config optimizer.{name}; {where})"
        flag = config_flag(f"optimizer.{name}")
        if option.kind is bool:  # a switch: --nesterov, --no-stochastic-rounding
            flag = f"--no-{flag[2:]}" if option.default else flag
            keywords = {"action": "store_const", "const": not option.default, "help": help_}
        else:
            keywords = {"type": option.from_text, "help": help_, "metavar": name.upper()}
        flags.append((flag, f"optimizer.{name}", keywords))
    return flags


def _scheme_option_flag(name: str, option, schemes: tuple[str, ...]):
    """``(flag, dotted key, add_argument keywords)`` of a tuning scheme's option."""
    from .config import config_flag

    dotted = f"tuning.{name}"
    flag = config_flag(dotted)
    if option.kind is bool:
        flag = f"--no-{flag[2:]}" if option.default else flag
        return flag, dotted, {"action": "store_const", "const": not option.default,
                              "help": f"{option.help} (config {dotted}; {', '.join(schemes)})"}
    shown = "unset" if option.default is None else option.default
    return flag, dotted, {
        "type": option.kind,
        "metavar": name.upper(),
        "help": f"{option.help} (config {dotted}; default {shown})",
    }


def _export_description() -> str:
    from .tuning.registry import get_scheme, scheme_keys

    def named(adapter: bool) -> str:
        return "/".join(get_scheme(k).name for k in scheme_keys(adapter=adapter))

    return (f"zotune export RUN_DIR --out DIR: {named(False)} tuning write a save_pretrained "
            f"model folder, {named(True)} a peft adapter folder; both with the tokenizer and a "
            "model card (README.md)")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    for flag, dotted, keywords in _config_flags():
        parser.add_argument(flag, dest=dotted, default=None, **keywords)


def _add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", dest="train.progress", action="store_const", const=False, default=None,
        help="no progress bars (as --no-progress; bars are off anyway when stderr is not a "
        "terminal)",
    )


def _overrides(args: argparse.Namespace, positional: list[str]) -> tuple[str | None, list]:
    """Split ``[CONFIG.yaml] [key=value ...]`` and merge the flag shorthands after them."""
    config_path = None
    dotted: list[tuple[str, Any]] = []
    from .config import ConfigError, parse_override

    given: dict[str, str] = {}  # key → how the command line gave it

    def add(key: str, value: Any, how: str) -> None:
        if key in given:
            raise ConfigError(f"{key} is given twice: {given[key]} and {how}")
        given[key] = how
        dotted.append((key, value))

    for item in positional:
        if "=" in item:
            key, value = parse_override(item)
            add(key, value, item)
        elif config_path is None:
            config_path = item
        else:
            raise ConfigError(f"unexpected argument {item!r} (expected key=value)")
    for key, value in vars(args).items():
        if "." in key and value is not None:
            add(key, value, f"its flag ({value})")
    return config_path, dotted


def _config_from(args, positional):
    from .config import load_config

    path, dotted = _overrides(args, positional)
    return load_config(path, dict(dotted))


def cmd_train(args: argparse.Namespace) -> int:
    from .training.distributed import is_main_process
    from .training.train import finetune

    config = _config_from(args, args.items)
    result = finetune(config)
    if is_main_process():  # under torchrun, once
        print(result.summary())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """The task's metric (accuracy; F1 and EM for generation tasks) of a model (zero-shot,
    or in context with --demos, calibrated with --calibrate) or of a run's best checkpoint."""
    from .config import load_config
    from .training.checkpoints import BEST_FILE, load_trainable_checkpoint, load_trainable_state
    from .training.run import check_config, setup

    run_dir = Path(args.run_dir) if args.run_dir else None
    _, dotted = _overrides(args, [])
    if run_dir is not None:
        config = load_config(run_dir / "config.yaml", dict(dotted))
    else:
        config = load_config(None, dict(dotted))
    check_config(config)
    if config.task.demos and args.split == "train":
        raise ValueError("--demos are drawn from the train split: evaluate val or test")
    run = setup(config, for_training=False)
    if run_dir is not None:
        load_trainable_state(run.model, load_trainable_checkpoint(run_dir / BEST_FILE))
    score = run.score(getattr(run.splits, args.split))
    print(json.dumps({"task": config.task.name, "split": args.split, **score.as_dict()}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A run's best checkpoint as a transformers model or a peft adapter folder."""
    from .models.export import export_run

    out = export_run(
        args.run_dir, args.out, merge=args.merge, dtype=args.dtype, overwrite=args.overwrite,
        allow_untrained=args.allow_untrained, lm_eval_task=args.lm_eval_task,
    )
    print(out)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import get_task, list_tasks

    if args.check:
        from .tasks.check import check_task_file

        print(check_task_file(args.check))
        return 0
    if args.markdown:
        from .tasks.catalog import tasks_markdown

        print(tasks_markdown(), end="")
        return 0
    for name in list_tasks():
        print(f"{name:12s} {get_task(name).description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .recipes.demo import run_demo

    run_demo(steps=args.steps)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .recipes.quickstart import run_quickstart

    run_quickstart(Path(args.root), steps=args.steps)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark suite: only its missing (and, by default, failed) runs."""
    from .bench.runner import Runner, describe_plan, plan, run_states
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
        statuses, records = {}, []
        if store_exists(results):
            with ResultsStore(results, create=False) as store:
                statuses, records = run_states(store), store.records()
        print(describe_plan(
            plan(suite, statuses, args.retry_failed, args.only, args.rerun, records)
        ))
        return 0
    options = {
        "retry_failed": args.retry_failed,
        "only": args.only,
        "rerun": args.rerun,
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

    written = build_report(args.results_dir, out=args.out, plots=not args.no_plots,
                           profile=args.profile,
                           **({"reference": args.reference} if args.reference else {}))
    for path in written:
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .bench.compare import compare

    result = compare(
        args.results_dir, args.a, args.b, suite=args.suite, task=args.task, model=args.model
    )
    print("\n".join(result.lines()))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Peak memory and time per step of each optimizer: see :mod:`zotune.profiling.command`."""
    from .profiling.command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from .bench.suite import builtin_suites
    from .tuning.registry import mergeable

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
    _add_quiet_flag(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="accuracy of a model or a run's best checkpoint")
    evaluate.add_argument("run_dir", nargs="?", help="a `zotune train --output-dir` folder")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test")
    _add_train_flags(evaluate)
    _add_quiet_flag(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    export = commands.add_parser(
        "export",
        help="a run's best checkpoint as a model transformers or peft loads",
        description=_export_description(),
    )
    export.add_argument("run_dir", help="a `zotune train --output-dir` folder")
    export.add_argument("--out", required=True, help="the folder to write (new or empty)")
    export.add_argument(
        "--merge", action="store_true",
        help=f"{'/'.join(mergeable())}: write the merged whole model, not the adapter",
    )
    export.add_argument(
        "--dtype", help="convert the weights (float32, bfloat16, float16; default: the run's)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.add_argument(
        "--allow-untrained", action="store_true",
        help="export a run that learned nothing (its card says so at the top)",
    )
    export.add_argument(
        "--lm-eval-task", action="store_true",
        help="also write the run's test split as an lm-evaluation-harness task (DIR/lm_eval) "
        "and the lm_eval command that scores the export in the card",
    )
    export.set_defaults(func=cmd_export)

    tasks = commands.add_parser("tasks", help="list the tasks")
    tasks.add_argument(
        "--markdown",
        action="store_true",
        help="print every task's template, candidates and data files as Markdown tables",
    )
    tasks.add_argument(
        "--check",
        metavar="TASK.yaml",
        help="validate a task file and its data; print three rendered examples",
    )
    tasks.set_defaults(func=cmd_tasks)

    quickstart = commands.add_parser(
        "quickstart",
        help="train, evaluate and export a tiny random model end to end (seconds, offline)",
    )
    quickstart.add_argument(
        "--root", default="runs", help="where its fresh quickstart-N folder goes (default runs)"
    )
    quickstart.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    quickstart.set_defaults(func=cmd_quickstart)

    demo = commands.add_parser(
        "demo", help="fine-tune the embedded model on SST-2 (CPU), into a fresh runs/demo-N"
    )
    demo.add_argument("--steps", type=int, default=None)
    demo.set_defaults(func=cmd_demo)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark suite (resumable)",
        description="zotune bench SUITE [section.key=value ...]: SUITE is a built-in suite "
        f"({', '.join(builtin_suites())}) or a suite YAML file; running it again runs only "
        "what is missing",
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
        "--rerun",
        action="append",
        metavar="SELECTOR",
        help="run the finished (or diverged) runs of the cells a selector picks again, from "
        "scratch (their record keeps every attempt): e.g. records an older zotune made; "
        "repeatable",
    )
    bench.add_argument(
        "--retry-failed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run failed runs again, except those that diverged: their settings would "
        "diverge again (--rerun runs them) (default: on)",
    )
    bench.set_defaults(func=cmd_bench)

    report = commands.add_parser(
        "report", help="tables (Markdown, CSV) and plots of a results folder"
    )
    report.add_argument("results_dir", help="a `zotune bench` results folder")
    report.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    report.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    report.add_argument(
        "--reference", metavar="OPTIMIZER",
        help="the optimizer whose best validation accuracy (per scheme) the time-to-accuracy "
        "table measures every cell's forward passes and wall time to (default: zo-sgd)",
    )
    report.add_argument(
        "--profile", metavar="FILE",
        help="a `zotune profile --json` file of the suite's steps timed alone: a table of "
        "their memory and s/step, and each cell's wall time to accuracy alone (default: "
        "RESULTS_DIR/profile.json if there is one)",
    )
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser(
        "compare",
        help="whether two cells (or runs) of a results folder differ on their test examples",
        description="Paired bootstrap of the difference between two cells' test scores on "
        "the same test examples. A cell is OPTIMIZER/SCHEME or OPTIMIZER/SCHEME/VARIANT, "
        "at the hyperparameters the report chose on validation; a run id names one run.",
    )
    compare.add_argument("results_dir", help="a `zotune bench` results folder")
    compare.add_argument("a", help="OPTIMIZER/SCHEME[/VARIANT] or a run id")
    compare.add_argument("b", help="OPTIMIZER/SCHEME[/VARIANT] or a run id")
    compare.add_argument("--suite", help="the suite, where the store holds several")
    compare.add_argument("--task", help="the task, where a suite has several")
    compare.add_argument("--model", help="the model, where a suite has several")
    compare.set_defaults(func=cmd_compare)

    from .profiling import command as profile_command

    profile = commands.add_parser(
        "profile", help=profile_command.HELP, description=profile_command.DESCRIPTION
    )
    profile_command.add_arguments(profile)
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

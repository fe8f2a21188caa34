"""``zotune`` command line: train, eval, tasks, demo, bench, report, profile."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def _int_or_float(text: str) -> int | float:
    """``"2"`` → 2 (layers), ``"0.5"`` → 0.5 (a fraction): hybrid_layers reads both."""
    try:
        return int(text)
    except ValueError:
        return float(text)


# Flags that are shorthands for dotted config keys (``--lr`` is ``optimizer.lr``).
TRAIN_FLAGS: dict[str, tuple[str, Any]] = {
    "--model": ("model.name", str),
    "--dtype": ("model.dtype", str),
    "--autocast": ("model.autocast", str),
    "--device": ("model.device", str),
    "--device-map": ("model.device_map", str),
    "--attn-implementation": ("model.attn_implementation", str),
    "--task": ("task.name", str),
    "--data-dir": ("task.data_dir", str),
    "--num-train": ("task.num_train", int),
    "--num-val": ("task.num_val", int),
    "--num-test": ("task.num_test", int),
    "--loss": ("task.loss", str),
    "--reduction": ("task.reduction", str),
    "--max-length": ("task.max_length", int),
    "--tuning": ("tuning.scheme", str),
    "--parallel": ("train.parallel", str),
    "--lora-r": ("tuning.lora_r", int),
    "--lora-alpha": ("tuning.lora_alpha", int),
    "--prefix-tokens": ("tuning.prefix_tokens", int),
    "--prompt-tokens": ("tuning.prompt_tokens", int),
    "--prompt-init-text": ("tuning.prompt_init_text", str),
    "--optimizer": ("optimizer.name", str),
    "--lr": ("optimizer.lr", float),
    "--eps": ("optimizer.eps", float),
    "--q": ("optimizer.q", int),
    "--probe": ("optimizer.probe", str),
    "--distribution": ("optimizer.distribution", str),
    "--weight-decay": ("optimizer.weight_decay", float),
    "--momentum": ("optimizer.momentum", float),
    "--block-level": ("optimizer.block_level", str),
    "--hybrid-layers": ("optimizer.hybrid_layers", _int_or_float),
    "--sparsity": ("optimizer.sparsity", float),
    "--schedule": ("optimizer.schedule", str),
    "--steps": ("train.steps", int),
    "--batch-size": ("train.batch_size", int),
    "--eval-every": ("train.eval_every", int),
    "--eval-batch-size": ("train.eval_batch_size", int),
    "--seed": ("train.seed", int),
    "--output-dir": ("train.output_dir", str),
}


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (key, kind) in TRAIN_FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, dest=key, help=f"sets {key}")
    parser.add_argument(
        "--no-template",
        action="store_const",
        const=False,
        dest="task.template",
        help="raw inputs without the task-aligned prompt (the paper's alignment ablation)",
    )
    parser.add_argument(
        "--no-stochastic-rounding",
        action="store_const",
        const=False,
        dest="optimizer.stochastic_rounding",
        help="round fp16/bf16 ZO updates to nearest (they are stochastically rounded by default)",
    )
    parser.add_argument("--resume", action="store_const", const=True, dest="train.resume")
    parser.add_argument(
        "--eval-test-before",
        action="store_const",
        const=True,
        dest="train.eval_test_before",
        help="also measure zero-shot test accuracy before training",
    )
    parser.add_argument("--no-progress", action="store_const", const=False, dest="train.progress")


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
    import torch

    from .config import load_config
    from .train import _build_model, load_task_splits, load_trainable_state, make_scorer

    run_dir = Path(args.run_dir) if args.run_dir else None
    _, dotted = _overrides(args, [])
    if run_dir is not None:
        config = load_config(run_dir / "config.yaml", dict(dotted))
    else:
        config = load_config(None, dict(dotted))
    model, loaded, _, _ = _build_model(config)
    if run_dir is not None:
        load_trainable_state(model, torch.load(run_dir / "best.pt", weights_only=True))
    splits = load_task_splits(config)
    scorer = make_scorer(model, loaded, config)
    split = getattr(splits, args.split)
    accuracy = scorer.accuracy(split, config.train.eval_batch_size)
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
    from .bench.store import DB_NAME, ResultsStore
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
        if (results / DB_NAME).is_file():
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


PRECISIONS = ("float32", "bfloat16", "float16", "autocast-bfloat16", "autocast-float16")


def _precision(text: str) -> tuple[str, str | None]:
    """``"bfloat16"`` → (bfloat16, None); ``"autocast-bfloat16"`` → (float32, bfloat16)."""
    if text not in PRECISIONS:
        choices = ", ".join(PRECISIONS)
        raise ValueError(f"--dtype: unknown precision {text!r} (choose from {choices})")
    if text.startswith("autocast-"):
        return "float32", text.removeprefix("autocast-")
    return text, None


def _check_profile_options(args: argparse.Namespace) -> None:
    """Reject combinations that cannot work before anything is measured (one-line errors)."""
    mode = "--step-cost" if args.step_cost else "--estimate-only" if args.estimate_only else None
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


def cmd_profile(args: argparse.Namespace) -> int:
    """Peak memory and time per step of each optimizer, or the step-cost benchmark."""
    from .bench import profile as prof

    def log(message: str) -> None:
        print(f"zotune profile: {message}", file=sys.stderr, flush=True)

    _check_profile_options(args)
    command = reproduce_command(getattr(args, "argv", None) or sys.argv[1:])
    if args.from_json is not None:
        return _render_profile(args, command, log)
    precisions = [_precision(item) for item in _csv(args.dtype)]
    common = {
        "model": args.model,
        "batch_size": args.batch_size,
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

        if len(precisions) != 1 or precisions[0][1] is not None:
            raise ValueError("--step-cost measures one weight dtype: give --dtype one of "
                             "float32, bfloat16, float16")
        config = StepCostConfig(
            **common,
            dtype=precisions[0][0],
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
        default_methods = prof.SWEEP_OPTIMIZERS if sweep else prof.DEFAULT_OPTIMIZERS
        specs = [
            spec
            for dtype, autocast in precisions
            for spec in prof.grid(
                _csv(args.optimizers) or default_methods,
                schemes=_csv(args.schemes) or ["full"],
                seq_lens=_csv(args.seq_lens, int) or [args.seq_len],
                steps=args.steps or 3,
                options=_option_grid(args.option or []),
                dtype=dtype,
                autocast=autocast,
                **common,
            )
        ]
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
    profile.add_argument(
        "--dtype",
        default="float32",
        help="comma-separated precisions, rows side by side: float32, bfloat16, float16 "
        "(the weights' dtype), autocast-bfloat16, autocast-float16 (fp32 weights, "
        "half-precision compute); default float32",
    )
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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

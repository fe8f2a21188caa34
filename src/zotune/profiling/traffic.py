"""Bytes each process communicates per step: data-/query-parallel ZO against DDP.

    python -m zotune.profiling.traffic [--shape opt-125m] [--schemes full lora] [--steps 3]

Starts ``--world`` gloo processes on this machine (CPU), builds the random-initialised model
shape in each, and trains a few steps of every case on a synthetic token batch while
:mod:`zotune.training.distributed`'s counters record what each process hands to a collective: the
probe table for ZO, every gradient bucket (through a DDP communication hook) for FO.
The figures are payload bytes per process per step, independent of the machine; the
seconds per step are this machine's and include gloo's loopback transport.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ..utils.tables import markdown_table

# (label, optimizer, options, parallel mode)
CASES = [
    ("zo-sgd, data-parallel", "zo-sgd", {"lr": 1e-6}, "data"),
    ("zo-sgd q=4, query-parallel", "zo-sgd", {"lr": 1e-6, "q": 4}, "query"),
    ("fo-sgd, DDP", "fo-sgd", {"lr": 1e-6}, "data"),
]


def _worker(rank: int, port: int, world: int, settings: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    from ..models.random_shapes import random_model
    from ..optim import create_optimizer
    from ..training.distributed import join_local_group, share_probes, wrap_first_order
    from ..tuning.schemes import apply_tuning

    torch.set_num_threads(settings["threads"])
    group = join_local_group(rank, world, port)
    rows = []
    for scheme in settings["schemes"]:
        for label, name, options, mode in CASES:
            loaded = random_model(settings["shape"], seed=0)
            model = apply_tuning(loaded.model, scheme, tokenizer=loaded.tokenizer)
            optimizer = create_optimizer(name, model, **options)
            if name.startswith("fo-"):
                forward, counter = wrap_first_order(model, group)
            else:
                forward, counter = model, share_probes(optimizer, mode, group)
            ids = torch.randint(
                4, loaded.model.config.vocab_size, (settings["batch"], settings["seq_len"]),
                generator=torch.Generator().manual_seed(rank),
            )

            def closure(forward=forward, ids=ids):
                return forward(input_ids=ids, labels=ids).loss

            optimizer.step(closure)  # warm-up: DDP builds its buckets on the first backward
            counter.take_traffic()
            seconds = []
            for _ in range(settings["steps"]):
                start = time.perf_counter()
                optimizer.step(closure)
                seconds.append(time.perf_counter() - start)
            sent, collectives = counter.take_traffic()
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            rows.append(
                {
                    "scheme": scheme,
                    "case": label,
                    "trainable": trainable,
                    "bytes_per_step": sent / settings["steps"],
                    "collectives_per_step": collectives / settings["steps"],
                    "seconds_per_step": statistics.median(seconds),
                }
            )
            dist.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def measure_traffic(
    shape: str = "opt-125m",
    schemes: tuple[str, ...] = ("full", "lora"),
    *,
    world: int = 2,
    steps: int = 3,
    batch: int = 2,
    seq_len: int = 32,
    threads: int = 1,
) -> list[dict]:
    """One row per (scheme, case): bytes and collectives per process per step, seconds/step."""
    from ..training.distributed import spawn_local_group

    settings = {
        "shape": shape,
        "schemes": list(schemes),
        "steps": steps,
        "batch": batch,
        "seq_len": seq_len,
        "threads": threads,
    }
    with tempfile.TemporaryDirectory(prefix="zotune-traffic-") as folder:
        out = Path(folder) / "rows.json"
        spawn_local_group(_worker, world, world, settings, str(out))
        return json.loads(out.read_text())


def traffic_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`measure_traffic`'s rows."""
    header = ("scheme", "case", "trainable", "bytes / process / step", "collectives / step",
              "s / step")
    body = [
        (
            row["scheme"],
            row["case"],
            f"{row['trainable']:,}",
            f"{row['bytes_per_step']:,.0f}",
            f"{row['collectives_per_step']:g}",
            f"{row['seconds_per_step']:.3f}",
        )
        for row in rows
    ]
    return markdown_table(header, body, right_from=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="opt-125m", help="random model shape (opt-125m)")
    parser.add_argument("--schemes", nargs="+", default=["full", "lora"])
    parser.add_argument("--world", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.world < 2:
        parser.error(f"--world must be at least 2, got {args.world}")
    rows = measure_traffic(args.shape, tuple(args.schemes), world=args.world, steps=args.steps)
    print(traffic_table(rows))
    if args.json:
        from ..utils.files import atomic_write

        atomic_write(Path(args.json), lambda p: p.write_text(json.dumps(rows, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel and query-parallel ZO, and DDP for the FO baselines, on 2 gloo processes.

Each test starts its processes once (``torch.multiprocessing`` with the gloo backend on the
CPU) and runs a table of cases in them; the reference for every case is a single process
run here on the whole batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from zotune.optim import create_optimizer
from zotune.training.distributed import (
    ProcessGroup,
    join_local_group,
    shard_batch,
    share_probes,
    spawn_local_group,
)

WORLD = 2
STEPS = 4

# (optimizer, options) run data-parallel: each process probes every query on half the batch.
DATA_CASES = [
    ("zo-sgd", {"lr": 1e-2, "eps": 1e-3}),
    ("zo-sgd", {"lr": 1e-2, "eps": 1e-3, "probe": "one-sided", "q": 2}),
    ("zo-sgd-mmt", {"lr": 1e-2, "eps": 1e-3, "momentum": 0.9}),
    ("zo-sgd-sign", {"lr": 1e-3, "eps": 1e-3}),
    ("zo-sgd-cons", {"lr": 1e-2, "eps": 1e-3}),
    ("zo-adam", {"lr": 1e-3, "eps": 1e-3}),
    ("forward-grad", {"lr": 1e-2}),
]
# Query-parallel: the q queries are dealt to the processes (q = 3 leaves them uneven).
QUERY_CASES = [
    ("zo-sgd", {"lr": 1e-2, "eps": 1e-3, "q": 3}),
    ("zo-sgd", {"lr": 1e-2, "eps": 1e-3, "q": 3, "probe": "one-sided"}),
    ("zo-adam", {"lr": 1e-3, "eps": 1e-3, "q": 2}),
    ("forward-grad", {"lr": 1e-2, "q": 3}),
    ("zo-sgd", {"lr": 1e-2, "eps": 1e-3, "q": 1}),  # one process has no query at all
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _problem():
    """A small regression model and a batch of 8, the same in every process.

    float64, so that a shard mean and a batch mean, which round differently, agree far below
    the tolerance even after the 1/(2ε) of a finite difference.
    """
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.double()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    x = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(8, 1, generator=generator, dtype=torch.float64)
    return model, x, y


def run_case(name, options, mode=None, group=None):
    """Train STEPS steps; returns (flat parameters, bytes sent per step or None)."""
    model, x, y = _problem()
    optimizer = create_optimizer(name, model.parameters(), seed=7, **options)
    sharing = share_probes(optimizer, mode, group) if mode else None
    if mode == "data":
        x, y = torch.stack(shard_batch(list(x), group)), torch.stack(shard_batch(list(y), group))
    for _ in range(STEPS):
        optimizer.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sent = sharing.take_traffic()[0] / STEPS if sharing else None
    return flat, sent


def _join(rank: int, port: int) -> ProcessGroup:
    torch.set_num_threads(1)
    return join_local_group(rank, WORLD, port)


def _optimizer_worker(rank: int, port: int, out: str) -> None:
    group = _join(rank, port)
    results = {
        "data": [run_case(n, o, "data", group) for n, o in DATA_CASES],
        "query": [run_case(n, o, "query", group) for n, o in QUERY_CASES],
    }
    torch.save(results, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _train_worker(rank: int, port: int, out: str, configs: list) -> None:
    from zotune.training.train import finetune

    _join(rank, port)
    results = [finetune(config).record() for config in configs]
    torch.save(results, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _spawn(worker, tmp_path, *args) -> list:
    spawn_local_group(worker, WORLD, str(tmp_path), *args)
    return [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def optimizer_runs(tmp_path_factory):
    return _spawn(_optimizer_worker, tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("case", range(len(DATA_CASES)), ids=[n for n, _ in DATA_CASES])
def test_data_parallel_matches_one_process_on_the_whole_batch(optimizer_runs, case):
    (rank0, sent), (rank1, _) = (runs["data"][case] for runs in optimizer_runs)
    assert torch.equal(rank0, rank1), "data-parallel processes drifted apart"
    reference, _ = run_case(*DATA_CASES[case])
    torch.testing.assert_close(rank0, reference, rtol=0, atol=1e-10)
    name, options = DATA_CASES[case]
    table_bytes = 16 * options.get("q", 1)  # a [q, 2] float64 table
    assert sent == table_bytes + (24 if name == "zo-sgd-cons" else 0)


@pytest.mark.parametrize("case", range(len(QUERY_CASES)), ids=[n for n, _ in QUERY_CASES])
def test_query_parallel_matches_one_process_with_all_queries(optimizer_runs, case):
    (rank0, sent), (rank1, _) = (runs["query"][case] for runs in optimizer_runs)
    # Each process restored a different probe: equal up to the last bits, not bit for bit.
    torch.testing.assert_close(rank0, rank1, rtol=0, atol=1e-12)
    reference, _ = run_case(*QUERY_CASES[case])
    torch.testing.assert_close(rank0, reference, rtol=0, atol=1e-10)
    assert sent == 16 * QUERY_CASES[case][1]["q"]


# The tiny run of conftest, one step longer, evaluated once, on an odd number of test examples
# (the processes' shards of it differ in size).
DISTRIBUTED_RUN = {"task__num_test": 7, "train__steps": 3, "train__eval_every": 3,
                   "train__eval_batch_size": 4}


TRAIN_CASES = {
    "zo-data": {},
    "zo-query": {"optimizer__q": 2, "train__parallel": "query"},
    "fo-ddp": {"optimizer__name": "fo-sgd", "optimizer__lr": 1e-2},
    "zo-lora": {"tuning__scheme": "lora", "optimizer__lr": 1e-2},
}


def test_finetune_under_two_processes_follows_the_single_process_run(
    sst2_dir, tmp_path, tiny_run_config
):
    from zotune.training.train import finetune

    configs = [
        tiny_run_config(sst2_dir, tmp_path / "dist" / name, **DISTRIBUTED_RUN, **changes)
        for name, changes in TRAIN_CASES.items()
    ]
    results = _spawn(_train_worker, tmp_path, configs)
    for (name, changes), rank0, rank1 in zip(TRAIN_CASES.items(), *results, strict=True):
        single = finetune(
            tiny_run_config(sst2_dir, tmp_path / "single" / name, **DISTRIBUTED_RUN, **changes)
        )
        assert rank0["world_size"] == 2
        assert rank0["test_accuracy"] == rank1["test_accuracy"]
        assert rank0["test_accuracy"] == pytest.approx(single.test_accuracy), name
        assert rank0["best_val_accuracy"] == pytest.approx(single.best_val_accuracy), name
        shared = torch.load(tmp_path / "dist" / name / "last.pt")["trainable"]
        alone = torch.load(tmp_path / "single" / name / "last.pt")["trainable"]
        for key in alone:
            torch.testing.assert_close(shared[key], alone[key], rtol=0, atol=1e-5)
        if name == "fo-ddp":
            trainable = sum(t.numel() * t.element_size() for t in alone.values())
            assert rank0["comm_bytes_per_step"] == trainable  # DDP all-reduces every gradient
        else:
            assert rank0["comm_bytes_per_step"] == 16 * changes.get("optimizer__q", 1)
        metrics = [json.loads(line) for line in (tmp_path / "dist" / name / "metrics.jsonl")
                   .read_text().splitlines()]
        assert all("comm_bytes" in m for m in metrics if "loss" in m)


def test_torchrun_runs_zotune_train(sst2_dir, tmp_path):
    """The documented command, end to end: two processes, the result written once."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), "-m", "zotune", "train",
        "model.name=random:tiny-llama", f"task.data_dir={sst2_dir}", "task.num_train=16",
        "task.num_val=6", "task.num_test=6", "train.steps=2", "train.batch_size=4",
        "train.eval_every=2", "train.progress=false", f"train.output_dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["comm_bytes_per_step"] == 16
    assert "data-parallel ZO probe all-reduce over 2 processes: 16 bytes" in done.stderr
    assert done.stdout.count("test accuracy") == 1, done.stdout  # the summary, from rank 0


def test_a_single_process_accelerate_launch_is_refused_by_name(sst2_dir, monkeypatch, capsys):
    """accelerate launch --num_processes 2 on a CPU (no --multi_cpu) starts one process; zotune
    says so instead of training one process quietly."""
    from zotune.cli import main

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = main(["train", "--model=random:tiny-llama", f"--data-dir={sst2_dir}", "--steps=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "accelerate launch started zotune as a single process" in err
    assert "torchrun --nproc-per-node N -m zotune train" in err


def test_shard_batch_needs_equal_shards():
    group = ProcessGroup(rank=1, world_size=3, local_rank=1, backend="gloo")
    assert shard_batch(list(range(6)), group) == [2, 3]
    with pytest.raises(ValueError, match="batch_size 4 is not divisible by the 3 processes"):
        shard_batch(list(range(4)), group)


def test_share_probes_rejects_first_order_and_unknown_modes():
    model, _, _ = _problem()
    group = ProcessGroup(rank=0, world_size=2, local_rank=0, backend="gloo")
    with pytest.raises(TypeError, match="FOSGD has no zeroth-order estimator"):
        share_probes(create_optimizer("fo-sgd", model.parameters(), lr=0.1), "data", group)
    with pytest.raises(ValueError, match="'model'"):
        share_probes(create_optimizer("zo-sgd", model.parameters(), lr=0.1), "model", group)


def test_traffic_benchmark_counts_zo_scalars_against_ddp_gradients():
    from zotune.profiling.traffic import measure_traffic, traffic_table

    rows = measure_traffic("tiny-opt", ("lora",), steps=1)
    by_case = {row["case"]: row for row in rows}
    assert by_case["zo-sgd, data-parallel"]["bytes_per_step"] == 16
    assert by_case["zo-sgd q=4, query-parallel"]["bytes_per_step"] == 64
    ddp = by_case["fo-sgd, DDP"]
    assert ddp["bytes_per_step"] == 4 * ddp["trainable"]  # every fp32 gradient, once
    assert "| lora | fo-sgd, DDP |" in traffic_table(rows)


# Models split across devices ---------------------------------------------------------------

TINY_LLAMA_SPLIT = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def _zo_trajectory(model, steps=3):
    optimizer = create_optimizer("zo-adam", model, lr=1e-3, seed=5)
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    losses = [float(optimizer.step(lambda: model(input_ids=ids, labels=ids).loss))
              for _ in range(steps)]
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_model_split_by_a_device_map_follows_the_unsplit_trajectory():
    from zotune.models.placement import place_on_devices
    from zotune.models.random_shapes import random_model

    whole = random_model("tiny-llama").model
    split = random_model("tiny-llama").model
    assert place_on_devices(split, TINY_LLAMA_SPLIT) == TINY_LLAMA_SPLIT
    assert hasattr(split.model.layers[1], "_hf_hook")  # accelerate moves activations
    split_losses, split_params = _zo_trajectory(split)
    whole_losses, whole_params = _zo_trajectory(whole)
    assert split_losses == whole_losses
    assert all(torch.equal(split_params[n], p) for n, p in whole_params.items())


def test_finetune_takes_a_device_map(sst2_dir, tmp_path, tiny_run_config):
    from zotune.training.train import finetune

    split = finetune(tiny_run_config(sst2_dir, tmp_path / "split", **DISTRIBUTED_RUN,
                                     model__device_map=TINY_LLAMA_SPLIT))
    whole = finetune(tiny_run_config(sst2_dir, tmp_path / "whole", **DISTRIBUTED_RUN))
    assert split.test_accuracy == whole.test_accuracy
    split_state = torch.load(tmp_path / "split" / "last.pt")["trainable"]
    whole_state = torch.load(tmp_path / "whole" / "last.pt")["trainable"]
    assert all(torch.equal(split_state[n], whole_state[n]) for n in whole_state)


@pytest.mark.parametrize(
    ("device_map", "message"),
    [
        ({**TINY_LLAMA_SPLIT, "model.layers.1": "disk"}, r"puts 'model.layers.1' on disk"),
        ("everywhere", "unknown device_map 'everywhere'"),
    ],
)
def test_unsupported_device_maps_are_refused_by_name(device_map, message):
    from zotune.models.errors import ModelError
    from zotune.models.placement import place_on_devices
    from zotune.models.random_shapes import random_model

    with pytest.raises(ModelError, match=message):
        place_on_devices(random_model("tiny-llama").model, device_map)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])  # tiny-opt ties its embeddings
@pytest.mark.parametrize("optimizer", ["zo-sgd", "zo-adam", "zo-sgd-cons"])
def test_cpu_offloaded_weights_follow_the_resident_trajectory(optimizer, shape):
    """Offloaded weights are meta tensors; ZO steps move their CPU storage instead. Tied
    weights (one CPU tensor behind two meta parameters) are one trainable tensor, as resident."""
    from zotune.models.offload import named_resident_parameters
    from zotune.models.placement import place_on_devices
    from zotune.models.random_shapes import random_model

    def trajectory(model):
        step = create_optimizer(optimizer, model, lr=1e-3, seed=5)
        ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
        losses = [float(step.step(lambda: model(input_ids=ids, labels=ids).loss))
                  for _ in range(3)]
        return losses, {n: p.detach().clone() for n, p in named_resident_parameters(model)}

    offloaded = random_model(shape).model
    place_on_devices(offloaded, "cpu_offload")
    assert {p.device.type for p in offloaded.parameters()} == {"meta"}
    (moved_losses, moved), (losses, params) = trajectory(offloaded), trajectory(
        random_model(shape).model
    )
    assert moved_losses == losses
    assert all(torch.equal(moved[n], p) for n, p in params.items())


@pytest.mark.parametrize(
    ("optimizer", "options", "message"),
    [
        ("fo-sgd", {}, "FOSGD cannot train offloaded .* gradients on the empty meta"),
        ("forward-grad", {}, "ForwardGrad cannot train offloaded .* tangents"),
        ("zo-sgd", {"hybrid_layers": 1}, "ZOSGD cannot train offloaded .* hybrid"),
    ],
)
def test_offloaded_weights_are_refused_where_only_resident_ones_work(optimizer, options, message):
    from zotune.models.offload import OffloadError
    from zotune.models.placement import place_on_devices
    from zotune.models.random_shapes import random_model

    model = random_model("tiny-llama").model
    place_on_devices(model, "cpu_offload")
    with pytest.raises(OffloadError, match=message):
        create_optimizer(optimizer, model, lr=1e-3, **options)
    with pytest.raises(OffloadError, match="pass the model itself"):
        create_optimizer("zo-sgd", model.parameters(), lr=1e-3)


def test_finetune_trains_cpu_offloaded_weights(sst2_dir, tmp_path, tiny_run_config):
    from zotune.training.train import finetune

    offloaded = finetune(tiny_run_config(sst2_dir, tmp_path / "off", **DISTRIBUTED_RUN,
                                         model__device_map="cpu_offload"))
    whole = finetune(tiny_run_config(sst2_dir, tmp_path / "whole", **DISTRIBUTED_RUN))
    assert offloaded.test_accuracy == whole.test_accuracy
    off_state = torch.load(tmp_path / "off" / "last.pt")["trainable"]
    whole_state = torch.load(tmp_path / "whole" / "last.pt")["trainable"]
    assert off_state.keys() == whole_state.keys()
    assert all(torch.equal(off_state[n], whole_state[n]) for n in whole_state)

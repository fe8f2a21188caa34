"""Spread a model over devices with accelerate (GPUs, CPU offload); disk offload is refused."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ModelError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential", "cpu_offload")


def place_on_devices(
    model: torch.nn.Module,
    device_map: str | dict[str, Any],
    execution_device: str | torch.device = "cpu",
) -> dict[str, str | int]:
    """Spread a model's modules over devices with accelerate; returns the map it used.

    ``device_map``: a strategy (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``:
    accelerate fills the GPUs in order, then offloads to the CPU; ``cpu_offload``: every
    weight in CPU memory, each module copied to ``execution_device`` for its forward) or an
    explicit ``{module: device}`` map (``0``, ``"cuda:1"``, ``"cpu"``). Hooks move
    activations between devices; every parameter stays on its device, where zotune perturbs,
    restores and updates it, and offloaded weights are moved in their CPU storage
    (:mod:`zotune.models.offload`: zeroth-order optimizers only). As
    directions are seeded per tensor, a split model follows the trajectory of an unsplit one
    (for ``distribution="auto"``, which draws from the table on the CPU and Gaussian
    elsewhere, as long as each tensor stays on the same kind of device).

    Disk offload is refused with the modules named: those weights are read from a memory
    map for every forward, with no resident tensor to move in place.
    """
    from accelerate import cpu_offload, dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if device_map == "cpu_offload":
        cpu_offload(model, execution_device=execution_device)
        return {"": "cpu"}
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ModelError(
                f"unknown device_map {device_map!r} (choose from {DEVICE_MAP_STRATEGIES} "
                "or give a {{module: device}} map)"
            )
        no_split = getattr(model, "_no_split_modules", None) or []
        max_memory = None
        if device_map != "sequential" and torch.cuda.device_count() > 1:
            max_memory = get_balanced_memory(
                model,
                no_split_module_classes=no_split,
                low_zero=device_map == "balanced_low_0",
            )
        resolved = infer_auto_device_map(
            model, max_memory=max_memory, no_split_module_classes=no_split
        )
    elif isinstance(device_map, dict):
        resolved = dict(device_map)
    else:
        raise ModelError(f"device_map must be a strategy name or a dict, got {device_map!r}")
    _refuse_offload(resolved)
    if set(resolved) == {""}:  # the whole model on one device: nothing to dispatch
        model.to(_map_device(resolved[""]))
        return resolved
    # force_hooks: even a map whose modules share a device runs through accelerate's hooks,
    # so a CPU-only machine exercises the same path as a multi-GPU one.
    dispatch_model(model, resolved, force_hooks=True)
    return resolved


def _map_device(device: str | int) -> torch.device:
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def _refuse_offload(device_map: dict[str, Any]) -> None:
    on_disk = [name for name, device in device_map.items() if str(device) == "disk"]
    if on_disk:
        raise ModelError(
            f"device_map puts {', '.join(repr(n) for n in on_disk[:3])}"
            f"{' …' if len(on_disk) > 3 else ''} on disk: disk-offloaded weights are read "
            "from a memory map for every forward and cannot be moved in place by zeroth-order "
            "steps; place those modules on a GPU or on the CPU"
        )

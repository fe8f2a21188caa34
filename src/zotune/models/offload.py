"""Weights that accelerate offloaded to CPU memory: where a ZO step finds them.

With CPU offload (``device_map`` placing modules on ``"cpu"`` while the model executes on a
GPU, or :func:`accelerate.cpu_offload`) a module's parameters are empty ``meta`` tensors and
the values live in a CPU state dict (its hook's ``weights_map``), copied to the execution
device before each forward of the module. A zeroth-order step needs nothing but forwards, so
perturbing, restoring and updating those CPU tensors in place is all it takes: the next
forward sees the moved weights. First-order training cannot do this (its gradients would land
on the meta tensors), nor can Forward-Grad (its dual tangents do not survive the copy), and
disk offload reads fresh copies from a memory map on every forward; all three are refused.
"""

from __future__ import annotations

import torch


class OffloadError(ValueError):
    """Offloaded weights used in a way that cannot work; the message says which."""


def _align_hooks(module: torch.nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def offloaded_storage(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: the CPU tensor holding its value}`` for every offloaded parameter."""
    storage: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        for hook in _align_hooks(module):
            if not getattr(hook, "offload", False) or getattr(hook, "weights_map", None) is None:
                continue
            weights = hook.weights_map
            if not isinstance(getattr(weights, "dataset", None), dict):
                raise OffloadError(
                    f"module {prefix or '<root>'!r} is offloaded to disk: its weights are read "
                    "from a memory map for every forward and cannot be moved in place"
                )
            recurse = bool(getattr(hook, "place_submodules", False))
            for name, param in module.named_parameters(recurse=recurse):
                if param.device.type == "meta":
                    storage[f"{prefix}.{name}" if prefix else name] = weights[name]
    return storage


def _storage_by_identity(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """``{id(meta parameter): the CPU tensor holding its value}``, each tensor marked
    trainable as its parameter is."""
    storage = offloaded_storage(model)
    held = {}
    for name, param in model.named_parameters():
        if name in storage:
            storage[name].requires_grad_(param.requires_grad)
            held[id(param)] = storage[name]
    return held


def named_resident_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``named_parameters()`` with each offloaded parameter replaced by the tensor holding its
    value. Tied weights (an input embedding shared with the LM head) come out of accelerate's
    offload as two meta parameters over one CPU tensor: that tensor is listed once, under its
    first name, as ``named_parameters()`` lists a tied resident weight once."""
    held = _storage_by_identity(model)
    resident, seen = [], set()
    for name, param in model.named_parameters():
        value = held.get(id(param), param)
        if _memory_of(value) not in seen:
            seen.add(_memory_of(value))
            resident.append((name, value))
    return resident


def _memory_of(tensor: torch.Tensor) -> tuple:
    """What identifies a tensor's values: two views of one CPU storage (accelerate's two
    entries for a tied weight) are the same values; meta tensors have no memory to compare."""
    if tensor.device.type == "meta":
        return ("object", id(tensor))
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()))


def substitute_offloaded(param_groups: list[dict], model: torch.nn.Module) -> int:
    """Replace the meta parameters of ``param_groups`` by their offloaded storage in place,
    each storage tensor once (tied weights: see :func:`named_resident_parameters`); returns
    how many were replaced. Raises if a meta parameter has no storage."""
    held = _storage_by_identity(model)
    replaced, seen = 0, set()
    for group in param_groups:
        params = []
        for param in group["params"]:
            value = held.get(id(param))
            if value is None and param.device.type == "meta":
                raise OffloadError(
                    "a parameter is on the meta device without offloaded storage "
                    f"(shape {tuple(param.shape)}); was the model loaded with empty weights?"
                )
            value = param if value is None else value
            if _memory_of(value) in seen:
                continue  # the second meta parameter of a tied weight
            seen.add(_memory_of(value))
            replaced += value is not param
            params.append(value)
        group["params"] = params
    return replaced


def execution_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: the root hook's execution device, else its parameters'."""
    for module in (model, *model.modules()):
        for hook in _align_hooks(module):
            device = getattr(hook, "execution_device", None)
            if device is not None:
                return torch.device(device) if not isinstance(device, int) else (
                    torch.device("cuda", device)
                )
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")

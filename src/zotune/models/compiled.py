"""Compiled forwards: ``zotune.compile_model(model)`` (``--compile``, ``train.compile: true``).

A zeroth-order step is forwards and in-place moves of the weights, so the forward is most of
its cost and the part a compiler can speed up. ``compile_model`` compiles the module's call
with ``torch.compile`` (``nn.Module.compile``: the model object, its parameters and its
adapters stay as they are, so the optimizer, the tuning scheme — LoRA, prefix, prompt — and
checkpoints see the same module) for every forward: the ZO probes and evaluation.

What ZO needs of it:

* weights moved in place between forwards must not recompile: inductor (without freezing,
  its default) lifts parameters as inputs of the graph and guards on their identity, shape
  and dtype, never on their values, so a perturbed or updated weight reuses the graph;
* batches of different lengths: shapes are compiled dynamic (``dynamic=True``), so a new
  sequence length or batch size reuses the graph instead of compiling one per shape;
* one trace per graph: with dynamic shapes dynamo also traces Python floats as symbols,
  and a model's float constants (norm epsilons, scales) then fail to become tensors and
  restart the whole trace with them fixed — about half of the compile time of a forward.
  ``compile_model`` traces with floats specialised (``specialize_float``) from the start;
* the casts of ``model.matmul=float32``
  (:class:`zotune.models.matmul.Float32MatmulLinear`): the layer rounds its operands to bf16
  before an fp32 product. Traced through, inductor drops a round trip ``x.to(bf16).float()``
  by default (fp32 products of the unrounded values) and turns the backward's products of
  rounded operands into bf16 GEMMs (7× slower than eager on an AVX2 CPU), so the product is
  an operator of its own (:func:`zotune.models.matmul.rounded_linear`) that the compiled
  graph calls as it is; its backward, traced, rounds too, and a model whose fp32 weights
  compute under autocast is compiled with ``emulate_precision_casts``, so every cast rounds
  as it does eagerly;
* no compiler backend (inductor's CPU code needs a C++ compiler): one warning line, and the
  model runs eagerly.

The first forward of each new graph costs the compilation (tens of seconds on a CPU);
``zotune profile --step-cost --compile`` measures it and the steps it takes to pay back.
"""

from __future__ import annotations

import functools
import shutil
import warnings
from collections.abc import Callable

import torch

from .matmul import emulates_autocast

BACKEND = "inductor"


def backend_unavailable() -> str | None:
    """Why ``torch.compile``'s inductor backend cannot run here, or None."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    try:
        from torch._inductor import config as inductor_config
    except Exception as error:  # inductor missing from this build
        return f"torch inductor unavailable ({type(error).__name__}: {error})"
    compiler = inductor_config.cpp.cxx
    names = [c for c in (compiler if isinstance(compiler, tuple) else (compiler,)) if c]
    if not any(shutil.which(name) for name in names or ("g++", "clang++", "c++")):
        return "no C++ compiler for inductor's CPU code"
    return None


def compile_model(model: torch.nn.Module, *, dynamic: bool = True) -> torch.nn.Module:
    """Compile ``model``'s forward in place (``model.compile``) and return it; without a
    usable backend warn once and return it uncompiled (eager)."""
    reason = backend_unavailable()
    if reason is not None:
        warnings.warn(f"zotune: compile_model falls back to eager: {reason}", RuntimeWarning,
                      stacklevel=2)
        return model
    options = {"emulate_precision_casts": True} if emulates_autocast(model) else None
    model.compile(backend=BACKEND, dynamic=dynamic, options=options)
    model._compiled_call_impl = with_floats_specialised(model._compiled_call_impl)
    return model


def with_floats_specialised(compiled: Callable) -> Callable:
    """``compiled`` traced with Python floats as constants (dynamo's ``specialize_float``):
    the config is read while tracing, which happens inside the call."""
    @functools.wraps(compiled)
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(specialize_float=True):
            return compiled(*args, **kwargs)

    return call


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether ``model``'s calls go through a compiled wrapper."""
    return getattr(model, "_compiled_call_impl", None) is not None

"""``zotune profile --estimate-only``: the analytic memory table, for models too big to run.

Each spec's model is built on PyTorch's meta device (shapes and dtypes, no storage), its
tuning scheme applied, and :func:`zotune.profiling.memory_model.estimate_memory` evaluated on it, so
LLaMA-7B's table costs well under a second and no memory. ``model`` is ``random:<shape>``,
the embedded ``smollm2-135m``, or a hub id / folder whose config can be read offline.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ..utils.tables import table
from .build import attention_for
from .render import estimate_breakdown, mb
from .spec import ProfileSpec


def _config(model: str):
    from transformers import AutoConfig

    from ..models.embedded import EMBEDDED_MODEL
    from ..models.random_shapes import shape_config

    if model.startswith("random:"):
        return shape_config(model.removeprefix("random:"))
    if model == EMBEDDED_MODEL:
        return shape_config(EMBEDDED_MODEL)
    return AutoConfig.from_pretrained(model)


def meta_model(spec: ProfileSpec):
    """The spec's model with its tuning scheme, on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from ..models.anatomy import config_kind
    from ..models.loading import resolve_dtype
    from ..tuning.schemes import apply_tuning

    config = _config(spec.model)
    auto = AutoModelForMaskedLM if config_kind(config) == "masked" else AutoModelForCausalLM
    attn = attention_for(spec.method, spec.attn_implementation)
    with torch.device("meta"):
        model = auto.from_config(config, dtype=resolve_dtype(spec.dtype), attn_implementation=attn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_tuning(model, spec.scheme).eval()


def estimate_for(spec: ProfileSpec, model, *, device=None):
    """:func:`zotune.profiling.memory_model.estimate_memory` of the spec's step on ``model``
    (built for the spec), on ``device`` (default: the spec's)."""
    from ..models.anatomy import accepts_logits_to_keep
    from .memory_model import estimate_memory

    return estimate_memory(
        model,
        spec.method,
        batch_size=spec.batch_size,
        seq_len=spec.seq_len,
        device=spec.device if device is None else device,
        logits_kept=1 if accepts_logits_to_keep(model) else spec.seq_len,
        distribution=spec.options.get("distribution", "auto"),
        options=spec.options,
        micro_batch_size=spec.micro_batch_size,
    )


def estimate_specs(specs: Sequence[ProfileSpec]) -> list[dict[str, Any]]:
    """``[{"spec": …, "estimate": MemoryEstimate.as_dict()}]`` for every spec, in order."""
    from dataclasses import asdict

    rows = []
    for spec in specs:
        spec.check()
        estimate = estimate_for(spec, meta_model(spec))
        rows.append({"spec": asdict(spec), "estimate": estimate.as_dict()})
    return rows


def estimate_table(rows: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    header = ("method", "scheme", "B×T", "trainable MB", "est. MB", "estimate breakdown (MB)")
    body = [
        (
            ProfileSpec(**row["spec"]).method_label(),  # with its precision, as measured rows
            row["spec"]["scheme"],
            ProfileSpec(**row["spec"]).shape_label(),
            mb(row["estimate"]["trainable"]),
            mb(row["estimate"]["total"]),
            estimate_breakdown(row["estimate"]),
        )
        for row in rows
    ]
    return table(header, body, markdown=markdown)


def render_estimates_markdown(rows: Sequence[dict[str, Any]], command: str | None = None) -> str:
    """The estimates as a Markdown page: the command that reproduces it (when given), what
    they are, the table."""
    spec = rows[0]["spec"] if rows else {}
    dtypes = ", ".join(dict.fromkeys(ProfileSpec(**row["spec"]).precision() for row in rows))
    lines = ["# Memory estimates", ""]
    if command:
        lines += [f"reproduce: `{command}`", ""]
    lines += [
        f"{spec.get('model')}, {dtypes or spec.get('dtype')}, {spec.get('device')}: analytic "
        "(`zotune.profiling.memory_model.estimate_memory` on a meta-device model), "
        "not measured.",
        "",
        estimate_table(rows, markdown=True),
    ]
    return "\n".join(lines) + "\n"

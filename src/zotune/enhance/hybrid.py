"""Hybrid ZO/FO: the shallow layers trained by ZO, the deep layers by backprop.

With the transformer layers L_1 … L_n and a split k, the parameters are cut in two:

* the ZO part θ_Z: embeddings and layers 1 … k (and, when k = n, the final norm and head:
  k = n is plain ZO);
* the FO part θ_F: layers k + 1 … n, the final norm and the head (k = 0 is plain FO).

A head tied to the input embedding (OPT, SmolLM2, …) is one tensor, and it goes with the
embeddings (the ZO part when k > 0): in the FO part it would require grad at the model's
input, so autograd would record every layer's activations and the hybrid would cost what FO
costs (``tests/test_enhance.py`` checks the placement on tied and untied models). The FO part
may have its own learning rate (``fo_lr``): one η for both parts makes the k = 0 row FO-SGD
at a ZO learning rate.

One step (loss f(θ_Z, θ_F))::

    g_F = ∇_{θ_F} f(θ_Z, θ_F)                       one forward + backward, θ_Z frozen
    ĝ_Z = RGE of θ_Z ↦ f(θ_Z, θ_F)                   2q forwards, no graph
    θ_Z ← θ_Z − η rule(ĝ_Z),  θ_F ← θ_F − η rule(g_F)

During the backprop pass the ZO part's tensors have ``requires_grad=False``, so autograd
records nothing until the first FO-part tensor is used: the ZO part runs like inference and
its activations are freed as it goes, the hidden state entering layer k + 1 is a leaf
without history, and only the FO part's activations are kept for the backward. Activation
memory therefore scales with n − k layers (plus the head) instead of n; gradients exist for
θ_F only. Both parts use the optimizer's own update rule, so hybrid ZO-Adam is Adam on both.

The paper's authors did not release their hybrid code; this follows the paper's description
(ZO-Bench §5, "ZO and FO hybrid training").

The FO part differs from zotune's FO baselines (FO-SGD, FO-Adam: train mode, gradient norm
clipped at 1.0, as HF's Trainer ran the paper's FO runs) in two ways, kept on purpose and
stated here: it runs in eval mode, because one step's forward passes all see the mode the
training loop sets for a ZO step, and the ZO probes need dropout off so that f(θ + εz) and
f(θ − εz) are the same function; and its gradient is not clipped, because ``max_grad_norm``
is a first-order optimizer's option and the hybrid is a ZO optimizer. On models without
dropout (LLaMA, the SmolLM2 of the ``cpu-studies`` suite) the mode changes nothing; the
clipping changes steps whose ‖g_F‖ exceeds 1, so the ``cpu-studies`` row ``hybrid-k0-fo``
(k = 0: every layer by backprop) is unclipped FO-SGD, not the ``cpu`` table's FO-SGD.
"""

from __future__ import annotations

import torch

from .blocks import block_names, find_layers


def resolve_split(model: torch.nn.Module, hybrid_layers: int | float) -> tuple[int, int]:
    """``(k, n)``: how many of the model's n layers are ZO, from an int or a fraction."""
    _, layers = find_layers(model)
    n = len(layers)
    bad = ValueError(
        f"Invalid hybrid_layers: {hybrid_layers!r} (the model has {n} layers: an int in "
        f"[0, {n}] or a fraction in [0.0, 1.0])"
    )
    if isinstance(hybrid_layers, bool):
        raise bad
    if isinstance(hybrid_layers, int):
        if not 0 <= hybrid_layers <= n:
            raise bad
        return hybrid_layers, n
    if isinstance(hybrid_layers, float) and 0.0 <= hybrid_layers <= 1.0:
        return round(hybrid_layers * n), n
    raise bad


def split_hybrid(
    model: torch.nn.Module, hybrid_layers: int | float, fo_lr: float | None = None
) -> list[dict]:
    """Param groups ``{"params": [...], "part": "zo" | "fo"}`` (empty parts left out); the
    FO group carries ``"lr": fo_lr`` when it is given."""
    k, n = resolve_split(model, hybrid_layers)
    params = dict(model.named_parameters())
    parts: dict[str, list[torch.Tensor]] = {"zo": [], "fo": []}
    for name, block in block_names(model, "layer").items():
        if block == "embeddings":
            zeroth = k > 0
        elif block == "head":
            zeroth = k == n
        else:
            zeroth = int(block.split(".")[1]) < k
        parts["zo" if zeroth else "fo"].append(params[name])
    groups = [{"params": members, "part": part} for part, members in parts.items() if members]
    for group in groups:
        if group["part"] == "fo" and fo_lr is not None:
            group["lr"] = fo_lr
    return groups

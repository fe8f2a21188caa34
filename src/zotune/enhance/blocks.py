"""Block-wise ZO: partition the trainable parameters by the model's own module structure.

A two-point estimate along one direction z over all d parameters has variance growing with d
(E‖ĝ‖² ≈ (d + 2)‖∇f‖² for Gaussian z). Block-wise ZO (ZO-Bench, §5) splits θ into blocks
θ = (θ_1, …, θ_B) and estimates each block's gradient along its own direction z_b::

    ĝ_b = [(f(θ + ε z_b) − f(θ − ε z_b)) / (2ε)] · z_b,     z_b supported on block b

so each estimate pays for d_b dimensions instead of d, at 2q forward passes per block
(2qB per step). Two modes:

* ``coordinate``: block-coordinate descent; block b is probed at the parameters already
  updated for blocks < b, and updated at once.
* ``all``: every block is probed at the same θ_t, then all are updated together (the
  estimate of the full gradient is the concatenation (ĝ_1, …, ĝ_B)).

Blocks come from the module tree, never from a model-name table: the transformer layers are
the ``ModuleList`` holding the most parameters (``model.model.layers``,
``model.model.decoder.layers``, ``roberta.encoder.layer``, inside a peft wrapper too);
the other trainable tensors form the ``embeddings`` block when they belong to an
``nn.Embedding`` or to a module path naming an embedding (``embed…``, ``wte``/``wpe``, peft's
``prompt_encoder`` for prompt and prefix tuning), and the ``head`` block otherwise (final
norm, LM head). Registration order is no guide: OPT registers its final norm before its
layers. Levels:

* ``mlp-attn`` (the default, ZO-Bench's level): in each layer the attention module is one block
  (its norms excepted) and every other module owning trainable tensors is its own block (OPT's
  ``fc1``, ``fc2``, ``self_attn_layer_norm`` and ``final_layer_norm``; LLaMA's ``gate_proj``,
  ``up_proj``, ``down_proj``, ``input_layernorm`` and ``post_attention_layernorm``); outside
  the layers, each embedding, the final norm and an untied LM head are blocks of their own.
  This is ZO-LLM's ``mlp-attn`` (``OPT_PERTURBATION_LEVEL_TO_REGEX`` in zo-bench/utils.py,
  OPT only there): 5L + 3 blocks for an L-layer OPT, 6L + 3 for LLaMA with an untied head;
* ``transformer-block`` (ZO-LLM's default ``--perturbed_module_level``, run.py:149): each
  layer is one block; outside the layers each embedding module, the final norm and an untied
  LM head are blocks of their own, as in ``mlp-attn``. ZO-LLM's regex (utils.py:27-29) matches
  ``model.decoder.layers.<i>``, ``model.decoder.embed_*`` and ``model.decoder.final_layer_norm``:
  L + 3 blocks for an L-layer OPT (27 for a 24-layer one: ``embed_tokens``, ``embed_positions``,
  24 layers, the final LayerNorm; the head is tied to ``embed_tokens``). ZO-LLM has no rule for
  other models (run.py:534 raises); zotune's analogue gives LLaMA L + 2 blocks (``embed_tokens``,
  L layers, ``norm``) plus one for an untied ``lm_head``, a tensor ZO-LLM's regex would never
  perturb. The paper's text counts 26 blocks for OPT-1.3B (one embedding block, 24 layers, the
  head): that is the ``layer`` level below. Under prefix tuning ZO-LLM's prefixes live inside
  each layer's attention (prefix_tuning.py), so they join their layer's block; peft keeps all
  layers' prefixes in one ``prompt_encoder``, which is one block of its own here;
* ``layer``: embeddings, each layer, head (the paper text's count: L + 2);
* ``sublayer``: each layer split in two: ``attn`` (the tensors of children whose name holds
  "attn" or "attention", norms excepted) and ``mlp`` (the rest of the layer, norms included:
  names like ``post_attention_layernorm`` say nothing reliable about which half they feed);
* ``linear``: every module that owns trainable tensors directly (each linear layer,
  embedding, norm; each LoRA factor).

Blocks without a trainable tensor are dropped, so each trainable tensor is in exactly one
block. The blocks are torch param groups with a ``"block"`` key naming them, which keeps
``param_groups``, schedulers and ``state_dict`` working as for any torch optimizer.

Seeds, against the research code: ZO-LLM draws one seed per step and restarts torch's global
generator at it for every block (trainer.py:864, 725 and 900), so blocks whose tensors have the
same shapes in the same order (all decoder layers) get the *same* z. zotune derives each block's
seed from (step seed, block number), so the blocks' directions are independent. Each block's
estimate has the same law either way (its z is N(0, I) on that block, probed at the current θ),
so the expected step is the same; what differs is the correlation between blocks' updates in one
step (ZO-LLM's layers all move along one shared z, scaled by their own c_b). zotune keeps
independent blocks, the rule the paper states (§5: each block its own direction); it cannot
give ZO-LLM's shared draw, because its direction streams are keyed by each tensor's index.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK_LEVELS = ("mlp-attn", "transformer-block", "layer", "sublayer", "linear")
BLOCK_MODES = ("coordinate", "all")

# Module-path parts that mark input-side tensors besides "embed…" (GPT-2's wte/wpe, peft's
# prompt and prefix encoders).
_INPUT_SIDE = ("prompt_encoder", "wte", "wpe")


def find_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the transformer layers: the list with most parameters."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise ValueError(
            f"cannot find the transformer layers of {type(model).__name__}: no ModuleList "
            "with parameters"
        )
    return best


def _layer_of(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :].split(".", 1)[0])


def _is_norm(module: torch.nn.Module) -> bool:
    return "Norm" in type(module).__name__


def _sublayer(name: str, prefix: str, owner: torch.nn.Module) -> str:
    child = name[len(prefix) :].split(".")[1]
    in_attention = "attn" in child or "attention" in child
    return "attn" if in_attention and not _is_norm(owner) else "mlp"


def _module_block(name: str, prefix: str, layer: int, owner: torch.nn.Module) -> str:
    """``mlp-attn`` inside layer ``layer``: its attention module, or the owning module's path."""
    path = name[len(prefix) :].split(".")[1:-1]  # after the layer index, before the tensor
    if not path:
        return f"layer.{layer}"
    in_attention = "attn" in path[0] or "attention" in path[0]
    if in_attention and not _is_norm(owner):
        return f"layer.{layer}.attn"
    return ".".join([f"layer.{layer}", *path])


def _side(name: str, owner: torch.nn.Module) -> str:
    path = name.split(".")[:-1]
    input_side = isinstance(owner, torch.nn.Embedding) or any(
        part in _INPUT_SIDE or "embed" in part for part in path
    )
    return "embeddings" if input_side else "head"


def block_names(model: torch.nn.Module, level: str) -> dict[str, str]:
    """Trainable parameter name → block name, in the model's registration order."""
    if level not in BLOCK_LEVELS:
        raise ValueError(f"Unknown block_level: {level!r} (choose from {BLOCK_LEVELS})")
    layers_name, _ = find_layers(model)
    prefix = f"{layers_name}." if layers_name else ""
    modules = dict(model.named_modules())
    assignment: dict[str, str] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner_name = name.rsplit(".", 1)[0] if "." in name else ""
        owner = modules[owner_name]
        layer = _layer_of(name, prefix)
        if level == "linear":
            assignment[name] = owner_name or name
        elif layer is None and level in ("mlp-attn", "transformer-block"):
            assignment[name] = f"{_side(name, owner)}.{owner_name or name}"
        elif layer is None:
            assignment[name] = _side(name, owner)
        elif level == "mlp-attn":
            assignment[name] = _module_block(name, prefix, layer, owner)
        elif level in ("layer", "transformer-block"):
            assignment[name] = f"layer.{layer}"
        else:
            assignment[name] = f"layer.{layer}.{_sublayer(name, prefix, owner)}"
    return assignment


def partition(model: torch.nn.Module, level: str = "mlp-attn") -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as torch param groups, one per block.

    Each group is ``{"params": [...], "block": name}``, in the order the model registers
    its parameters (embeddings first, head last). Pass them to any zotune ZO optimizer
    with ``block_level`` set, or let ``create_optimizer(name, model, block_level=...)``
    call this for you.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    params = dict(model.named_parameters())
    for name, block in block_names(model, level).items():
        groups.setdefault(block, []).append(params[name])
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to partition")
    def position(block: str) -> int:  # input side first, output side last
        return {"embeddings": 0, "head": 2}.get(block.split(".")[0], 1)

    ordered = sorted(groups.items(), key=lambda item: position(item[0]))
    return [{"params": members, "block": block} for block, members in ordered]

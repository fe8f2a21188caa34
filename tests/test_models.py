"""Models: random shapes, the byte tokenizer, local folders, bad inputs, the embedded model."""

from __future__ import annotations

import importlib.metadata

import huggingface_hub.constants
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    LlamaConfig,
    OPTConfig,
    RobertaConfig,
    ViTConfig,
)

from zotune.evaluation.scoring import Scorer
from zotune.models import embedded
from zotune.models.anatomy import accepts_logits_to_keep, base_model, config_kind, position_limit
from zotune.models.byte_tokenizer import (
    BOS_ID,
    BYTE_VOCAB_SIZE,
    EOS_ID,
    byte_tokenizer,
    with_special_tokens,
)
from zotune.models.embedded import EMBEDDED_INSTALL
from zotune.models.errors import ModelError
from zotune.models.loading import load_model
from zotune.models.random_shapes import SHAPES, random_model, shape_config
from zotune.tasks.example import Example

TINY_SHAPES = {
    "tiny-llama": "causal",
    "tiny-opt": "causal",
    "tiny-mistral": "causal",
    "tiny-roberta": "masked",
}

# Published parameter counts of the real models whose configs the profiling shapes copy.
PROFILING_SHAPES = {
    "opt-125m": 125_239_296,
    "opt-1.3b": 1_315_758_080,
    "opt-13b": 12_853_473_280,
    "llama-7b": 6_738_415_616,
    "smollm2-135m": 134_515_008,
}

UNICODE_TEXTS = ["It was great", " leading space", "naïve café — 東京 🙂", "tabs\tand\nlines", ""]


def test_every_shape_is_tested():
    assert set(SHAPES) == set(TINY_SHAPES) | set(PROFILING_SHAPES)


@pytest.mark.parametrize("shape, kind", TINY_SHAPES.items())
def test_tiny_shape_builds_and_runs_a_padded_batch(shape, kind):
    loaded = random_model(shape)
    assert (loaded.kind, loaded.name) == (kind, f"random:{shape}")
    assert not loaded.model.training
    config = loaded.model.config
    assert config.num_hidden_layers == 2 and 32 <= config.hidden_size <= 64
    assert config.vocab_size >= len(loaded.tokenizer) == BYTE_VOCAB_SIZE
    batch = loaded.tokenizer(["a", "a longer text"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0, "padding must be on the left"
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("shape, expected", PROFILING_SHAPES.items())
def test_profiling_shape_has_the_real_models_parameter_count(shape, expected):
    config = shape_config(shape)
    with torch.device("meta"):  # no memory: 7B parameters would need 27 GB
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert config_kind(config) == "causal"


def test_random_model_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    first = random_model("tiny-llama", seed=3).model.state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    again = random_model("tiny-llama", seed=3).model.state_dict()
    other = random_model("tiny-llama", seed=4).model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_random_model_dtype_and_attention(dtype):
    loaded = random_model(
        "tiny-opt", dtype=str(dtype).removeprefix("torch."), attn_implementation="eager"
    )
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    assert loaded.model.config._attn_implementation == "eager"


# The byte tokenizer --------------------------------------------------------------------------


@pytest.mark.parametrize("text", UNICODE_TEXTS)
@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_byte_tokenizer_round_trips_any_text(text, kind):
    tokenizer = byte_tokenizer(kind)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())
    assert all(0 <= i < BYTE_VOCAB_SIZE for i in ids)
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_frames_text_like_the_model_kind():
    causal, masked = byte_tokenizer("causal"), byte_tokenizer("masked")
    x = causal("x", add_special_tokens=False)["input_ids"]
    assert causal("x")["input_ids"] == [BOS_ID, *x]
    assert masked("x")["input_ids"] == [BOS_ID, *x, EOS_ID]
    assert masked.build_inputs_with_special_tokens([7, 8]) == [BOS_ID, 7, 8, EOS_ID]
    assert causal.build_inputs_with_special_tokens([7, 8]) == [BOS_ID, 7, 8]
    assert masked("<mask>", add_special_tokens=False)["input_ids"] == [masked.mask_token_id]
    assert (masked.pad_token_id, masked.padding_side) == (1, "left")


def test_with_special_tokens_follows_a_saved_and_reloaded_tokenizer(tmp_path):
    """The generic framing works for plain transformers tokenizers, not only ByteTokenizer."""
    from transformers import AutoTokenizer

    byte_tokenizer("masked").save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert not hasattr(reloaded, "build_inputs_with_special_tokens")  # transformers 5
    assert with_special_tokens(reloaded, [7, 8]) == [BOS_ID, 7, 8, EOS_ID]


# Causal or masked from the config ----------------------------------------------------------


@pytest.mark.parametrize(
    "config, kind",
    [
        (LlamaConfig(), "causal"),
        (OPTConfig(), "causal"),
        (RobertaConfig(architectures=["RobertaForMaskedLM"]), "masked"),
        (RobertaConfig(architectures=["RobertaForCausalLM"]), "causal"),
        (RobertaConfig(), "masked"),  # no architectures: an encoder with an MLM head
        (BertConfig(), "masked"),
    ],
)
def test_config_kind(config, kind):
    assert config_kind(config) == kind


def test_config_kind_rejects_a_model_without_an_lm_head():
    with pytest.raises(ModelError, match="'vit' is neither a causal nor a masked"):
        config_kind(ViTConfig())


# Local folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_load_model_from_a_local_folder(shape, tmp_path):
    saved = random_model(shape)
    saved.model.save_pretrained(tmp_path)
    saved.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16", attn_implementation="eager")
    assert (loaded.kind, loaded.name) == (saved.kind, str(tmp_path))
    expected = AutoModelForMaskedLM if saved.kind == "masked" else AutoModelForCausalLM
    assert type(loaded.model) is type(expected.from_config(saved.model.config))
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.tokenizer.padding_side == "left"
    assert not loaded.model.training


def test_load_model_pads_with_eos_when_the_tokenizer_has_no_pad_token(tmp_path):
    saved = random_model("tiny-llama")
    saved.model.save_pretrained(tmp_path)
    tokenizer = saved.tokenizer
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id == EOS_ID
    assert loaded.tokenizer.padding_side == "left"


# Bad inputs: one-line errors that name the value ---------------------------------------------


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "call, args, kwargs, fragments",
    [
        (random_model, ["tiny-gpt"], {}, ["'tiny-gpt'", "tiny-llama", "llama-7b"]),
        (random_model, ["tiny-llama"], {"dtype": "float64"}, ["'float64'", "bfloat16"]),
        (load_model, ["x"], {"dtype": "fp16"}, ["'fp16'"]),
        (load_model, ["x"], {"device": "tpu"}, ["'tpu'", "auto"]),
        (load_model, ["x"], {"device": "cuda:x"}, ["'cuda:x'"]),
        (load_model, ["./no/such/folder"], {}, ["'./no/such/folder'", "does not exist"]),
    ],
)
def test_bad_input_is_a_one_line_error_naming_it(call, args, kwargs, fragments):
    message = _one_line_error(call, *args, **kwargs)
    for fragment in fragments:
        assert fragment in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_an_error():
    assert "CUDA is not available" in _one_line_error(load_model, "x", device="cuda")


def test_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    message = _one_line_error(load_model, str(tmp_path))
    assert str(tmp_path) in message and "not a model folder" in message


def test_a_folder_whose_config_names_no_model_type(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    message = _one_line_error(load_model, str(tmp_path))
    assert f"could not load model '{tmp_path}'" in message


def test_an_unreachable_hub_id_says_offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = _one_line_error(load_model, "zotune-tests/no-such-model")
    assert "could not load model 'zotune-tests/no-such-model' (offline?" in message


# The embedded model --------------------------------------------------------------------------


def test_embedded_model_without_its_package_names_the_install_command(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.importlib.metadata, "distribution", missing)
    message = _one_line_error(load_model, None, cache_dir=tmp_path)
    assert EMBEDDED_INSTALL in message


def test_a_failed_conversion_leaves_no_cache_behind(monkeypatch, tmp_path):
    def crash(gguf, folder):
        (folder / "config.json").write_text("{}")  # half-written
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(embedded, "embedded_gguf_file", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(embedded, "_dequantize_gguf", crash)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        load_model("smollm2-135m", cache_dir=tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_embedded_model_scores_sst2_and_loads_from_the_cache(
    embedded_model, embedded_cache_dir, monkeypatch
):
    loaded = embedded_model
    assert (loaded.name, loaded.kind) == ("smollm2-135m", "causal")
    folder = embedded_cache_dir / "models" / "smollm2-135m"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["smollm2-135m"]  # no staging left
    assert loaded.model.config.num_hidden_layers == shape_config("smollm2-135m").num_hidden_layers

    scorer = Scorer(loaded.model, loaded.tokenizer, kind=loaded.kind)
    examples = [
        Example(("A gorgeous, witty, seductive movie. It was",) * 2, (" terrible", " great"), 1),
        Example(("A dull, lifeless mess. It was",) * 2, (" terrible", " great"), 0),
    ]
    with torch.no_grad():
        scores = scorer.scores(scorer.encode(examples))
        loss = scorer.loss(scorer.encode_for_loss(examples))
    assert torch.isfinite(scores).all() and torch.isfinite(loss)
    assert (scores > -15).all() and (scores < 0).all()  # a trained LM, not a random one

    def no_conversion(*args):
        raise AssertionError("the second load converted the GGUF file again")

    # The patch is the check that nothing is converted again; a wall-clock bound would
    # assume one machine's speed and load.
    monkeypatch.setattr(embedded, "_dequantize_gguf", no_conversion)
    again = load_model("smollm2-135m", cache_dir=embedded_cache_dir)
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name


@pytest.mark.parametrize(
    ("shape", "limit"),
    [("tiny-llama", 512), ("tiny-opt", 512), ("tiny-roberta", 514 - 2)],
)
def test_position_limit_leaves_out_robertas_reserved_positions(shape, limit):
    assert position_limit(shape_config(shape)) == limit


def test_position_limit_of_a_config_without_one_is_none():
    assert position_limit(object()) is None


@pytest.mark.parametrize(
    ("shape", "scheme", "keeps"),
    [("tiny-llama", "full", True), ("tiny-llama", "lora", True), ("tiny-roberta", "lora", False)],
)
def test_base_model_unwraps_peft_and_logits_to_keep_reads_it(tiny_model, shape, scheme, keeps):
    model, loaded = tiny_model(shape, scheme)
    assert base_model(model) is loaded.model
    assert accepts_logits_to_keep(model) is keeps

"""Tuning schemes through peft, checked with real forward passes of every tiny shape.

The scorer's fast path (left padding, ``logits_to_keep``, virtual-token offsets) is checked
against a reference that scores every candidate on its own, unpadded, from full logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zotune.evaluation.scoring import Scorer
from zotune.models.byte_tokenizer import with_special_tokens
from zotune.models.random_shapes import random_model
from zotune.optim import create_optimizer
from zotune.tasks.example import Example
from zotune.tuning import apply_tuning, count_parameters, scheme_keys
from zotune.tuning.lora import attention_projections

SHAPES = ["tiny-llama", "tiny-opt", "tiny-mistral", "tiny-roberta"]

# Multi-token candidates and contexts of different lengths (so rows are padded) ...
EXAMPLES = [
    Example(contexts=("It was fine. It was",) * 2, continuations=(" terrible", " great"), label=1),
    Example(contexts=("Meh.",) * 2, continuations=(" no", " yes!"), label=0),
    Example(
        contexts=("A longer review, with much more text in it. So it was",) * 2,
        continuations=(" bad", " good"),
        label=1,
    ),
]
# ... and one-byte candidates sharing a context (the scorer's one-forward path).
SHARED_EXAMPLES = [
    Example(contexts=("Is it? ",) * 2, continuations=("N", "Y"), label=1),
    Example(
        contexts=("Quite a long question, is it not? ",) * 2, continuations=("N", "Y"), label=0
    ),
]


def perturb_trainable(model: torch.nn.Module, scale: float = 0.5) -> None:
    """Move the adapters off their initialisation (LoRA's B = 0 makes it the identity)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator))


def reference_scores(model, tokenizer, kind: str, examples) -> torch.Tensor:
    """Mean candidate log-probs, one unpadded row at a time, from full logits."""
    scores = []
    for example in examples:
        row = []
        for context, continuation in zip(example.contexts, example.continuations, strict=True):
            # MeZO's encode_prompt: the tail of the joint encoding.
            special = kind == "causal"
            joint = tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
            cut = len(tokenizer(context, add_special_tokens=special)["input_ids"])
            context_ids, target = joint[:cut], joint[cut:]
            if kind == "causal":
                sequence = context_ids + target[:-1]
                slots = [len(context_ids) - 1 + j for j in range(len(target))]
            else:
                mask = tokenizer.mask_token_id
                sequence = with_special_tokens(tokenizer, context_ids + [mask] * len(target))
                slots = [i for i, token in enumerate(sequence) if token == mask]
            with torch.no_grad():
                logits = model(
                    input_ids=torch.tensor([sequence]),
                    attention_mask=torch.ones(1, len(sequence), dtype=torch.long),
                ).logits[0]
            shift = logits.shape[0] - len(sequence)  # prompt tuning's virtual tokens
            logprobs = F.log_softmax(logits.float(), dim=-1)
            picked = [logprobs[s + shift, t] for s, t in zip(slots, target, strict=True)]
            row.append(torch.stack(picked).mean())
        scores.append(torch.stack(row))
    return torch.stack(scores)


# Schemes and trainable parameters ------------------------------------------------------------


def test_unknown_scheme_lists_the_valid_ones(tiny_model):
    choices = r"'adapter' \(choose from full, lora, prefix, prompt, head\)"
    with pytest.raises(ValueError, match=choices):
        tiny_model("tiny-llama", "adapter")


@pytest.mark.parametrize("option", ["lora_r", "prefix_tokens", "prompt_tokens"])
def test_bad_sizes_are_errors(tiny_model, option):
    with pytest.raises(ValueError, match=f"invalid {option}: 0"):
        tiny_model("tiny-llama", "lora", **{option: 0})


def expected_trainable(config, scheme: str, *, r=8, prefix=5, prompt=10) -> int:
    """Adapter sizes from first principles, for LLaMA (GQA) and OPT configs."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = hidden // config.num_attention_heads
    kv_width = getattr(config, "num_key_value_heads", config.num_attention_heads) * head_dim
    if scheme == "lora":  # q: hidden → hidden, v: hidden → kv_width; A is r×in, B is out×r
        return layers * (r * (hidden + hidden) + r * (hidden + kv_width))
    if scheme == "prefix":  # a key and a value vector per layer and virtual token
        return prefix * layers * 2 * kv_width
    if scheme == "prompt":  # one input embedding per virtual token
        return prompt * hidden
    if scheme == "head":  # the output projection (no bias in LLaMA or OPT)
        return config.vocab_size * hidden
    raise AssertionError(scheme)


@pytest.mark.parametrize("scheme", scheme_keys())
@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_trainable_parameter_counts_follow_the_formula(tiny_model, shape, scheme):
    model, loaded = tiny_model(shape, scheme)
    trainable, total = count_parameters(model)
    base = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "lora_" not in n and "prompt_encoder" not in n
    )
    if scheme == "full":
        assert trainable == total == base
        return
    assert trainable == expected_trainable(loaded.model.config, scheme)
    if scheme == "head":  # the head's own copy where it was tied is counted in the base
        assert total == base
        for name, param in model.named_parameters():
            assert param.requires_grad == name.startswith("lm_head"), name
        return
    assert total == base + trainable
    adapter_tag = "lora_" if scheme == "lora" else "prompt_encoder"
    for name, param in model.named_parameters():
        assert param.requires_grad == (adapter_tag in name), name


@pytest.mark.parametrize(
    "shape, targets",
    [
        ("tiny-llama", ["q_proj", "v_proj"]),
        ("tiny-opt", ["q_proj", "v_proj"]),
        ("tiny-mistral", ["q_proj", "v_proj"]),
        ("tiny-roberta", ["query", "value"]),
    ],
)
def test_lora_targets_the_query_and_value_projections(tiny_model, shape, targets):
    model, _ = tiny_model(shape, "full")
    assert attention_projections(model) == targets
    tuned, _ = tiny_model(shape, "lora")
    adapted = {n.rsplit(".", 1)[-1] for n, m in tuned.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(targets)


def test_lora_falls_back_to_the_linear_layers_inside_attention_modules(tiny_model):
    model, _ = tiny_model("tiny-llama", "full")
    model.config.model_type = "unknown-to-peft"
    assert attention_projections(model) == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_full_tuning_counts_tied_weights_once(tiny_model):
    model, _ = tiny_model("tiny-roberta", "full")
    trainable, total = count_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight


def test_prompt_init_text_copies_the_texts_token_embeddings(tiny_model):
    text = "Sentiment:"
    model, loaded = tiny_model("tiny-llama", "prompt", prompt_init_text=text, prompt_tokens=12)
    ids = loaded.tokenizer(text)["input_ids"]  # peft tokenizes with special tokens
    ids = (ids * 2)[:12]
    prompt = model.prompt_encoder["default"].embedding.weight
    embeddings = model.get_base_model().get_input_embeddings().weight
    assert torch.equal(prompt, embeddings[ids])


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt", "tiny-mistral"])
def test_prefix_starts_as_the_models_keys_and_values_for_random_tokens(tiny_model, shape):
    """MeZO's prefix_init_by_real_act: the prefix is the bare model's key/value cache for
    prefix_tokens tokens drawn with torch.randint(0, vocab_size) from the global RNG."""
    model, loaded = tiny_model(shape, "prefix", prefix_tokens=4, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        tokens = torch.randint(0, loaded.model.config.vocab_size, (1, 4))
    base = random_model(shape, seed=3).model
    with torch.no_grad():
        cache = base(input_ids=tokens, use_cache=True).past_key_values
        prefix = model.get_prompt(batch_size=1)
    assert len(prefix.layers) == len(cache.layers) == base.config.num_hidden_layers
    for ours, real in zip(prefix.layers, cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, real.keys, rtol=0, atol=0)
        torch.testing.assert_close(ours.values, real.values, rtol=0, atol=0)


def test_random_prefix_init_is_peft_s_and_not_the_activations(tiny_model):
    real, _ = tiny_model("tiny-llama", "prefix", prefix_tokens=4, seed=3)
    drawn, _ = tiny_model("tiny-llama", "prefix", prefix_tokens=4, seed=3, prefix_init="random")
    with torch.no_grad():
        a, b = real.get_prompt(batch_size=1), drawn.get_prompt(batch_size=1)
    assert not torch.allclose(a.layers[0].keys, b.layers[0].keys)
    weight = drawn.prompt_encoder["default"].embedding.weight
    assert 0.8 < float(weight.detach().std()) < 1.2  # nn.Embedding's N(0, 1)


@pytest.mark.parametrize(("shape", "init", "message"), [
    ("tiny-roberta", "real", "prefix_init='real' needs a causal LM's key/value cache"),
    ("tiny-llama", "zeros", r"unknown prefix_init 'zeros' \(choose from real, random\)"),
])
def test_bad_prefix_init_is_an_error(shape, init, message):
    with pytest.raises(ValueError, match=message):
        apply_tuning(random_model(shape).model, "prefix", prefix_init=init)


def test_masked_lm_prefix_defaults_to_random(tiny_model):
    model, _ = tiny_model("tiny-roberta", "prefix", prefix_tokens=4)
    assert 0.8 < float(model.prompt_encoder["default"].embedding.weight.detach().std()) < 1.2


def test_prompt_init_text_needs_the_tokenizer():
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        apply_tuning(random_model("tiny-llama").model, "prompt", prompt_init_text="Hi")


# The scorer on every scheme × shape --------------------------------------------------------


def logits_widths(scorer, batch) -> tuple[torch.Tensor, list[int]]:
    """The scorer's scores and the number of logit columns each base-model forward returned."""
    model = scorer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    widths: list[int] = []
    hook = base.register_forward_hook(lambda m, args, out: widths.append(out.logits.shape[1]))
    try:
        with torch.no_grad():
            return scorer.scores(batch), widths
    finally:
        hook.remove()


@pytest.mark.parametrize("scheme", scheme_keys())
@pytest.mark.parametrize("shape", SHAPES)
def test_scorer_matches_an_unpadded_full_logits_reference(tiny_model, shape, scheme):
    """Batched, left-padded scoring (logits_to_keep for causal LMs) = one row at a time."""
    model, loaded = tiny_model(shape, scheme)
    perturb_trainable(model)
    scorer = Scorer(model, loaded.tokenizer, kind=loaded.kind)
    for examples in (EXAMPLES, SHARED_EXAMPLES):
        batch = scorer.encode(examples)
        assert batch.shared_context == (examples is SHARED_EXAMPLES)
        scores, widths = logits_widths(scorer, batch)
        if loaded.kind == "causal":  # only the scored columns got logits
            assert widths == [batch.input_ids.shape[1] - int(batch.positions.min())]
        expected = reference_scores(model, loaded.tokenizer, loaded.kind, examples)
        torch.testing.assert_close(scores, expected, atol=2e-5, rtol=1e-5)
        with torch.no_grad():
            assert torch.isfinite(scorer.loss(scorer.encode_for_loss(examples)))


@pytest.mark.parametrize("scheme", scheme_keys())
@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_the_lm_head_gets_a_contiguous_input_once(tiny_model, shape, scheme):
    """Its last-logits slice is a strided view; with a frozen head weight torch.matmul would
    copy the weight once per row instead of folding into one mm (3× slower LoRA ZO steps)."""
    model, loaded = tiny_model(shape, scheme)
    head = model.get_output_embeddings()
    hooks_before = len(head._forward_pre_hooks)
    Scorer(model, loaded.tokenizer, kind=loaded.kind)
    scorer = Scorer(model, loaded.tokenizer, kind=loaded.kind)
    assert len(head._forward_pre_hooks) == hooks_before + 1
    seen: list[bool] = []
    probe = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        with torch.no_grad():
            scorer.scores(scorer.encode(EXAMPLES))
    finally:
        probe.remove()
    assert seen == [True]


@pytest.mark.parametrize("scheme", ["prefix", "prompt"])
@pytest.mark.parametrize("shape", SHAPES)
def test_virtual_tokens_keep_scores_independent_of_batch_padding(tiny_model, shape, scheme):
    """A row scores the same alone and padded next to a longer row (positions from the mask)."""
    model, loaded = tiny_model(shape, scheme)
    perturb_trainable(model)
    scorer = Scorer(model, loaded.tokenizer, kind=loaded.kind)
    with torch.no_grad():
        together = scorer.scores(scorer.encode(EXAMPLES))
        alone = torch.cat([scorer.scores(scorer.encode([example])) for example in EXAMPLES])
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scheme", scheme_keys())
def test_masked_lm_returns_mlm_logits(tiny_model, scheme):
    model, loaded = tiny_model("tiny-roberta", scheme)
    batch = loaded.tokenizer(
        ["a <mask>", "a longer <mask> text"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
    columns = batch["input_ids"].shape[1] + (10 if scheme == "prompt" else 0)
    assert logits.shape == (2, columns, loaded.model.config.vocab_size)


def test_scorer_frames_masked_inputs_with_a_plain_transformers_tokenizer(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    model, loaded = tiny_model("tiny-roberta", "full")
    loaded.tokenizer.save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path)
    scorer = Scorer(model, plain, kind="masked")
    batch = scorer.encode(EXAMPLES)
    assert (batch.input_ids[:, -1] == plain.eos_token_id).all()  # <s> … <mask> </s>
    assert torch.isfinite(scorer.scores(batch)).all()


# Optimizer steps -----------------------------------------------------------------------------


def assert_only_trainable_changed(model, before: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == param.requires_grad, f"{name}: changed={changed}"


@pytest.mark.parametrize("scheme", scheme_keys())
@pytest.mark.parametrize("shape", SHAPES)
def test_zo_step_changes_only_trainable_parameters(tiny_model, shape, scheme):
    model, loaded = tiny_model(shape, scheme)
    scorer = Scorer(model, loaded.tokenizer, kind=loaded.kind)
    batch = scorer.encode_for_loss(EXAMPLES)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = create_optimizer(
        "zo-sgd", [p for p in model.parameters() if p.requires_grad], lr=1e-3
    )
    loss = optimizer.step(lambda: scorer.loss(batch))
    assert torch.isfinite(loss)
    assert_only_trainable_changed(model, before)


@pytest.mark.parametrize("scheme", scheme_keys())
@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_forward_grad_step_with_eager_attention(tiny_model, shape, scheme):
    model, loaded = tiny_model(shape, scheme, attn_implementation="eager")
    scorer = Scorer(model, loaded.tokenizer, kind=loaded.kind)
    batch = scorer.encode_for_loss(EXAMPLES)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = create_optimizer("forward-grad", model, lr=1e-3)
    loss = optimizer.step(lambda: scorer.loss(batch))
    assert torch.isfinite(loss)
    assert_only_trainable_changed(model, before)


def test_forward_grad_through_fused_cpu_attention_asks_for_eager(tiny_model):
    model, loaded = tiny_model("tiny-llama", "full", attn_implementation="sdpa")
    scorer = Scorer(model, loaded.tokenizer, kind=loaded.kind)
    batch = scorer.encode_for_loss(EXAMPLES)
    optimizer = create_optimizer("forward-grad", model, lr=1e-3)
    with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
        optimizer.step(lambda: scorer.loss(batch))


# Prefix positions as MeZO / ZO-LLM compute them -----------------------------------------------
# Their prefix sits inside each attention module (MeZO large_models/prefix.py:23-55, ZO-LLM
# zo-bench/prefix_tuning.py:24-58), so the model numbers the real tokens 0 … T-1 (OPT from the
# unwidened mask, LLaMA from past length 0); peft's cache would number them from the prefix length.


def _seen_positions(base):
    """Record the position ids the decoder stack receives (after zotune's hook on ``base``)."""
    seen = []
    inner = base.model.decoder if hasattr(base.model, "decoder") else base.model
    inner.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True
    )
    return seen


def _ids_and_mask():
    ids = torch.tensor([[0, 0, 40, 41, 42, 43], [50, 51, 52, 53, 54, 55]])  # row 0 left-padded
    mask = (torch.arange(6) >= torch.tensor([[2], [0]])).long()
    return ids, mask


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_prefix_leaves_the_real_tokens_at_positions_from_zero(tiny_model, shape):
    tuned, _ = tiny_model(shape, "prefix", prefix_tokens=3)
    seen = _seen_positions(tuned.get_base_model())
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        tuned(input_ids=ids, attention_mask=mask)
    expected = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    assert torch.equal(seen[-1], expected)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_a_masked_out_prefix_gives_the_plain_models_logits(tiny_model, shape):
    """A prefix no token may attend to has no effect, so only positions can change the logits
    (on OPT's learned positions a shift by the prefix length would)."""
    tuned, _ = tiny_model(shape, "prefix", prefix_tokens=3)
    plain, _ = tiny_model(shape)

    def hide_prefix(module, args, kwargs):
        kwargs["attention_mask"] = kwargs["attention_mask"].clone()
        kwargs["attention_mask"][:, :3] = 0
        return args, kwargs

    tuned.get_base_model().register_forward_pre_hook(hide_prefix, with_kwargs=True)
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        ours = tuned(input_ids=ids, attention_mask=mask).logits
        reference = plain(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_prefix_logits_are_the_reference_computation(tiny_model, shape):
    """The prefix as a cache the real tokens attend to, the real tokens at 0 … T-1: on a RoPE
    model the prefix keys keep the rotation of their init while the queries' start from 0."""
    tuned, _ = tiny_model(shape, "prefix", prefix_tokens=3)
    plain, _ = tiny_model(shape)
    ids = torch.tensor([[40, 41, 42, 43], [50, 51, 52, 53]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = tuned(input_ids=ids, attention_mask=mask).logits
        cache = tuned.get_prompt(batch_size=2)
        reference = plain(
            input_ids=ids,
            attention_mask=torch.cat([torch.ones(2, 3, dtype=torch.long), mask], dim=1),
            past_key_values=cache,
            position_ids=torch.arange(4).expand(2, 4),
        ).logits
        shifted = plain(
            input_ids=ids,
            attention_mask=torch.cat([torch.ones(2, 3, dtype=torch.long), mask], dim=1),
            past_key_values=tuned.get_prompt(batch_size=2),
            position_ids=torch.arange(3, 7).expand(2, 4),
        ).logits
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (ours - shifted).abs().max() > 1e-3, "the test must tell the two numberings apart"


def test_prompt_tokens_come_first_and_real_tokens_after_them(tiny_model):
    tuned, _ = tiny_model("tiny-opt", "prompt", prompt_tokens=2)
    seen = _seen_positions(tuned.get_base_model())
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        tuned(input_ids=ids, attention_mask=mask)
    expected = torch.tensor([[0, 1, 0, 0, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert torch.equal(seen[-1], expected)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_generation_with_a_prefix_numbers_the_real_tokens_from_zero(tiny_model, shape):
    tuned, _ = tiny_model(shape, "prefix", prefix_tokens=3)
    seen = _seen_positions(tuned.get_base_model())
    ids = torch.tensor([[40, 41, 42, 43]])
    with torch.no_grad():
        tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                       do_sample=False, pad_token_id=0, eos_token_id=None)
    assert [s.tolist() for s in seen] == [[[0, 1, 2, 3]], [[4]]]


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-opt"])
def test_generation_with_a_prefix_is_greedy_decoding_of_the_prefix_model(tiny_model, shape):
    """generate (with its cache) picks the tokens full forward passes of the prefix model pick:
    the prefix is attended to at every step, not only by the first."""
    tuned, _ = tiny_model(shape, "prefix", prefix_tokens=3)
    with torch.no_grad():
        embedding = tuned.prompt_encoder["default"].embedding.weight
        embedding.mul_(4.0)  # a prefix strong enough to change the greedy tokens
        ids = torch.tensor([[40, 41, 42, 43]])
        out = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
        sequence = ids
        for _ in range(4):
            logits = tuned(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
            sequence = torch.cat([sequence, logits[:, -1:].argmax(-1)], dim=1)
    assert out.tolist() == sequence.tolist()

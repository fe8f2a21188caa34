"""The scorer tokenizes context + candidate together, as MeZO / ZO-Bench do, and trains the LM
loss per token over the batch.

The reference below is ``encode_prompt`` (``zo-bench/utils.py``, MeZO's
``large_models/utils.py``) and ``Framework.forward`` (``zo-bench/run.py``) written out: one
unpadded forward per candidate over ``tok(context + continuation)``, scoring its last
``len(tok(context + continuation)) − len(tok(context))`` tokens. Tokenizers are built offline
with the ``tokenizers`` library: a SentencePiece-style (Metaspace) BPE as LLaMA / Mistral use,
a byte-level BPE as OPT / GPT-2 use, and zotune's byte tokenizer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from zotune.evaluation.scoring import Scorer, ScoringError
from zotune.models.random_shapes import random_model
from zotune.tasks.example import Example

CORPUS = [
    "The man turned on the faucet so the toilet filled with water.",
    "Is it good? Yes or No?",
    "Yes, it was great. No, it was terrible.",
    "She wasn't happy, I'm sure.",
    "No, yes, maybe.",
] * 20
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def _wrap(trained) -> PreTrainedTokenizerFast:
    """A causal LM's tokenizer: ``<s> text``, as LLaMA's and OPT's."""
    backend = trained._tokenizer
    bos = backend.token_to_id("<s>")
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    trained = SentencePieceBPETokenizer()  # Metaspace: "▁" marks a word start
    trained.train_from_iterator(CORPUS, vocab_size=120, special_tokens=SPECIALS,
                                show_progress=False)
    return _wrap(trained)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(CORPUS, vocab_size=300, special_tokens=SPECIALS,
                                show_progress=False)
    return _wrap(trained)


def zotune_byte_tokenizer():
    return random_model("tiny-llama").tokenizer


TOKENIZERS = {
    "sentencepiece": sentencepiece_tokenizer,
    "byte-level-bpe": byte_level_tokenizer,
    "zotune-bytes": zotune_byte_tokenizer,
}

YES_NO = Example(("Is it good? Yes or No?\n",) * 2, ("Yes", "No"), 0)
EXAMPLES = [
    YES_NO,
    Example(("It was great. It was",) * 2, (" terrible", " great"), 1),
    Example(("The man turned on the faucet so",) * 2,
            (" the toilet filled with water.", " she was happy."), 0),
    Example(("She was",) * 2, ("n't happy.", " happy, I'm sure."), 1),
    # An attached continuation merges with the context's last word in byte-level BPE.
    ATTACHED := Example(("It was grea",) * 2, ("t.", "t and good."), 0),
]


@pytest.fixture(scope="module")
def model():
    return random_model("tiny-llama", seed=0).model  # vocabulary 320 ≥ every tokenizer's


def mezo_option_tokens(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """encode_prompt: the joint encoding and option_len = |tok(ctx + cont)| − |tok(ctx)|."""
    encoded = tokenizer.encode(context + continuation)
    return encoded, len(encoded) - len(tokenizer.encode(context))


def mezo_token_logprobs(model, tokenizer, context: str, continuation: str) -> torch.Tensor:
    """zo-bench/run.py Framework.forward: log p of the last option_len tokens."""
    encoded, option_len = mezo_option_tokens(tokenizer, context, continuation)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([encoded])).logits[0, :-1]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    return logprobs[torch.arange(len(encoded) - 1), torch.tensor(encoded[1:])][-option_len:]


def mezo_scores(model, tokenizer, examples) -> torch.Tensor:
    """Length-normalized scores (zo-bench/run.py one_step_pred: log_probs.mean())."""
    return torch.stack([
        torch.stack([
            mezo_token_logprobs(model, tokenizer, context, continuation).mean()
            for context, continuation in zip(ex.contexts, ex.continuations, strict=True)
        ])
        for ex in examples
    ])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_scores_are_mezo_encode_prompt_scores(model, name):
    tokenizer = TOKENIZERS[name]()
    # SentencePiece swallows "grea" + "t." into fewer tokens than "grea" alone (below).
    examples = [ex for ex in EXAMPLES if name != "sentencepiece" or ex is not ATTACHED]
    scorer = Scorer(model, tokenizer)
    with torch.no_grad():
        together = scorer.scores(scorer.encode(examples))
        shared = scorer.scores(scorer.encode([YES_NO]))
    expected = mezo_scores(model, tokenizer, examples)
    torch.testing.assert_close(together, expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(shared, expected[:1], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "example", "shared"), [
    ("sentencepiece", YES_NO, True),
    ("byte-level-bpe", ATTACHED, False),
])
def test_candidate_tokens_are_the_joint_tail_where_separate_tokens_differ(name, example, shared):
    """SentencePiece: "Yes" after "\\n" is ``Yes``, alone ``▁Yes``. Byte-level BPE: "n't" after
    "It was grea" merges ``at`` across the boundary. The scorer takes the joint tokens."""
    tokenizer = TOKENIZERS[name]()
    scorer = Scorer(random_model("tiny-llama").model, tokenizer)
    batch = scorer.encode([example])
    assert batch.shared_context == shared
    joint = [mezo_option_tokens(tokenizer, c, t) for c, t in
             zip(example.contexts, example.continuations, strict=True)]
    if shared:
        assert all(n == 1 for _, n in joint)
        assert batch.targets[0, : len(joint)].tolist() == [enc[-1] for enc, _ in joint]
    else:
        for row, (encoded, option_len) in enumerate(joint):
            inputs = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
            assert batch.targets[row][batch.target_mask[row]].tolist() == encoded[-option_len:]
            assert inputs == encoded[:-1]
    separate = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in example.continuations]
    assert any(ids != enc[-n:] for ids, (enc, n) in zip(separate, joint, strict=True)), (
        "the case must be one where separate tokenization differs"
    )


@pytest.mark.parametrize(("example", "candidate"), [
    (Example(("It was",) * 2, ("", " great"), 1), "''"),
    # |tok("It was great.")| < |tok("It was grea")|: MeZO's option_len would be negative.
    (ATTACHED, "'t.'"),
])
def test_a_candidate_that_adds_no_tokens_is_an_error(model, example, candidate):
    scorer = Scorer(model, sentencepiece_tokenizer())
    with pytest.raises(ScoringError, match=rf"candidate {candidate} adds no tokens to its context"):
        scorer.encode([example])


def test_an_empty_context_needs_a_bos_token(model):
    tokenizer = byte_level_tokenizer()
    tokenizer._tokenizer.post_processor = None
    scorer = Scorer(model, tokenizer)
    with pytest.raises(ScoringError, match="has an empty context and the tokenizer adds no BOS"):
        scorer.encode([Example(("",) * 2, ("Kevin ran.", "Kelly ran."), 0)])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_lm_loss_is_averaged_per_token_over_the_batch(model, name):
    """ZO-Bench's LM loss (forward_wrap_with_option_len, train_as_classification False):
    CrossEntropyLoss over every option token of the batch's gold candidates."""
    tokenizer = TOKENIZERS[name]()
    examples = EXAMPLES[1:4]  # gold candidates of different token counts
    gold = [mezo_token_logprobs(model, tokenizer, ex.contexts[ex.label],
                                ex.continuations[ex.label]) for ex in examples]
    per_token = -torch.cat(gold).mean()
    per_example = -torch.stack([lp.mean() for lp in gold]).mean()
    assert not torch.isclose(per_token, per_example, atol=1e-4)
    for reduction in ("mean", "sum"):
        scorer = Scorer(model, tokenizer, loss="lm", reduction=reduction)
        with torch.no_grad():
            labelled = scorer.loss(scorer.encode_for_loss(examples))
            every_candidate = scorer.loss(scorer.encode(examples))
        torch.testing.assert_close(labelled, per_token, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(every_candidate, per_token, atol=2e-5, rtol=1e-5)


def test_ce_loss_is_cross_entropy_of_the_length_normalized_scores(model):
    tokenizer = sentencepiece_tokenizer()
    scorer = Scorer(model, tokenizer, loss="ce")
    examples = EXAMPLES[:4]
    expected = F.cross_entropy(mezo_scores(model, tokenizer, examples),
                               torch.tensor([ex.label for ex in examples]))
    with torch.no_grad():
        loss = scorer.loss(scorer.encode_for_loss(examples))
    torch.testing.assert_close(loss, expected, atol=2e-5, rtol=1e-5)

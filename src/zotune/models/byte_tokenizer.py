"""The hermetic byte-level tokenizer of random models, and the special tokens any tokenizer
puts around one text."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .anatomy import KINDS
from .errors import ModelError

# Special token ids shared by the byte tokenizer and every tiny shape (RoBERTa's layout, so
# that RoBERTa's padding index, 1, is the pad token).
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


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
    :data:`BYTE_VOCAB_SIZE`, so it fits every shape in :data:`zotune.models.random_shapes.SHAPES`.
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

"""Candidate log-likelihoods, the training losses built on them, and accuracy.

Candidate i of an example scores ``s_i = reduce_t log p(cont_i[t] | ctx_i, cont_i[<t])`` with
``reduce`` the mean (default, as in the paper) or the sum over the candidate's tokens; the
prediction is ``argmax_i s_i``.

Tokens: the context and the candidate are tokenized *together* and the candidate's tokens are
the tail of the joint encoding, as in MeZO / ZO-Bench (``encode_prompt`` in
``large_models/utils.py`` and ``zo-bench/utils.py``): with ``J = tok(ctx + cont)`` and
``n = |J| − |tok(ctx)|``, ``cont`` is scored as ``J[−n:]`` given ``J[:−n]``. Tokenizing the
candidate on its own would differ wherever the tokenizer merges across the boundary
(SentencePiece adds ``▁`` before punctuation; some ``tokenizer.json`` files turn ``" Yes"``
into ``['▁', '▁Yes']``).

Two training losses:

* ``ce``: cross-entropy over the candidates, ``−(1/N) Σ_n log softmax(s_n)[label_n]``
  (``--train_as_classification``; ``s`` length-normalized as in ``zo-bench/utils.py::
  forward_wrap_with_option_len``), averaged over the N examples;
* ``lm``: the language-model loss on the correct candidate only, averaged per token over the
  batch as ZO-Bench's ``CrossEntropyLoss`` over the option tokens does:
  ``−Σ_n Σ_t log p(cont_n[t] | …) / Σ_n |cont_n|`` (only the correct candidate is run, so it
  costs 1/C of ``ce``). ``reduction`` does not apply to it.

Only the scored positions get logits. A causal LM's batch is left-padded so every scored
position sits in the last ``K + 1`` columns, and the model is asked for those alone
(``logits_to_keep``); for a model of vocabulary V that saves a (T − K − 1) × V matrix per
row, often the largest activation of a ZO forward. Left padding also keeps prompt tuning's
virtual tokens (prepended by peft) out of the way. RoPE models need no position ids for it:
relative positions between real tokens are unchanged by the padding. With prompt or prefix
tuning the virtual tokens sit before the padding, so
:mod:`zotune.tuning.prompts` derives position ids from the attention mask (as
``generate`` does).

When every candidate of every example is one token after the same context tokens (SST-2 with
byte-level BPE: the joint tokens agree with the context's), the context runs once and the
candidates are read off the same next-token distribution, which halves the forward cost of
two-way tasks.

Masked LMs (RoBERTa, prompt-based as in MeZO/LM-BFF) score the candidate tokens at mask
tokens placed where the continuation goes (the same joint split, without special tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.anatomy import (
    accepts_logits_to_keep,
    base_model,
    contiguous_head_input,
    position_limit,
)
from ..models.byte_tokenizer import special_token_frame
from ..models.offload import execution_device
from ..tasks.example import Example

REDUCTIONS = ("mean", "sum")
LOSSES = ("ce", "lm")
KINDS = ("causal", "masked")


class ScoringError(ValueError):
    """An example cannot be scored (e.g. a candidate that tokenizes to nothing)."""


@dataclass
class EncodedBatch:
    """Token tensors for one batch of examples, ready for repeated forwards (ZO probes)."""

    input_ids: torch.Tensor  # [R, T], left-padded
    attention_mask: torch.Tensor  # [R, T]
    targets: torch.Tensor  # [R, K] candidate tokens to score (0 where masked)
    target_mask: torch.Tensor  # [R, K] bool
    positions: torch.Tensor  # [R, K] column whose logits predict each target
    labels: torch.Tensor  # [N]
    num_candidates: int
    only_labelled: bool  # rows are the correct candidates only (lm loss)
    shared_context: bool  # one row per example, targets are the C candidate tokens


@dataclass
class _Row:
    context: list[int]
    tokens: list[int]  # the tokens to score
    alternatives: bool  # True: C alternatives for one slot; False: one continuation in order


class Scorer:
    """Scores :class:`Example` batches with a (possibly peft-wrapped) HF language model."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        kind: str = "causal",
        reduction: str = "mean",
        loss: str = "ce",
        max_length: int | None = None,
    ) -> None:
        for value, allowed, what in (
            (kind, KINDS, "model kind"),
            (reduction, REDUCTIONS, "reduction"),
            (loss, LOSSES, "loss"),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {what}: {value!r} (choose from {allowed})")
        self.model = model
        # What the forward passes call: the model itself, or a wrapper of it such as
        # DistributedDataParallel (inspection below always reads the model).
        self.forward_module: torch.nn.Module = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.reduction = reduction
        self.loss_name = loss
        self.max_length = max_length or _model_max_length(model, tokenizer)
        self._keeps_logits = kind == "causal" and accepts_logits_to_keep(model)
        if self._keeps_logits:
            contiguous_head_input(model)
        self._special_frame = special_token_frame(tokenizer) if kind == "masked" else ([], [])
        self._cache: dict[str, list[int]] = {}

    # Tokenization -------------------------------------------------------------------------

    def _ids(self, text: str, special: bool) -> list[int]:
        key = f"{int(special)}{text}"
        ids = self._cache.get(key)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
            if len(self._cache) < 100_000:
                self._cache[key] = ids
        return ids

    def _pair_ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, candidate tokens): the joined text tokenized once, cut where the
        context's own tokens end.

        As MeZO and ZO-Bench (``large_models/utils.py`` and ``zo-bench/utils.py``,
        ``encode_prompt``): ``option_len = len(encode(context + continuation)) −
        len(encode(context))`` and the scored tokens are the last ``option_len`` of the joint
        encoding. Where the tokenizer merges across the boundary (SentencePiece's ``▁`` before
        punctuation, a byte-level merge), the candidate tokens are those of the joined text.
        """
        special = self.kind == "causal"  # a masked LM's frame is added by _layout
        joint = self._ids(context + continuation, special)
        cut = len(self._ids(context, special))
        if len(joint) <= cut:
            raise ScoringError(
                f"candidate {continuation!r} adds no tokens to its context {context[-40:]!r} "
                "under this tokenizer"
            )
        if self.kind == "causal" and cut == 0:
            raise ScoringError(
                f"candidate {continuation!r} has an empty context and the tokenizer adds no "
                "BOS token to predict its first token from"
            )
        return joint[:cut], joint[cut:]

    def _truncated(self, context: list[int], budget: int) -> list[int]:
        """Context tokens cut from the left (after any BOS) to fit ``budget`` (as MeZO's
        ``encode_prompt``: left truncation, BOS kept)."""
        if len(context) <= budget:
            return context
        bos = self.tokenizer.bos_token_id
        if self.kind == "causal" and context and bos is not None and context[0] == bos:
            return [bos, *context[len(context) - budget + 1 :]]
        return context[-budget:]

    def encode(self, examples: Sequence[Example], *, only_labelled: bool = False) -> EncodedBatch:
        """Tokenize a batch. ``only_labelled`` keeps just the correct candidates (lm loss)."""
        if not examples:
            raise ScoringError("cannot score an empty batch")
        counts = {ex.num_candidates for ex in examples}
        if len(counts) != 1 and not only_labelled:
            raise ScoringError(f"examples in one batch differ in candidate count: {sorted(counts)}")
        # Only-labelled rows are one per example, whatever its candidate count (ReCoRD).
        num_candidates = counts.pop() if len(counts) == 1 else 1
        pairs = [
            [self._pair_ids(c, t) for c, t in zip(ex.contexts, ex.continuations, strict=True)]
            for ex in examples
        ]
        # One forward per example when every candidate is one token after the same context
        # tokens (the tokens agree, not only the texts).
        shared = not only_labelled and all(
            len({tuple(context) for context, _ in ex_pairs}) == 1
            and all(len(tokens) == 1 for _, tokens in ex_pairs)
            for ex_pairs in pairs
        )
        rows: list[_Row] = []
        for ex, ex_pairs in zip(examples, pairs, strict=True):
            if shared:
                context = self._truncated(ex_pairs[0][0], self._budget(1))
                rows.append(_Row(context, [tokens[0] for _, tokens in ex_pairs], alternatives=True))
                continue
            for i in [ex.label] if only_labelled else range(num_candidates):
                context, tokens = ex_pairs[i]
                context = self._truncated(context, self._budget(len(tokens)))
                rows.append(_Row(context, tokens, alternatives=False))
        return EncodedBatch(
            *self._collate(rows),
            labels=torch.tensor([ex.label for ex in examples]),
            num_candidates=num_candidates,
            only_labelled=only_labelled,
            shared_context=shared,
        )

    def _budget(self, continuation_length: int) -> int:
        # Masked LMs add <s> and </s> around the text.
        budget = self.max_length - continuation_length - (2 if self.kind == "masked" else 0)
        if budget < 1:
            raise ScoringError(
                f"a candidate of {continuation_length} tokens leaves no room for its context "
                f"within max_length={self.max_length}"
            )
        return budget

    def _collate(self, rows: list[_Row]):
        """Left-pad rows; ``targets[r, j]`` is scored from the logits at ``positions[r, j]``."""
        sequences, slots = [], []
        for row in rows:
            sequence, first = self._layout(row)
            sequences.append(sequence)
            slots.append([first if row.alternatives else first + j for j in range(len(row.tokens))])
        width = max(len(s) for s in sequences)
        k = max(len(row.tokens) for row in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.zeros((len(rows), k), dtype=torch.long)
        target_mask = torch.zeros((len(rows), k), dtype=torch.bool)
        positions = torch.full((len(rows), k), width - 1, dtype=torch.long)
        for r, (row, sequence, slot) in enumerate(zip(rows, sequences, slots, strict=True)):
            offset = width - len(sequence)
            n = len(row.tokens)
            input_ids[r, offset:] = torch.tensor(sequence)
            attention[r, offset:] = 1
            targets[r, :n] = torch.tensor(row.tokens)
            target_mask[r, :n] = True
            positions[r, :n] = torch.tensor(slot) + offset
        return input_ids, attention, targets, target_mask, positions

    def _layout(self, row: _Row) -> tuple[list[int], int]:
        """The token sequence of a row and the position of its first scored slot."""
        if self.kind == "causal":
            # The logits at position t predict token t + 1; the last target is never input.
            sequence = row.context if row.alternatives else row.context + row.tokens[:-1]
            return sequence, len(row.context) - 1
        mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            raise ScoringError("a masked LM's tokenizer needs a mask token")
        n_masks = 1 if row.alternatives else len(row.tokens)
        prefix, suffix = self._special_frame
        sequence = [*prefix, *row.context, *[mask_id] * n_masks, *suffix]
        return sequence, len(prefix) + len(row.context)

    # Forward ------------------------------------------------------------------------------

    def token_logprobs(self, batch: EncodedBatch) -> torch.Tensor:
        """log p(target) at every target slot, [R, K] (0 where masked)."""
        device = _device_of(self.model)
        input_ids = batch.input_ids.to(device)
        attention = batch.attention_mask.to(device)
        positions = batch.positions.to(device)
        if self._keeps_logits:
            keep = input_ids.shape[1] - int(positions.min())
            # use_cache=False: scoring never decodes, and the cache would hold 2·L·h values
            # per token until the forward ends.
            logits = self.forward_module(
                input_ids=input_ids, attention_mask=attention, logits_to_keep=keep, use_cache=False
            ).logits
            positions = positions - (input_ids.shape[1] - logits.shape[1])
        else:
            logits = self.forward_module(input_ids=input_ids, attention_mask=attention).logits
            # peft prompt learning prepends virtual tokens to the outputs.
            positions = positions + (logits.shape[1] - input_ids.shape[1])
        picked = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        logprobs = F.log_softmax(picked.float(), dim=-1)
        chosen = logprobs.gather(-1, batch.targets.to(device).unsqueeze(-1)).squeeze(-1)
        return chosen * batch.target_mask.to(device)

    def scores(self, batch: EncodedBatch) -> torch.Tensor:
        """Candidate scores [N, C] (or [N, 1] for an only-labelled batch)."""
        token_lp = self.token_logprobs(batch)
        mask = batch.target_mask.to(token_lp.device)
        if batch.shared_context:
            return token_lp[:, : batch.num_candidates]
        total = token_lp.sum(-1)
        if self.reduction == "mean":
            total = total / mask.sum(-1)
        columns = 1 if batch.only_labelled else batch.num_candidates
        return total.view(-1, columns)

    def loss(self, batch: EncodedBatch) -> torch.Tensor:
        """The training loss of a batch encoded by :meth:`encode_for_loss` (see the module
        docstring for both losses)."""
        labels = batch.labels.to(_device_of(self.model))
        if self.loss_name == "ce":
            return F.cross_entropy(self.scores(batch), labels)
        token_lp = self.token_logprobs(batch)
        mask = batch.target_mask.to(token_lp.device)
        if batch.shared_context:
            return -token_lp[:, : batch.num_candidates].gather(1, labels.unsqueeze(1)).mean()
        if not batch.only_labelled:
            rows = torch.arange(len(labels), device=labels.device) * batch.num_candidates + labels
            token_lp, mask = token_lp[rows], mask[rows]
        return -token_lp.sum() / mask.sum()

    def loss_weight(self, batch: EncodedBatch) -> int:
        """What :meth:`loss` averages over: the examples (``ce``; ``lm`` with shared
        contexts, one token per candidate) or the correct candidates' tokens (``lm``). A
        batch's loss is the weighted mean of its parts' losses with these weights."""
        if self.loss_name == "ce" or batch.shared_context:
            return len(batch.labels)
        mask = batch.target_mask
        if not batch.only_labelled:
            rows = torch.arange(len(batch.labels)) * batch.num_candidates + batch.labels
            mask = mask[rows]
        return int(mask.sum())

    def encode_for_loss(self, examples: Sequence[Example]) -> EncodedBatch:
        return self.encode(examples, only_labelled=self.loss_name == "lm")

    @torch.no_grad()
    def predict(
        self, examples: Sequence[Example], batch_size: int = 16, progress=None
    ) -> torch.Tensor:
        """The argmax candidate of each example; examples are batched with others of their
        candidate count (ReCoRD's vary), the result in the examples' order. ``progress``
        wraps the batch starts (a bar)."""
        predictions = torch.zeros(len(examples), dtype=torch.long)
        by_count: dict[int, list[int]] = {}
        for index, example in enumerate(examples):
            by_count.setdefault(example.num_candidates, []).append(index)
        chunks = [
            indices[start : start + batch_size]
            for indices in by_count.values()
            for start in range(0, len(indices), batch_size)
        ]
        for chunk in progress(chunks) if progress is not None else chunks:
            batch = self.encode([examples[i] for i in chunk])
            predictions[chunk] = self.scores(batch).argmax(-1).cpu()
        return predictions

    def accuracy(self, examples: Sequence[Example], batch_size: int = 16, progress=None) -> float:
        if not examples:
            raise ScoringError("cannot measure accuracy on an empty split")
        predictions = self.predict(examples, batch_size, progress)
        hits = [ex.is_correct(int(p)) for ex, p in zip(examples, predictions, strict=True)]
        return sum(hits) / len(hits)


def _device_of(model: torch.nn.Module) -> torch.device:
    return execution_device(model)


def _virtual_tokens(model: torch.nn.Module) -> int:
    """Positions taken by peft prompt/prefix tuning's virtual tokens (0 without them)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is None or not getattr(peft_config, "is_prompt_learning", False):
        return 0
    return int(peft_config.num_virtual_tokens)


def _model_max_length(model: torch.nn.Module, tokenizer) -> int:
    config = getattr(base_model(model), "config", None)
    limit = (position_limit(config) or 2048) - _virtual_tokens(model)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit - _virtual_tokens(model)
    return limit

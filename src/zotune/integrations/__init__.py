"""zotune inside other training frameworks: :mod:`zotune.integrations.hf` (the Hugging Face
``Trainer``)."""

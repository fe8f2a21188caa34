"""zotune inside other training frameworks: the Hugging Face ``Trainer`` (:mod:`.hf`)."""

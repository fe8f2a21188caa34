"""Tuning schemes: which parameters a run trains (full, LoRA, prefix, prompt)."""

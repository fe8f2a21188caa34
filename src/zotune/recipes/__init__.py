"""Recipes: one-command runs (`zotune demo`, `zotune quickstart`) that read top to bottom."""

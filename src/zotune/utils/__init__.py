"""Helpers every subsystem uses: atomic files, tables, figures, timers, progress, environment."""

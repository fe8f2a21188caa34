"""The methods a profile can measure: every registered optimizer, and two references."""

from __future__ import annotations

# Methods the profile and the memory model cover besides the registry's optimizers: a
# no-grad forward alone, and the MeZO-style reference step (zotune.profiling.mezo_reference).
REFERENCE_METHODS = ("inference", "mezo-ref")
# The sequence-length sweep compares the ZO memory floor with the first-order baselines.
SWEEP_OPTIMIZERS = ("zo-sgd", "fo-sgd", "fo-adam")


def all_methods() -> tuple[str, ...]:
    """Every registered optimizer, then the reference methods."""
    from ..optim.registry import names

    return (*names(), *REFERENCE_METHODS)


def default_methods() -> tuple[str, ...]:
    """Inference as the floor, then every registered optimizer."""
    from ..optim.registry import names

    return ("inference", *names())

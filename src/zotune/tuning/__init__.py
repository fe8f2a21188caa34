"""Tuning schemes: which parameters a run trains, one registry entry per scheme.

The registry (``registry``), one module per family (``full``: full and head; ``lora``;
``prompts``: prefix and prompt; ``adapters``: what the peft ones share), and ``schemes``, which
applies a run's scheme to its model.
"""

from .full import FULL, HEAD, untie_output_embeddings
from .lora import LORA
from .prompts import PREFIX, PROMPT, positions_as_trained
from .registry import SchemeEntry, get_scheme, register, scheme_keys, unregister
from .schemes import apply_tuning, count_parameters

# The built-in schemes, in the order the CLI help and the errors list them.
for _builtin in (FULL, LORA, PREFIX, PROMPT, HEAD):
    register(_builtin)

__all__ = [
    "SchemeEntry",
    "apply_tuning",
    "count_parameters",
    "get_scheme",
    "positions_as_trained",
    "register",
    "scheme_keys",
    "unregister",
    "untie_output_embeddings",
]

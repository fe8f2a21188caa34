"""The paper's three variance-reduction enhancements, as options of the ZO optimizers.

* :mod:`.blocks`: block-wise ZO (one direction and one estimate per block of parameters);
* :mod:`.hybrid`: hybrid ZO/FO (shallow layers by ZO, deep layers by backprop);
* :mod:`.sparse`: sparsity-induced ZO (a seeded mask on the perturbation).

All three are keyword options of every zeroth-order optimizer in :mod:`zotune.optim`
(see :data:`ENHANCEMENT_OPTIONS`).
"""

from .blocks import BLOCK_LEVELS, BLOCK_MODES, find_layers, partition
from .hybrid import split_hybrid
from .sparse import SPARSITY_MODES, MaskedDirectionSampler

ENHANCEMENT_OPTIONS = (
    "block_level",
    "block_mode",
    "hybrid_layers",
    "sparsity",
    "sparsity_mode",
    "mask_every",
)

__all__ = [
    "BLOCK_LEVELS",
    "BLOCK_MODES",
    "ENHANCEMENT_OPTIONS",
    "SPARSITY_MODES",
    "MaskedDirectionSampler",
    "find_layers",
    "partition",
    "split_hybrid",
]

"""The paper's three variance-reduction enhancements, as options of the ZO optimizers.

* :mod:`.blocks`: block-wise ZO (one direction and one estimate per block of parameters);
* :mod:`.hybrid`: hybrid ZO/FO (shallow layers by ZO, deep layers by backprop);
* :mod:`.sparse`: sparsity-induced ZO (a seeded mask on the perturbation).

All three are options of every zeroth-order optimizer (declared once, in
:data:`zotune.optim.options.ZO_OPTIONS`); block-wise and hybrid steps are step strategies
(:mod:`zotune.optim.steps`), the sparse mask lives in the direction sampler. This package
holds what is specific to each: partitions, the hybrid split, the masked sampler.
"""

from .blocks import BLOCK_LEVELS, BLOCK_MODES, find_layers, partition
from .hybrid import split_hybrid
from .sparse import SPARSITY_MODES, MaskedDirectionSampler

__all__ = [
    "BLOCK_LEVELS",
    "BLOCK_MODES",
    "SPARSITY_MODES",
    "MaskedDirectionSampler",
    "find_layers",
    "partition",
    "split_hybrid",
]

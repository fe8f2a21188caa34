"""Gradient estimators: each turns a loss closure into a gradient estimate."""

from .backprop import BackpropEstimator
from .base import BackpropEstimate, DirectionalEstimate, NonFiniteLossError
from .directions import DISTRIBUTIONS, DirectionSampler, IndexedParam, mix_seed
from .forward_grad import ForwardGradientEstimator
from .rge import PROBES, RandomGradientEstimator

__all__ = [
    "DISTRIBUTIONS",
    "PROBES",
    "BackpropEstimate",
    "BackpropEstimator",
    "DirectionSampler",
    "DirectionalEstimate",
    "ForwardGradientEstimator",
    "IndexedParam",
    "NonFiniteLossError",
    "RandomGradientEstimator",
    "mix_seed",
]

"""Deep equilibrium layers and their stabilizers, for Equinox (here) and Flax NNX (:mod:`implax.nn.nnx`).

Importing this package needs Equinox; :mod:`implax.nn.nnx` needs Flax. ``import implax`` needs neither.
"""

from implax.nn.deq import DEQ, JFBFallback, default_backward
from implax.nn.stabilizers import (
    ContractiveLinear,
    contractive,
    jacobian_regularization,
    spectral_norm,
    spectral_radius,
)

__all__ = [
    "DEQ",
    "ContractiveLinear",
    "JFBFallback",
    "contractive",
    "default_backward",
    "jacobian_regularization",
    "spectral_norm",
    "spectral_radius",
]

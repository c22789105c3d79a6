"""Deep equilibrium layers, their stabilizers, and QP layers, for Equinox (here) and Flax NNX (:mod:`implax.nn.nnx`).

Importing this package needs Equinox; :mod:`implax.nn.nnx` needs Flax. ``import implax`` needs neither.
"""

from implax.nn.deq import DEQ, JFBFallback, default_backward
from implax.nn.qp_layer import QPLayer
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
    "QPLayer",
    "contractive",
    "default_backward",
    "jacobian_regularization",
    "spectral_norm",
    "spectral_radius",
]

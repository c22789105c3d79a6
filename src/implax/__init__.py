"""implax: differentiate through any solver with the implicit function theorem."""

from implax import linear
from implax.engine import custom_fixed_point, custom_root, root_jvp, root_vjp
from implax.failures import SolveFailureError, SolveFailureWarning
from implax.interop import black_box

__version__ = "0.1.0"

__all__ = [
    "SolveFailureError",
    "SolveFailureWarning",
    "black_box",
    "custom_fixed_point",
    "custom_root",
    "linear",
    "root_jvp",
    "root_vjp",
]

"""Solvers from outside JAX (NumPy, SciPy, compiled code) made callable, and so differentiable, in JAX."""

from implax.interop.black_box import black_box

__all__ = ["black_box"]

"""Test configuration: float64 enabled, a small hypothesis profile, and numerical references."""

import jax
import numpy as np
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("implax", max_examples=15, deadline=None, database=None, print_blob=True)
settings.load_profile("implax")

TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-3, atol=2e-4),
    np.dtype(np.float64): dict(rtol=1e-8, atol=1e-10),
}


def central_difference(fn, x, eps=1e-6):
    """Jacobian of ``fn`` at ``x`` by central differences in float64: shape ``fn(x).shape + x.shape``."""
    x = np.asarray(x, dtype=np.float64)
    columns = []
    for i in range(x.size):
        step = np.zeros(x.size)
        step[i] = eps
        step = step.reshape(x.shape)
        forward = np.asarray(fn(x + step), dtype=np.float64)
        backward = np.asarray(fn(x - step), dtype=np.float64)
        columns.append((forward - backward) / (2 * eps))
    return np.stack(columns, axis=-1).reshape(columns[0].shape + x.shape)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def tol(dtype):
    """``rtol``/``atol`` for comparisons in ``dtype``."""
    return TOLERANCES[np.dtype(dtype)]


@pytest.fixture
def finite_difference():
    return central_difference


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)

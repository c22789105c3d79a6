"""The README's quick start runs as written and computes what it says."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_is_exact():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict = {}
    exec(blocks[0] + blocks[1], namespace)

    X, y = np.asarray(namespace["X"], np.float64), np.asarray(namespace["y"], np.float64)
    a = X.T @ X + np.eye(X.shape[1])
    expected = -np.linalg.solve(a, np.linalg.solve(a, X.T @ y))  # d/dλ (XᵀX + λI)⁻¹Xᵀy at λ = 1
    np.testing.assert_allclose(namespace["dw_dlam"], expected, rtol=1e-3, atol=1e-6)

    sol, params = namespace["sol"], namespace["params"]
    assert sol.stats.converged
    np.testing.assert_allclose(sol.value, jnp.tanh(params["W"] @ sol.value + params["x"]), atol=1e-5)

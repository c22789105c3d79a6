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


def test_quick_start_lasso_matches_scikit_learn_and_the_closed_form_jacobian():
    from sklearn.linear_model import Lasso

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict = {}
    exec(blocks[0] + blocks[2], namespace)
    A, b = np.asarray(namespace["A"], np.float64), np.asarray(namespace["b"], np.float64)
    n = A.shape[0]
    # scikit-learn's lasso is (1/2n)‖b − Aw‖² + α‖w‖₁, so α = λ / n.
    reference = Lasso(alpha=2.0 / n, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(A, b).coef_
    np.testing.assert_allclose(namespace["w"], reference, atol=1e-4)
    support = reference != 0
    jacobian = np.zeros_like(reference)
    jacobian[support] = -np.linalg.solve(A[:, support].T @ A[:, support], np.sign(reference[support]))
    np.testing.assert_allclose(namespace["dw_dlam"], jacobian, rtol=1e-3, atol=1e-5)

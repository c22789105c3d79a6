"""The bilevel examples (ridge, lasso, logistic regression, multiclass SVM), run in quick mode, against references
they do not compute themselves."""

import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import lasso_hyperparameter  # noqa: E402
import logistic_regularization  # noqa: E402
import ridge_diabetes  # noqa: E402
import svm_digits  # noqa: E402


def ridge_closed_form_hypergradient(data, log_lam):
    """dL/dlog λ of the validation MSE from the closed-form ridge solution and its derivative."""
    x, y, x_val, y_val = data
    n, p = x.shape
    lam = np.exp(log_lam)
    hessian = x.T @ x / n + lam * np.eye(p)
    w = np.linalg.solve(hessian, x.T @ y / n)
    dw = -lam * np.linalg.solve(hessian, w)
    return 2 * np.mean((x_val @ w - y_val) * (x_val @ dw))


def test_ridge_hypergradient_matches_the_closed_form(tmp_path):
    results = ridge_diabetes.main(["--quick", "--figure-dir", str(tmp_path)])
    assert results["passed"]
    assert (tmp_path / "ridge_diabetes.png").stat().st_size > 0
    for log_lam, grad in zip(results["check_log_lambdas"], results["hypergradients"]):
        assert_allclose(grad, ridge_closed_form_hypergradient(results["data"], log_lam), rtol=1e-7)
    # At the tuned λ the closed-form hypergradient is small compared with its values along the path.
    scale = max(abs(ridge_closed_form_hypergradient(results["data"], u)) for u in results["path"])
    assert abs(ridge_closed_form_hypergradient(results["data"], np.log(results["lam"]))) < 0.1 * scale


def test_lasso_jacobian_is_the_closed_form_on_the_support(tmp_path):
    results = lasso_hyperparameter.main(["--quick", "--figure-dir", str(tmp_path)])
    assert results["passed"]
    assert (tmp_path / "lasso_hyperparameter.png").stat().st_size > 0
    x = results["data"][0]
    n = len(x)
    for check in results["checks"]:
        w = check["solution"]
        support = w != 0
        expected = np.zeros_like(w)
        xs = x[:, support]
        expected[support] = -np.linalg.solve(xs.T @ xs / n, np.sign(w[support]))
        assert_allclose(check["jacobian"], expected, rtol=1e-6, atol=1e-9)
    assert results["alpha"] == pytest.approx(results["reference_alpha"], rel=0.1)


def test_logistic_regularization_solution_is_stationary(tmp_path):
    results = logistic_regularization.main(["--quick", "--figure-dir", str(tmp_path)])
    assert results["passed"]
    assert (tmp_path / "logistic_regularization.png").stat().st_size > 0
    x, y = results["data"]["train"]
    w, b = results["solution"]
    lam = np.exp(results["check_theta"])
    margin = y * (x @ w + b)
    weight = -y / (1 + np.exp(margin)) / len(y)
    assert_allclose(x.T @ weight + lam * w, 0.0, atol=1e-8)
    assert abs(np.sum(weight)) < 1e-8
    assert_allclose(results["hypergradient"], results["fd_hypergradient"], rtol=1e-5, atol=1e-9)
    metrics = results["metrics"]
    assert metrics["per-feature"]["validation"][0] < metrics["start"]["validation"][0]
    assert metrics["global"]["validation"][0] < metrics["start"]["validation"][0]


def test_svm_digits_quick(tmp_path):
    results = svm_digits.main(["--quick", "--figure-dir", str(tmp_path)])
    assert results["passed"]
    for name in ("svm_digits_runtime.png", "svm_digits_jacobian_error.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert_allclose(results["hypergradient"], results["fd_hypergradient"], rtol=1e-6)
    assert results["jacobian_errors"]["implicit"][-1] < 1e-4

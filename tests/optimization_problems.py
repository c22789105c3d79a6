"""Small optimization problems on real data, each with a float64 reference solution independent of implax
(scikit-learn, SciPy, CVXPY or a closed form), shared by the minimization and condition tests.

The objectives are written so that their scaling matches the reference's exactly: scikit-learn's ``Ridge``
minimizes ``‖y − Xw‖² + α‖w‖²``, ``Lasso`` ``(1/2n)‖y − Xw‖² + α‖w‖₁``, ``ElasticNet`` ``(1/2n)‖y − Xw‖² +
αρ‖w‖₁ + ½α(1 − ρ)‖w‖²`` and ``LogisticRegression`` ``C Σᵢ log(1 + exp(−sᵢ xᵢᵀw)) + ½‖w‖²`` (labels ``sᵢ = ±1``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression, Ridge

import implax


def like(value, x):
    """``value`` as an array of the dtype of ``x``'s leaves, so that float32 problems stay float32."""
    return jnp.asarray(value, jax.tree.leaves(x)[0].dtype)


def _standardize(a):
    return (a - a.mean(0)) / a.std(0)


@functools.cache
def diabetes(rows=60):
    """``rows`` rows of the diabetes data set (10 features), features and target standardized."""
    X, y = load_diabetes(return_X_y=True)
    rows = np.random.default_rng(0).choice(len(y), rows, replace=False)
    return _standardize(X[rows]), _standardize(y[rows])


@functools.cache
def breast_cancer(rows=80, features=8):
    """``rows`` rows and the first ``features`` features of the breast-cancer data set, standardized; labels ±1."""
    X, y = load_breast_cancer(return_X_y=True)
    rows = np.random.default_rng(0).choice(len(y), rows, replace=False)
    return _standardize(X[rows][:, :features]), 2.0 * y[rows] - 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """``min_x objective(x, params)`` (plus the non-smooth part or constraint each solver of ``solvers`` carries),
    with a float64 ``reference(params) -> x`` independent of implax.

    ``reference_rtol`` is the accuracy of the reference itself (CVXPY's interior point stops near 1e-9);
    ``fd_eps`` the step of the central differences of the reference.
    """

    name: str
    objective: Callable
    x0: Any
    params: Any
    reference: Callable
    solvers: tuple
    reference_rtol: float = 1e-9
    fd_eps: float = 1e-6


# --- ridge regression: sklearn Ridge(alpha = n λ) minimizes n times this objective -----------------------------


def ridge_objective(w, lam):
    X, y = diabetes()
    r = like(y, w) - like(X, w) @ w
    return 0.5 * jnp.dot(r, r) / len(y) + 0.5 * lam * jnp.dot(w, w)


def ridge_sklearn(lam):
    X, y = diabetes()
    return Ridge(alpha=len(y) * float(lam), fit_intercept=False, solver="cholesky").fit(X, y).coef_


def ridge_closed_form(lam):
    X, y = diabetes()
    n, d = X.shape
    return np.linalg.solve(X.T @ X / n + lam * np.eye(d), X.T @ y / n)


def ridge_closed_form_derivative(lam):
    """``dw/dλ = −(XᵀX/n + λI)⁻¹ w``."""
    X, _ = diabetes()
    n, d = X.shape
    return -np.linalg.solve(X.T @ X / n + lam * np.eye(d), ridge_closed_form(lam))


# --- lasso and elastic net: the smooth part is (1/2n)‖y − Xw‖² -------------------------------------------------


def squared_loss(w, params):
    X, y = diabetes()
    r = like(y, w) - like(X, w) @ w
    return 0.5 * jnp.dot(r, r) / len(y)


def l1_prox(v, alpha, step):
    return implax.prox.l1(v, step * alpha)


def elastic_net_prox(v, p, step):
    return implax.prox.elastic_net(v, step * p["alpha"] * p["l1_ratio"], step * p["alpha"] * (1 - p["l1_ratio"]))


def lasso_sklearn(alpha):
    X, y = diabetes()
    return Lasso(alpha=float(alpha), fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_


def elastic_net_sklearn(p):
    X, y = diabetes()
    model = ElasticNet(
        alpha=float(p["alpha"]), l1_ratio=float(p["l1_ratio"]), fit_intercept=False, tol=1e-14, max_iter=100_000
    )
    return model.fit(X, y).coef_


# --- logistic regression ---------------------------------------------------------------------------------------


def logistic_objective(w, C):
    X, s = breast_cancer()
    margins = like(s, w) * (like(X, w) @ w)
    return C * jnp.sum(jax.nn.softplus(-margins)) + 0.5 * jnp.dot(w, w)


def logistic_sklearn(C):
    # Newton–Cholesky reaches ‖∇f‖ ~ 1e-15; scikit-learn's L-BFGS stops near 1e-7 whatever its tol, too coarse for
    # finite differences (the solution test also checks solver="lbfgs").
    X, s = breast_cancer()
    model = LogisticRegression(C=float(C), fit_intercept=False, tol=1e-14, max_iter=1000, solver="newton-cholesky")
    return model.fit(X, (s > 0).astype(int)).coef_[0]


def logistic_sklearn_lbfgs(C):
    X, s = breast_cancer()
    model = LogisticRegression(C=float(C), fit_intercept=False, tol=1e-12, max_iter=10_000, solver="lbfgs")
    return model.fit(X, (s > 0).astype(int)).coef_[0]


# --- a smooth non-convex problem: Rosenbrock with parameters, against SciPy's BFGS -----------------------------

_ROSENBROCK_B = 5.0


def rosenbrock_objective(x, a):
    return jnp.sum((a - x) ** 2) + _ROSENBROCK_B * jnp.sum((x[1:] - x[:-1] ** 2) ** 2)


def _rosenbrock_gradient(x, a):
    g = -2 * (a - x)
    t = x[1:] - x[:-1] ** 2
    g[1:] += 2 * _ROSENBROCK_B * t
    g[:-1] -= 4 * _ROSENBROCK_B * t * x[:-1]
    return g


def rosenbrock_scipy(a):
    a = np.asarray(a, np.float64)

    def f(x):
        return np.sum((a - x) ** 2) + _ROSENBROCK_B * np.sum((x[1:] - x[:-1] ** 2) ** 2)

    # BFGS to a minimum, then MINPACK on its gradient to polish it to full float64 precision.
    result = scipy.optimize.minimize(f, np.full(3, 0.5), jac=lambda x: _rosenbrock_gradient(x, a), method="BFGS")
    polished = scipy.optimize.root(lambda x: _rosenbrock_gradient(x, a), result.x, method="hybr", tol=1e-15)
    assert np.linalg.norm(_rosenbrock_gradient(polished.x, a)) < 1e-12, polished.message
    assert np.linalg.norm(polished.x - result.x) < 1e-4
    return polished.x


# --- a box-constrained problem, against SciPy's L-BFGS-B; the upper bounds are parameters ----------------------

_rng = np.random.default_rng(1)
_M = _rng.normal(size=(5, 5))
BOX_Q = _M @ _M.T / 5 + 0.5 * np.eye(5)
BOX_LOWER = -0.5
BOX_PARAMS = {"theta": np.array([2.0, -2.0, 0.3, 1.5, -0.2]), "upper": np.array([0.5, 0.5, 0.5, 0.4, 0.5])}


def box_objective(x, p):
    return 0.5 * x @ like(BOX_Q, x) @ x - p["theta"] @ x + 0.1 * jnp.sum(x**4)


def box_projection(v, p):
    return implax.projections.box(v, BOX_LOWER, p["upper"])


def box_scipy(p):
    theta, upper = np.asarray(p["theta"]), np.asarray(p["upper"])

    def f(x):
        return 0.5 * x @ BOX_Q @ x - theta @ x + 0.1 * np.sum(x**4)

    def g(x):
        return BOX_Q @ x - theta + 0.4 * x**3

    bounds = list(zip(np.full(5, BOX_LOWER), upper))
    options = dict(ftol=1e-16, gtol=1e-14, maxiter=10_000)
    return scipy.optimize.minimize(f, np.zeros(5), jac=g, method="L-BFGS-B", bounds=bounds, options=options).x


# --- a QP over the simplex, against CVXPY ------------------------------------------------------------------------

_M = _rng.normal(size=(4, 4))
SIMPLEX_Q = _M @ _M.T / 4 + 0.5 * np.eye(4)
# The first c keeps the solution in the simplex's interior (what mirror descent's condition needs); the second
# puts one coordinate on the boundary with a positive multiplier (a stable support).
SIMPLEX_C_INTERIOR = np.array([0.1, -0.2, 0.05, 0.0])
SIMPLEX_C_SPARSE = np.array([0.1, -0.8, 1.0, 0.0])


def simplex_objective(x, c):
    return 0.5 * x @ like(SIMPLEX_Q, x) @ x + c @ x


def simplex_projection(v, c):
    return implax.projections.simplex(v)


def simplex_cvxpy(c):
    x = cp.Variable(4)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, SIMPLEX_Q) + np.asarray(c) @ x), [cp.sum(x) == 1, x >= 0])
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13)
    assert problem.status == "optimal", problem.status
    return x.value


PROJECTED_SIMPLEX = implax.ProjectedGradient(projection=simplex_projection)
# Fixed steps: the backtracking searches of MirrorDescent, and of ProjectedGradient on the sparse simplex QP,
# collapse near the solution (test_minimize.py, the strict xfails of the line search).
MIRROR_FIXED_STEP = implax.MirrorDescent(stepsize=1.0, max_steps=1000)
PROJECTED_SIMPLEX_FIXED_STEP = implax.ProjectedGradient(projection=simplex_projection, stepsize=0.25)

PROBLEMS = (
    Problem(
        "ridge",
        ridge_objective,
        np.zeros(10),
        np.array(0.1),
        ridge_sklearn,
        (implax.GradientDescent(max_steps=1000),),
    ),
    Problem(
        "lasso",
        squared_loss,
        np.zeros(10),
        np.array(0.05),
        lasso_sklearn,
        (
            implax.ProximalGradient(l1_prox, max_steps=1000),
            implax.ProximalGradient(l1_prox, acceleration=False, max_steps=1000),
        ),
        fd_eps=1e-5,
    ),
    Problem(
        "elastic_net",
        squared_loss,
        np.zeros(10),
        {"alpha": np.array(0.05), "l1_ratio": np.array(0.6)},
        elastic_net_sklearn,
        (implax.ProximalGradient(elastic_net_prox, max_steps=1000),),
        fd_eps=1e-5,
    ),
    Problem(
        "logistic",
        logistic_objective,
        np.zeros(8),
        np.array(0.5),
        logistic_sklearn,
        (implax.LBFGS(), implax.Newton()),
    ),
    Problem(
        "rosenbrock",
        rosenbrock_objective,
        np.full(3, 0.5),
        np.array([1.0, 0.8, 1.2]),
        rosenbrock_scipy,
        (implax.LBFGS(), implax.Newton()),
    ),
    Problem(
        "box",
        box_objective,
        np.zeros(5),
        BOX_PARAMS,
        box_scipy,
        (implax.ProjectedGradient(projection=box_projection, max_steps=1000),),
        reference_rtol=1e-8,
        fd_eps=1e-5,
    ),
    Problem(
        "simplex_interior",
        simplex_objective,
        np.full(4, 0.25),
        SIMPLEX_C_INTERIOR,
        simplex_cvxpy,
        (MIRROR_FIXED_STEP, PROJECTED_SIMPLEX),
        reference_rtol=1e-7,
        fd_eps=1e-4,
    ),
    Problem(
        "simplex_sparse",
        simplex_objective,
        np.full(4, 0.25),
        SIMPLEX_C_SPARSE,
        simplex_cvxpy,
        (PROJECTED_SIMPLEX_FIXED_STEP,),
        reference_rtol=1e-7,
        fd_eps=1e-4,
    ),
)

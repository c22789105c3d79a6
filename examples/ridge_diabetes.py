r"""Ridge on diabetes: tune the regularization by hypergradient descent through the inner solve.

Bilevel problem on scikit-learn's diabetes data (442 patients, 10 features), split in halves into training and
validation sets; features and target are standardized with the training statistics.

- Inner: ridge regression on the training set,

  .. math:: w^\star(\lambda) = \operatorname*{argmin}_w \frac1{2n} \|X w - y\|^2 + \frac\lambda2 \|w\|^2,

  solved by :func:`implax.minimize` with L-BFGS.
- Outer: the validation error :math:`L(u) = \frac1{m} \|X_v w^\star(e^u) - y_v\|^2` over :math:`u = \log\lambda`,
  minimized by Adam. Its gradient, the hypergradient, goes through :math:`w^\star` by the implicit function
  theorem: :math:`\partial w^\star / \partial u = -\lambda (X^\top X / n + \lambda I)^{-1} w^\star`, one Cholesky
  solve with the inner Hessian, without differentiating the L-BFGS iterations. :math:`L` is not convex: besides
  its minimum near :math:`\lambda = 0.3` it has a shallow local one near :math:`\lambda = 1.4 \cdot 10^{-3}`
  (the error changes there in the sixth digit), so the descent starts at :math:`\lambda = 10^{-2}`, past it.

Independent checks, with scikit-learn only: the inner solution against :class:`sklearn.linear_model.Ridge`,
which minimizes :math:`\|Xw - y\|^2 + \alpha \|w\|^2`, i.e. the same problem with :math:`\alpha = n\lambda`
(no intercept: the data are centred); the hypergradient at a few :math:`\lambda` against central finite
differences of the validation error of scikit-learn's solution; the tuned :math:`\lambda` against the
minimizer of that validation error found by a fine grid search refined by Brent's method.

Run ``python examples/ridge_diabetes.py [--quick]``; it saves ``examples/figures/ridge_diabetes.png`` and exits
with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from _common import compare, figure_path, hypergradient_descent
from matplotlib.figure import Figure
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split

import implax

jax.config.update("jax_enable_x64", True)

CHECK_LOG_LAMBDAS = (-4.0, -1.0, 1.0)
FD_STEP = 1e-4
HYPERGRADIENT_RTOL = 1e-6
SOLUTION_RTOL = 1e-8
GRID = (-6.0, 2.0)


def load_data(seed: int = 0, validation_fraction: float = 0.5) -> tuple[np.ndarray, ...]:
    """``(X, y, X_val, y_val)``: the diabetes data split at random, standardized with the training statistics."""
    features, target = load_diabetes(return_X_y=True)
    x, x_val, y, y_val = train_test_split(features, target, test_size=validation_fraction, random_state=seed)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    y_mean, y_scale = y.mean(), y.std()
    return (x - mean) / scale, (y - y_mean) / y_scale, (x_val - mean) / scale, (y_val - y_mean) / y_scale


def ridge_objective(x: np.ndarray, y: np.ndarray) -> Callable:
    r""":math:`f(w, u) = \frac1{2n}\|Xw - y\|^2 + \frac{e^u}2\|w\|^2`."""

    def f(w, log_lam):
        residual = x @ w - y
        return 0.5 * jnp.mean(residual**2) + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)

    return f


def validation_loss_fn(data, solver: implax.LBFGS | implax.GradientDescent | None = None) -> Callable:
    """``u ↦ (L(u), w*(e^u))``, differentiable in ``u`` through :func:`implax.minimize`."""
    x, y, x_val, y_val = (jnp.asarray(a) for a in data)
    f = ridge_objective(x, y)
    solver = implax.LBFGS() if solver is None else solver

    def loss(log_lam):
        w = implax.minimize(f, jnp.zeros(x.shape[1]), log_lam, solver=solver).value
        return jnp.mean((x_val @ w - y_val) ** 2), w

    return loss


def sklearn_solution(data, lam: float) -> np.ndarray:
    """:class:`~sklearn.linear_model.Ridge` with :math:`\\alpha = n\\lambda`, by a Cholesky solve."""
    x, y, _, _ = data
    return Ridge(alpha=len(y) * lam, fit_intercept=False, solver="cholesky").fit(x, y).coef_


def sklearn_validation_loss(data, log_lam: float) -> float:
    _, _, x_val, y_val = data
    return float(np.mean((x_val @ sklearn_solution(data, np.exp(log_lam)) - y_val) ** 2))


def finite_difference(data, log_lam: float, step: float = FD_STEP) -> float:
    """Central difference of scikit-learn's validation error in :math:`u = \\log\\lambda`."""
    forward = sklearn_validation_loss(data, log_lam + step)
    backward = sklearn_validation_loss(data, log_lam - step)
    return (forward - backward) / (2 * step)


def grid_search(data, points: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Validation error of scikit-learn's solution on a grid of :math:`\\log\\lambda`, and its minimizer refined
    by bounded Brent's method between the grid neighbours of the best grid point."""
    grid = np.linspace(*GRID, points)
    losses = np.array([sklearn_validation_loss(data, u) for u in grid])
    best = int(np.argmin(losses))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, points - 1)]
    refined = scipy.optimize.minimize_scalar(
        lambda u: sklearn_validation_loss(data, u), bounds=(lo, hi), method="bounded", options=dict(xatol=1e-10)
    )
    return grid, losses, float(refined.x), float(refined.fun)


def plot(path, grid, grid_losses, reference_u, reference_loss, hgd_path, hgd_losses) -> None:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    curve, history = fig.subplots(1, 2)
    lam = np.exp(grid)
    curve.semilogx(lam, grid_losses, lw=2, label="scikit-learn Ridge (grid)")
    curve.semilogx(np.exp(hgd_path), hgd_losses, ".-", color="C1", ms=5, lw=0.8, label="hypergradient descent")
    curve.semilogx(np.exp(hgd_path[0]), hgd_losses[0], "o", color="C1", ms=7, label="start")
    curve.semilogx(
        np.exp(reference_u), reference_loss, "k*", ms=12, label=f"grid minimum λ = {np.exp(reference_u):.4g}"
    )
    curve.set(xlabel="λ", ylabel="validation MSE (standardized target)", title="Validation error of ridge")
    curve.grid(alpha=0.3, which="both")
    curve.legend(fontsize=9)
    gap = np.maximum(np.asarray(hgd_losses) - reference_loss, np.finfo(float).tiny)
    history.semilogy(np.arange(len(gap)), gap, lw=2)
    history.set(xlabel="hypergradient step", ylabel="L(u) − min L", title="Outer objective along the descent")
    history.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few outer steps and a coarse grid: a smoke run")
    parser.add_argument("--steps", type=int, default=None, help="outer steps (default 150; 60 with --quick)")
    parser.add_argument("--learning-rate", type=float, default=0.3, help="Adam's initial rate (default 0.3)")
    parser.add_argument("--start", type=float, default=1e-2, help="initial λ (default 1e-2)")
    parser.add_argument("--grid", type=int, default=None, help="grid points (default 801; 81 with --quick)")
    parser.add_argument("--inner", choices=("lbfgs", "gd"), default="lbfgs", help="inner solver (default lbfgs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    parser.add_argument("--figure-dir", default=None, help="where the figure goes (default examples/figures)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (60 if args.quick else 150)
    args.grid = args.grid or (81 if args.quick else 801)
    # The tuned λ is compared with the grid search's: tightly after a full run, loosely after a smoke run.
    args.lambda_rtol = 0.1 if args.quick else 1e-3
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Tunes λ, checks the solution, hypergradients and tuned λ against scikit-learn and saves a figure.

    Returns:
      A dictionary with ``summary``, ``data`` (the standardized split), ``check_log_lambdas`` with their
      ``hypergradients`` (in :math:`u = \\log\\lambda`) and ``fd_hypergradients``, the tuned and reference
      ``lam``, ``reference_lam``, the descent's ``path`` and ``losses``, the figure's path and ``passed``.
    """
    args = parse_args(argv)
    data = load_data(args.seed)
    n, p = data[0].shape
    print(
        f"Ridge on diabetes: {n} training and {len(data[3])} validation patients, {p} features; "
        f"λ tuned by Adam on log λ through implax.minimize ({args.inner})"
    )
    solver = implax.LBFGS() if args.inner == "lbfgs" else implax.GradientDescent(max_steps=2000)
    value_and_grad = jax.jit(jax.value_and_grad(validation_loss_fn(data, solver), has_aux=True))

    print("checks against scikit-learn:")
    checks, hypergradients, fd_hypergradients = [], [], []
    for u in CHECK_LOG_LAMBDAS:
        (_, w), grad = value_and_grad(jnp.asarray(u))
        checks.append(compare(f"w*(λ = {np.exp(u):.3g})", w, sklearn_solution(data, np.exp(u)), SOLUTION_RTOL))
        hypergradients.append(float(grad))
        fd_hypergradients.append(finite_difference(data, u))
        checks.append(compare(f"dL/dlog λ at λ = {np.exp(u):.3g}", grad, fd_hypergradients[-1], HYPERGRADIENT_RTOL))

    u, hgd_path, hgd_losses = hypergradient_descent(
        value_and_grad, np.log(args.start), args.steps, args.learning_rate, "lam"
    )
    grid, grid_losses, reference_u, reference_loss = grid_search(data, args.grid)
    lam, reference_lam = float(np.exp(u)), float(np.exp(reference_u))
    print(
        f"hypergradient descent: λ {args.start:g} → {lam:.6g} in {args.steps} steps, "
        f"validation MSE {hgd_losses[-1]:.6f}"
    )
    checks.append(compare("tuned λ vs grid search", lam, reference_lam, args.lambda_rtol))
    checks.append(compare("tuned validation MSE vs grid search", hgd_losses[-1], reference_loss, args.lambda_rtol**2))

    path = figure_path("ridge_diabetes.png", args.figure_dir)
    plot(path, grid, grid_losses, reference_u, reference_loss, hgd_path, hgd_losses)
    print(f"figure: {path}")
    worst = max(abs(g - r) / abs(r) for g, r in zip(hypergradients, fd_hypergradients))
    summary = (
        f"λ = {lam:.5g} (grid search {reference_lam:.5g}), validation MSE {hgd_losses[-1]:.5f}; "
        f"hypergradient vs FD of sklearn {worst:.0e}"
    )
    return dict(
        summary=summary,
        data=data,
        check_log_lambdas=CHECK_LOG_LAMBDAS,
        hypergradients=hypergradients,
        fd_hypergradients=fd_hypergradients,
        lam=lam,
        reference_lam=reference_lam,
        validation_loss=hgd_losses[-1],
        reference_validation_loss=reference_loss,
        path=hgd_path,
        losses=hgd_losses,
        figure=path,
        passed=all(checks),
    )


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)

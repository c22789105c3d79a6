r"""Lasso on diabetes: tune the L1 weight by hypergradient descent through proximal gradient descent.

Bilevel problem on scikit-learn's diabetes data, split in halves into training and validation sets, features and
target standardized with the training statistics.

- Inner: the lasso on the training set, in scikit-learn's scaling,

  .. math:: w^\star(\alpha) = \operatorname*{argmin}_w \frac1{2n} \|X w - y\|^2 + \alpha \|w\|_1,

  solved by :func:`implax.minimize` with :class:`implax.ProximalGradient` (FISTA) and the soft thresholding
  :func:`implax.prox.l1`. Its solution is differentiated through the fixed point
  :math:`w = \mathrm{prox}_{\alpha\|\cdot\|_1}(w - \nabla f(w))`; on the support :math:`S` this gives
  :math:`\partial w_S / \partial\alpha = -(X_S^\top X_S / n)^{-1} \operatorname{sign}(w_S)`, and zero off it.
- Outer: the validation error :math:`L(u) = \frac1m \|X_v w^\star(e^u) - y_v\|^2` over :math:`u = \log\alpha`,
  minimized by Adam.

The lasso path :math:`\alpha \mapsto w^\star(\alpha)` is piecewise affine, with kinks where a feature enters or
leaves the support. Between two kinks a central difference of the path is exact up to the solver's error, so
the check is sharp: at the geometric midpoints of a few segments between consecutive kinks of the path
(from :func:`sklearn.linear_model.lars_path`), the Jacobian :math:`\partial w^\star / \partial\alpha` and the
hypergradient are compared with central differences of :func:`sklearn.linear_model.lasso_path` solved to a
duality gap of 1e-15, with a relative step of 1e-4 that keeps the support (which is checked). The tuned
:math:`\alpha` is compared with the minimizer of scikit-learn's validation error on a fine grid, refined by
Brent's method.

Run ``python examples/lasso_hyperparameter.py [--quick]``; it saves ``examples/figures/lasso_hyperparameter.png``
and exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from _common import compare, figure_path, hypergradient_descent
from matplotlib.figure import Figure
from sklearn.datasets import load_diabetes
from sklearn.linear_model import lars_path, lasso_path
from sklearn.model_selection import train_test_split

import implax

jax.config.update("jax_enable_x64", True)

SKLEARN_TOL = 1e-14
FD_STEP = 1e-4
JACOBIAN_RTOL = 1e-6
HYPERGRADIENT_RTOL = 1e-6
SOLUTION_RTOL = 1e-8


def load_data(seed: int = 0, validation_fraction: float = 0.5) -> tuple[np.ndarray, ...]:
    """``(X, y, X_val, y_val)``: the diabetes data split at random, standardized with the training statistics."""
    features, target = load_diabetes(return_X_y=True)
    x, x_val, y, y_val = train_test_split(features, target, test_size=validation_fraction, random_state=seed)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    y_mean, y_scale = y.mean(), y.std()
    return (x - mean) / scale, (y - y_mean) / y_scale, (x_val - mean) / scale, (y_val - y_mean) / y_scale


def lasso_solver(data, max_steps: int = 20_000) -> Callable:
    """``u ↦ w*(e^u)`` by FISTA with soft thresholding, differentiable in ``u`` by implicit differentiation."""
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])

    def f(w, log_alpha):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    def prox(v, log_alpha, step):
        return implax.prox.l1(v, step * jnp.exp(log_alpha))

    solver = implax.ProximalGradient(prox, max_steps=max_steps, rtol=1e-11)

    def solve(log_alpha):
        return implax.minimize(f, jnp.zeros(x.shape[1]), log_alpha, solver=solver).value

    return solve


def validation_loss_fn(data, solve: Callable) -> Callable:
    """``u ↦ (L(u), w*(e^u))``."""
    x_val, y_val = jnp.asarray(data[2]), jnp.asarray(data[3])

    def loss(log_alpha):
        w = solve(log_alpha)
        return jnp.mean((x_val @ w - y_val) ** 2), w

    return loss


def sklearn_path(data, alphas) -> np.ndarray:
    """Lasso solutions at ``alphas`` by coordinate descent (:func:`~sklearn.linear_model.lasso_path`), one column
    per alpha, in the order given."""
    alphas = np.asarray(alphas, dtype=float)
    order = np.argsort(-alphas)
    _, coefs, _ = lasso_path(data[0], data[1], alphas=alphas[order], tol=SKLEARN_TOL, max_iter=1_000_000)
    result = np.empty_like(coefs)
    result[:, order] = coefs
    return result


def sklearn_validation_loss(data, coefs: np.ndarray) -> np.ndarray:
    """Validation errors of solutions given as columns."""
    return np.mean((data[2] @ coefs - data[3][:, None]) ** 2, axis=0)


def check_alphas(data, count: int) -> np.ndarray:
    """Geometric midpoints of ``count`` segments of the lasso path between consecutive kinks (from LARS), spread
    over the segments with a nonempty support that span at least a factor 1.1."""
    kinks, _, _ = lars_path(data[0], data[1], method="lasso")
    kinks = kinks[kinks > 0]
    segments = [(a, b) for a, b in itertools.pairwise(kinks) if a / b > 1.1]
    chosen = np.unique(np.linspace(0, len(segments) - 1, count).round().astype(int))
    return np.array([np.sqrt(segments[i][0] * segments[i][1]) for i in chosen])


def finite_differences(data, alpha: float, step: float = FD_STEP) -> tuple[np.ndarray, float, bool]:
    """Central differences of scikit-learn's path at ``alpha`` with a relative step: ``dw/dα``, ``dL/dlog α``, and
    whether the support is the same at both ends."""
    coefs = sklearn_path(data, [alpha * (1 + step), alpha * (1 - step)])
    jacobian = (coefs[:, 0] - coefs[:, 1]) / (2 * step * alpha)
    losses = sklearn_validation_loss(data, coefs)
    hypergradient = (losses[0] - losses[1]) / (np.log1p(step) - np.log1p(-step))
    same_support = bool(np.array_equal(coefs[:, 0] != 0, coefs[:, 1] != 0))
    return jacobian, float(hypergradient), same_support


def grid_search(data, points: int, bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Validation error along scikit-learn's path on a geometric grid of α, and its minimizer refined by bounded
    Brent's method in log α between the grid neighbours of the best grid point."""
    alphas = np.geomspace(*bounds, points)
    losses = sklearn_validation_loss(data, sklearn_path(data, alphas))
    best = int(np.argmin(losses))
    lo, hi = np.log(alphas[max(best - 1, 0)]), np.log(alphas[min(best + 1, points - 1)])

    def loss(u):
        return float(sklearn_validation_loss(data, sklearn_path(data, [np.exp(u)]))[0])

    refined = scipy.optimize.minimize_scalar(loss, bounds=(lo, hi), method="bounded", options=dict(xatol=1e-10))
    return alphas, losses, float(np.exp(refined.x)), float(refined.fun)


def plot(path, grid, grid_losses, reference, hgd_path, hgd_losses, curve_alphas, curve_grads, checks) -> None:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_panel, grad_panel = fig.subplots(1, 2)
    loss_panel.semilogx(grid, grid_losses, lw=2, label="scikit-learn lasso path")
    loss_panel.semilogx(np.exp(hgd_path), hgd_losses, ".-", color="C1", ms=5, lw=0.8, label="hypergradient descent")
    loss_panel.semilogx(np.exp(hgd_path[0]), hgd_losses[0], "o", color="C1", ms=7, label="start")
    loss_panel.semilogx(*reference, "k*", ms=12, label=f"grid minimum α = {reference[0]:.4g}")
    loss_panel.set(xlabel="α", ylabel="validation MSE (standardized target)", title="Validation error along the path")
    loss_panel.grid(alpha=0.3, which="both")
    loss_panel.legend(fontsize=9)
    grad_panel.semilogx(curve_alphas, curve_grads, lw=1.8, label="implicit (implax)")
    alphas, fd = zip(*((c["alpha"], c["fd_hypergradient"]) for c in checks))
    grad_panel.semilogx(alphas, fd, "rs", mfc="none", ms=9, label="central differences of scikit-learn")
    grad_panel.axhline(0, color="gray", lw=0.8)
    grad_panel.set_yscale("symlog", linthresh=1e-4)
    grad_panel.set(xlabel="α", ylabel="dL / dlog α", title="Hypergradient")
    grad_panel.grid(alpha=0.3, which="both")
    grad_panel.legend(fontsize=9)
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few outer steps and coarse grids: a smoke run")
    parser.add_argument("--steps", type=int, default=None, help="outer steps (default 250; 100 with --quick)")
    parser.add_argument("--learning-rate", type=float, default=0.3, help="Adam's initial rate (default 0.3)")
    parser.add_argument("--start", type=float, default=0.2, help="initial α (default 0.2)")
    parser.add_argument("--checks", type=int, default=None, help="α checked by FD (default 5; 3 with --quick)")
    parser.add_argument("--grid", type=int, default=None, help="grid points (default 801; 101 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    parser.add_argument("--figure-dir", default=None, help="where the figure goes (default examples/figures)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (100 if args.quick else 250)
    args.checks = args.checks or (3 if args.quick else 5)
    args.grid = args.grid or (101 if args.quick else 801)
    args.alpha_rtol = 0.1 if args.quick else 1e-3
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Checks the implicit Jacobian and hypergradient against finite differences of scikit-learn's lasso path,
    tunes α, compares it with a grid search and saves a figure.

    Returns:
      A dictionary with ``summary``, ``data``, ``checks`` (per checked α: ``alpha``, ``jacobian`` and
      ``fd_jacobian`` of :math:`\\partial w^\\star/\\partial\\alpha`, ``hypergradient`` and ``fd_hypergradient`` in
      :math:`\\log\\alpha`, ``solution``), the tuned ``alpha`` and ``reference_alpha``, the descent's ``path`` and
      ``losses``, the figure's path and ``passed``.
    """
    args = parse_args(argv)
    data = load_data(args.seed)
    n, p = data[0].shape
    print(
        f"Lasso on diabetes: {n} training and {len(data[3])} validation patients, {p} features; "
        f"α tuned by Adam on log α through implax.minimize (ProximalGradient, prox.l1)"
    )
    solve = lasso_solver(data)
    value_and_grad = jax.jit(jax.value_and_grad(validation_loss_fn(data, solve), has_aux=True))
    jacobian_fn = jax.jit(lambda u: jax.jacfwd(solve)(u) / jnp.exp(u))

    print("checks against central differences of scikit-learn's lasso path:")
    passed, checks = [], []
    for alpha in check_alphas(data, args.checks):
        u = jnp.log(alpha)
        (_, w), grad = value_and_grad(u)
        jacobian = np.asarray(jacobian_fn(u))
        fd_jacobian, fd_grad, same_support = finite_differences(data, alpha)
        support = int(np.count_nonzero(w))
        print(f"  α = {alpha:.5g}: support of {support} features, kept by the finite-difference step: {same_support}")
        passed.append(same_support)
        passed.append(compare("  w*(α)", w, sklearn_path(data, [alpha])[:, 0], SOLUTION_RTOL))
        passed.append(compare("  dw*/dα", jacobian, fd_jacobian, JACOBIAN_RTOL))
        passed.append(compare("  dL/dlog α", grad, fd_grad, HYPERGRADIENT_RTOL))
        checks.append(
            dict(
                alpha=float(alpha),
                solution=np.asarray(w),
                jacobian=jacobian,
                fd_jacobian=fd_jacobian,
                hypergradient=float(grad),
                fd_hypergradient=fd_grad,
            )
        )

    u, hgd_path, hgd_losses = hypergradient_descent(
        value_and_grad, np.log(args.start), args.steps, args.learning_rate, "alpha"
    )
    alpha = float(np.exp(u))
    grid, grid_losses, reference_alpha, reference_loss = grid_search(data, args.grid, (1e-4, 1.0))
    print(
        f"hypergradient descent: α {args.start:g} → {alpha:.6g} in {args.steps} steps, "
        f"validation MSE {hgd_losses[-1]:.6f} (support of {np.count_nonzero(value_and_grad(u)[0][1])} features)"
    )
    passed.append(compare("tuned α vs grid search", alpha, reference_alpha, args.alpha_rtol))
    passed.append(compare("tuned validation MSE vs grid search", hgd_losses[-1], reference_loss, args.alpha_rtol**2))

    curve_alphas = grid[:: max(1, args.grid // 60)]
    curve_grads = [float(value_and_grad(jnp.log(a))[1]) for a in curve_alphas]
    path = figure_path("lasso_hyperparameter.png", args.figure_dir)
    plot(
        path,
        grid,
        grid_losses,
        (reference_alpha, reference_loss),
        hgd_path,
        hgd_losses,
        curve_alphas,
        curve_grads,
        checks,
    )
    print(f"figure: {path}")
    worst = max(
        max(abs(c["hypergradient"] - c["fd_hypergradient"]) / abs(c["fd_hypergradient"]) for c in checks),
        max(np.abs(c["jacobian"] - c["fd_jacobian"]).max() / np.abs(c["fd_jacobian"]).max() for c in checks),
    )
    summary = (
        f"α = {alpha:.5g} (grid search {reference_alpha:.5g}), validation MSE {hgd_losses[-1]:.5f}; "
        f"Jacobian and hypergradient vs FD of sklearn's path at {len(checks)} α: {worst:.0e}"
    )
    return dict(
        summary=summary,
        data=data,
        checks=checks,
        alpha=alpha,
        reference_alpha=reference_alpha,
        validation_loss=hgd_losses[-1],
        reference_validation_loss=reference_loss,
        path=hgd_path,
        losses=hgd_losses,
        figure=path,
        passed=all(passed),
    )


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)

r"""A SciPy root finder made differentiable: steady states of a reaction–advection–diffusion equation.

The steady temperature :math:`u(x)` of a slab with an exothermic reaction and a through-flow solves the
Bratu–Gelfand problem with advection,

.. math:: u'' - c\,u' + \lambda e^u = 0 \quad \text{on } (0, 1), \qquad u(0) = u(1) = 0,

with parameters :math:`\theta = (\lambda, c)`: the reaction's strength and the advection speed. Central
differences on :math:`n` interior points, :math:`h = 1/(n+1)`, give the system

.. math:: F(u, \theta) = (D_2 - c\,D_1)\,u + \lambda e^u = 0,

with :math:`D_2 = \operatorname{tridiag}(1, -2, 1)/h^2` and :math:`D_1 = \operatorname{tridiag}(-1, 0, 1)/2h`.
Its Jacobian :math:`\partial_u F = D_2 - c\,D_1 + \lambda \operatorname{diag}(e^u)` is not symmetric when
:math:`c \ne 0`, so a transposition error in reverse mode would show. Started from :math:`u = 0` the solver
finds the lower branch of steady states, which ends at a fold (:math:`\lambda \approx 3.82` for :math:`c = 2`,
3.51 for :math:`c = 0`) where :math:`\partial_u F` turns singular and :math:`du^\star/d\lambda` blows up.

:func:`scipy.optimize.root` (MINPACK's hybrid Powell method) solves it on the host. :func:`implax.black_box`
makes it a JAX function through :func:`jax.pure_callback`, and :func:`implax.custom_root` differentiates it
through :math:`\partial_u F\, \dot u = -\partial_\theta F\, \dot\theta`. JAX cannot differentiate the SciPy call,
so every derivative below comes from the engine.

Shown: :func:`jax.jit` of the solver; :func:`jax.jacobian` (reverse mode) and :func:`jax.jacfwd` of
:math:`u^\star(\theta)`; :func:`jax.grad` of the mean temperature :math:`J(\theta) = h \sum_i u^\star_i`; and
:func:`jax.vmap` of the solver and of :math:`dJ/d\lambda` over a grid of :math:`\lambda`, one SciPy call per
element. Checked against central differences of the SciPy solution itself, re-solved at
:math:`\theta \pm \delta_k e_k` with :math:`\delta_k = 10^{-5} \max(1, |\theta_k|)`; their own error,
:math:`O(\delta^2)` plus the solver's tolerance over :math:`\delta`, is about :math:`10^{-10}` relative away
from the fold and :math:`10^{-8}` at :math:`\lambda = 3.7`.

Run ``python examples/scipy_root.py [--lam 3 --advection 2 --n 40]``; it exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from _common import compare, figure_path
from matplotlib import colormaps
from matplotlib.figure import Figure

import implax

jax.config.update("jax_enable_x64", True)

RESIDUAL_TOL = 1e-9
FD_RELATIVE_STEP = 1e-5


def discretization(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The interior grid points and the difference matrices :math:`D_2` and :math:`D_1` on them."""
    h = 1.0 / (n + 1)
    grid = h * np.arange(1, n + 1)
    off = np.ones(n - 1)
    d2 = (np.diag(off, 1) - 2 * np.eye(n) + np.diag(off, -1)) / h**2
    d1 = (np.diag(off, 1) - np.diag(off, -1)) / (2 * h)
    return grid, d2, d1


def residual(u, theta, d2, d1, xp=jnp):
    r""":math:`F(u, \theta) = (D_2 - c\,D_1)\,u + \lambda e^u`, in JAX (``xp=jnp``) or NumPy (``xp=np``)."""
    lam, c = theta[0], theta[1]
    return (d2 - c * d1) @ u + lam * xp.exp(u)


def scipy_steady_state(init: np.ndarray, theta: np.ndarray, d2: np.ndarray, d1: np.ndarray) -> np.ndarray:
    r"""The root of :math:`F(\cdot, \theta)` by :func:`scipy.optimize.root` (``hybr``) from ``init``, in NumPy.

    Returns:
      The root, or NaN everywhere when :math:`\|F\|_\infty` at SciPy's answer exceeds ``RESIDUAL_TOL``: under
      ``vmap`` a failed element then shows as NaN instead of stopping the batch.
    """
    lam, c = theta

    def fun(u):
        return residual(u, theta, d2, d1, np)

    def jacobian(u):
        return d2 - c * d1 + lam * np.diag(np.exp(u))

    solution = scipy.optimize.root(fun, init, jac=jacobian, method="hybr", options={"xtol": 1e-13})
    if not np.max(np.abs(fun(solution.x))) <= RESIDUAL_TOL:
        return np.full_like(init, np.nan)
    return solution.x


def differentiable_solver(d2: np.ndarray, d1: np.ndarray):
    r"""``solve(init, theta) -> u*``: the SciPy solver as a JAX function, differentiable in ``theta``."""

    def optimality(u, theta):
        return residual(u, theta, d2, d1)

    @implax.custom_root(optimality)
    @implax.black_box
    def solve(init, theta):
        return scipy_steady_state(init, theta, d2, d1)

    return solve


def central_difference(fn, theta: np.ndarray) -> np.ndarray:
    """Jacobian of ``fn`` at ``theta`` by central differences, shape ``fn(theta).shape + theta.shape``."""
    columns = []
    for k in range(theta.size):
        step = np.zeros_like(theta)
        step[k] = FD_RELATIVE_STEP * max(1.0, abs(theta[k]))
        columns.append((fn(theta + step) - fn(theta - step)) / (2 * step[k]))
    return np.stack(columns, axis=-1)


def plot(path, grid, theta, jacobian, reference_jacobian, lams, solutions, dmean, reference_dmean) -> None:
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    profiles, sensitivities, slopes = fig.subplots(1, 3)

    def with_boundary(values):
        return np.concatenate([[0.0], values, [0.0]])

    x = np.concatenate([[0.0], grid, [1.0]])
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(lams)))
    for i in range(0, len(lams), max(1, len(lams) // 7)):
        profiles.plot(x, with_boundary(solutions[i]), color=colors[i], label=f"λ = {lams[i]:.2f}")
    profiles.set(xlabel="x", ylabel="u*(x)", title=f"Steady states for c = {theta[1]:g} (one vmapped call)")
    profiles.legend(fontsize=8)

    for k, (name, color) in enumerate((("λ", "C0"), ("c", "C1"))):
        sensitivities.plot(x, with_boundary(jacobian[:, k]), color=color, lw=2, label=f"∂u*/∂{name}, jax.jacobian")
        sensitivities.plot(grid, reference_jacobian[:, k], ".", color="k", ms=5)
    sensitivities.plot([], [], "k.", ms=5, label="central differences of SciPy")
    sensitivities.set(
        xlabel="x", ylabel="sensitivity", title=f"Sensitivities at θ = (λ, c) = ({theta[0]:g}, {theta[1]:g})"
    )
    low, high = jacobian.min(), jacobian.max()
    sensitivities.set_ylim(low - 0.05 * (high - low), high + 0.45 * (high - low))
    sensitivities.legend(fontsize=9, loc="upper left")

    slopes.plot(lams, dmean, "r", lw=2, label="jax.vmap(jax.grad(J))")
    slopes.plot(lams, reference_dmean, "k.", ms=6, label="central differences of SciPy")
    slopes.set(xlabel="λ", ylabel=r"$dJ/d\lambda$", title="dJ/dλ rises towards the fold")
    slopes.legend(fontsize=9)
    for ax in (profiles, sensitivities, slopes):
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lam", type=float, default=3.0, help="reaction strength λ (default 3)")
    parser.add_argument("--advection", type=float, default=2.0, help="advection speed c (default 2)")
    parser.add_argument("--n", type=int, default=40, help="interior grid points (default 40)")
    parser.add_argument("--grid", type=int, default=36, help="number of λ values for vmap (default 36)")
    parser.add_argument(
        "--sweep", nargs=2, type=float, default=(0.2, 3.7), metavar=("LO", "HI"), help="λ range, below the fold"
    )
    parser.add_argument("--rtol", type=float, default=1e-6, help="tolerance of the checks (default 1e-6)")
    parser.add_argument("--figure-dir", default=None, help="where the figure goes (default examples/figures)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Solves, differentiates four ways, checks against finite differences of SciPy, and saves a figure.

    Returns:
      A dictionary of the solution, the implicit derivatives and their finite-difference references, the
      vmapped sweep over λ, the figure's path, and ``passed``, whether every check is within ``--rtol``.
    """
    args = parse_args(argv)
    grid, d2, d1 = discretization(args.n)
    h = grid[0]
    theta = np.array([args.lam, args.advection])
    init = np.zeros(args.n)
    solve = differentiable_solver(d2, d1)

    def mean(theta):
        return h * jnp.sum(solve(init, theta))

    def scipy_solution(theta):
        return scipy_steady_state(init, theta, d2, d1)

    def scipy_mean(theta):
        return h * np.sum(scipy_solution(theta))

    print(
        f"Steady states of u'' - c u' + λ exp(u) = 0, u(0) = u(1) = 0, on {args.n} interior points; "
        f"θ = (λ, c) = ({args.lam:g}, {args.advection:g})"
    )
    u = jax.jit(solve)(init, theta)
    print(
        f"jax.jit(solve): scipy.optimize.root (hybr) behind jax.pure_callback; max u* = {float(jnp.max(u)):.6f}, "
        f"J = {h * float(jnp.sum(u)):.6f}, ‖F(u*, θ)‖∞ = {float(jnp.max(jnp.abs(residual(u, theta, d2, d1)))):.1e}"
    )

    print("derivatives from implax against central differences of SciPy re-solves:")
    jacobian_reverse = jax.jit(jax.jacobian(solve, argnums=1))(init, theta)
    jacobian_forward = jax.jit(jax.jacfwd(solve, argnums=1))(init, theta)
    gradient = jax.jit(jax.grad(mean))(theta)
    reference_jacobian = central_difference(scipy_solution, theta)
    reference_gradient = central_difference(scipy_mean, theta)
    checks = [
        compare("jax.jacobian (reverse) du*/dθ", jacobian_reverse, reference_jacobian, args.rtol),
        compare("jax.jacfwd (forward) du*/dθ", jacobian_forward, reference_jacobian, args.rtol),
        compare("jax.grad dJ/dλ", gradient[0], reference_gradient[0], args.rtol),
        compare("jax.grad dJ/dc", gradient[1], reference_gradient[1], args.rtol),
    ]

    lams = np.linspace(*args.sweep, args.grid)
    thetas = np.stack([lams, np.full_like(lams, args.advection)], axis=1)
    solutions = jax.jit(jax.vmap(solve, in_axes=(None, 0)))(init, thetas)
    sweep_mean = h * jnp.sum(solutions, axis=1)
    sweep_dmean = jax.jit(jax.vmap(jax.grad(mean)))(thetas)[:, 0]
    reference_sweep = np.array([scipy_mean(t) for t in thetas])
    reference_sweep_dmean = np.array([central_difference(scipy_mean, t)[0] for t in thetas])
    print(f"jax.vmap over {args.grid} values of λ in [{lams[0]:g}, {lams[-1]:g}], c = {args.advection:g}:")
    failed = np.isnan(solutions).any(axis=1)
    if failed.any():
        print(f"  SciPy found no lower-branch solution for λ = {lams[failed]} (past the fold?)")
    checks += [
        compare("vmap(solve): J(λ)", sweep_mean, reference_sweep, args.rtol),
        compare("vmap(grad): dJ/dλ", sweep_dmean, reference_sweep_dmean, args.rtol),
    ]
    print(f"  dJ/dλ = {float(sweep_dmean[0]):.4f} at λ = {lams[0]:g}, {float(sweep_dmean[-1]):.4f} at λ = {lams[-1]:g}")

    path = figure_path("scipy_root.png", args.figure_dir)
    plot(
        path,
        grid,
        theta,
        np.asarray(jacobian_reverse),
        reference_jacobian,
        lams,
        np.asarray(solutions),
        np.asarray(sweep_dmean),
        reference_sweep_dmean,
    )
    print(f"figure: {path}")
    return dict(
        theta=theta,
        solution=np.asarray(u),
        jacobian_reverse=np.asarray(jacobian_reverse),
        jacobian_forward=np.asarray(jacobian_forward),
        reference_jacobian=reference_jacobian,
        gradient=np.asarray(gradient),
        reference_gradient=reference_gradient,
        lams=lams,
        sweep_mean=np.asarray(sweep_mean),
        reference_sweep_mean=reference_sweep,
        sweep_dmean=np.asarray(sweep_dmean),
        reference_sweep_dmean=reference_sweep_dmean,
        figure=path,
        passed=all(checks),
    )


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)

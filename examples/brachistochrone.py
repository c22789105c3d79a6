r"""Brachistochrone: fit the cycloid through a point by gradient descent through a root find.

A bead sliding without friction, from rest at the origin, reaches :math:`P = (P_x, P_y)` (:math:`y` pointing
down) soonest along the cycloid

.. math:: x = R\,(t - \sin t), \qquad y = R\,(1 - \cos t), \qquad 0 \le t \le t_P,

whose radius :math:`R` makes it pass through :math:`P`. Along it :math:`ds / v = \sqrt{R/g}\, dt`, so the travel
time is :math:`T = t_P \sqrt{R/g}`.

The fit has two levels.

- Inner: for a given :math:`R`, the parameter :math:`t^\star(R)` at which the curve reaches :math:`x = P_x` is
  the root of :math:`F(t, R) = R\,(t - \sin t) - P_x`. On the first arch :math:`x` increases strictly from 0 to
  :math:`2\pi R`, so the root in :math:`(0, 2\pi)` exists and is unique exactly when :math:`P_x < 2\pi R`; it is
  found by Newton's method safeguarded by bisection on that bracket. The fit keeps :math:`R` admissible by
  writing :math:`R = P_x (1 + e^u) / 2\pi`.
- Outer: gradient descent on :math:`u` for :math:`L(u) = \big((y_R(t^\star(R)) - P_y) / P_y\big)^2`. Its
  gradient needs :math:`dt^\star/dR`, which :func:`implax.custom_root` supplies from the implicit function
  theorem, :math:`dt^\star/dR = -\partial_R F / \partial_t F = -(t - \sin t) / (R\,(1 - \cos t))`, without
  differentiating the Newton iterations (a ``lax.while_loop``, which JAX cannot differentiate in reverse mode).
  Steps are clipped to :math:`|\Delta u| \le 1/2`: far from the solution the gradient can be large, and an
  unclipped step lands where :math:`y_R \approx 0` and the gradient vanishes.

Independent checks, with SciPy only: :math:`R` against :func:`scipy.optimize.brentq` on
:math:`P_y (t - \sin t) - P_x (1 - \cos t) = 0` (the cycloid's :math:`y/x` equal to :math:`P_y / P_x`, with
:math:`R` eliminated) and :math:`R = P_y / (1 - \cos t_P)`; :math:`T` against :math:`\int ds / v` by
:func:`scipy.integrate.quad` along that reference cycloid; :math:`dt^\star/dR` against the closed form above.
For comparison, the travel times along the straight line and along the circular arc through :math:`P` that
starts vertically (Galileo's candidate, 1638).

Run ``python examples/brachistochrone.py [--target 2 1] [--steps 200]``; it exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate
import scipy.optimize
from _common import compare, figure_path
from matplotlib.figure import Figure
from tqdm import tqdm

import implax

jax.config.update("jax_enable_x64", True)

MAX_NEWTON_ITERATIONS = 100
MAX_STEP = 0.5


def reach_residual(t, radius, px):
    r""":math:`F(t, R) = R\,(t - \sin t) - P_x`, zero where the cycloid of radius :math:`R` reaches :math:`x = P_x`."""
    return radius * (t - jnp.sin(t)) - px


@implax.custom_root(reach_residual, has_aux=True)
def reach_parameter(init, radius, px):
    r"""The root :math:`t \in (0, 2\pi)` of :math:`F(\cdot, R)`, by Newton's method safeguarded by bisection.

    Requires :math:`0 < P_x < 2\pi R`. Then :math:`g(t) = t - \sin t - P_x / R` increases from :math:`g(0) < 0`
    to :math:`g(2\pi) > 0`; the bracket :math:`[lo, hi] \ni t^\star`, starting at :math:`[0, 2\pi]`, is shrunk
    at every iterate, and a Newton step that leaves it is replaced by its midpoint. The iteration stops when
    :math:`|g(t)|` or the bracket is at rounding level, or after ``MAX_NEWTON_ITERATIONS``. Outside that range
    of :math:`R` there is no root and ``t`` ends at an end of the bracket; :func:`radius_of` keeps :math:`R` in it.

    Args:
      init: starting point in :math:`(0, 2\pi)`; gets no derivative.
      radius: :math:`R`.
      px: :math:`P_x`.

    Returns:
      ``(t, iterations)``; ``t`` is differentiable in ``radius`` and ``px`` through the implicit function theorem.
    """
    reach = px / radius
    t = jnp.asarray(init, dtype=jnp.result_type(reach))
    tol = 4 * jnp.finfo(t.dtype).eps * 2 * jnp.pi

    def g(t):
        return t - jnp.sin(t) - reach

    def cond(state):
        t, lo, hi, k = state
        return (k < MAX_NEWTON_ITERATIONS) & (jnp.abs(g(t)) > tol) & (hi - lo > tol)

    def body(state):
        t, lo, hi, k = state
        value = g(t)
        lo = jnp.where(value < 0, t, lo)
        hi = jnp.where(value < 0, hi, t)
        newton = t - value / (1 - jnp.cos(t))
        t = jnp.where((newton > lo) & (newton < hi), newton, (lo + hi) / 2)
        return t, lo, hi, k + 1

    t, _, _, iterations = jax.lax.while_loop(cond, body, (t, jnp.zeros_like(t), jnp.full_like(t, 2 * jnp.pi), 0))
    return t, iterations


def radius_of(u, px):
    r""":math:`R = P_x (1 + e^u) / 2\pi`, always on the side :math:`P_x < 2\pi R` where the inner root exists."""
    return px * (1 + jnp.exp(u)) / (2 * jnp.pi)


def loss(u, target):
    r""":math:`\big((y_R(t^\star(R)) - P_y) / P_y\big)^2` with :math:`R` = :func:`radius_of` ``(u)``."""
    px, py = target
    radius = radius_of(u, px)
    t, _ = reach_parameter(jnp.pi, radius, px)
    return ((radius * (1 - jnp.cos(t)) - py) / py) ** 2


def fit_radius(target: tuple[float, float], steps: int, learning_rate: float) -> tuple[float, list[float]]:
    r"""Gradient descent on :math:`u`, with steps clipped to :math:`|\Delta u| \le` ``MAX_STEP``.

    Starts from :math:`R_0 = P_x / 2\pi + P_y / 2`: admissible, and of the right scale. Stops after ``steps``
    steps, or earlier once a step no longer changes :math:`u` beyond rounding.

    Returns:
      The fitted :math:`R` and the loss before each step.
    """
    px, py = target
    u = jnp.log(jnp.pi * py / px)
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    point = jnp.asarray(target)
    losses = []
    progress = tqdm(range(steps), desc="gradient descent", unit="step")
    for _ in progress:
        value, grad = value_and_grad(u, point)
        step = jnp.clip(learning_rate * grad, -MAX_STEP, MAX_STEP)
        u = u - step
        losses.append(float(value))
        progress.set_postfix(loss=f"{losses[-1]:.1e}", refresh=False)
        if abs(step) <= jnp.finfo(u.dtype).eps * (1 + abs(u)):
            break
    progress.close()
    return float(radius_of(u, px)), losses


def reference_cycloid(px: float, py: float) -> tuple[float, float]:
    r""":math:`(R, t_P)` by :func:`scipy.optimize.brentq`, independently of JAX.

    :math:`f(t) = P_y (t - \sin t) - P_x (1 - \cos t)` has the sign of :math:`P_y \varphi(t) - P_x` with
    :math:`\varphi(t) = (t - \sin t) / (1 - \cos t)` increasing from 0 to :math:`\infty` on :math:`(0, 2\pi)`,
    so its root there is unique. :math:`f(2\pi) = 2\pi P_y > 0`, and :math:`f < 0` at
    :math:`t = \min(1, P_x / P_y)` (from :math:`t - \sin t \le t^3/6` and :math:`1 - \cos t \ge t^2/2 - t^4/24`),
    which brackets it.
    """

    def f(t):
        return py * (t - np.sin(t)) - px * (1 - np.cos(t))

    t_end = scipy.optimize.brentq(f, min(1.0, px / py), 2 * np.pi, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    return py / (1 - np.cos(t_end)), t_end


Curve = Callable[[float], tuple[float, float, float, float]]


def cycloid(radius: float, t_end: float) -> Curve:
    """The cycloid :math:`t = t_P s`, as ``s ↦ (x, y, dx/ds, dy/ds)`` on :math:`[0, 1]`."""

    def curve(s):
        t = t_end * s
        versine = 2 * np.sin(t / 2) ** 2
        return radius * (t - np.sin(t)), radius * versine, t_end * radius * versine, t_end * radius * np.sin(t)

    return curve


def straight_line(px: float, py: float) -> Curve:
    """The segment from the origin to :math:`P`, parametrised by :math:`s^2` so the integrand stays bounded."""

    def curve(s):
        return px * s**2, py * s**2, 2 * px * s, 2 * py * s

    return curve


def circular_arc(px: float, py: float) -> Curve:
    r"""The arc from the origin to :math:`P` of the circle centred on the :math:`x` axis (so vertical at the start).

    Centre :math:`(c, 0)` with :math:`c = (P_x^2 + P_y^2) / 2P_x`; :math:`x = c\,(1 - \cos\phi)`,
    :math:`y = c \sin\phi`, :math:`\phi = \phi_P s^2`.
    """
    c = (px**2 + py**2) / (2 * px)
    phi_end = np.arctan2(py, c - px)

    def curve(s):
        phi = phi_end * s**2
        dphi = 2 * phi_end * s
        return c * (1 - np.cos(phi)), c * np.sin(phi), c * np.sin(phi) * dphi, c * np.cos(phi) * dphi

    return curve


def travel_time(curve: Curve, gravity: float) -> float:
    r"""Time from rest at :math:`\gamma(0)`, :math:`\int_0^1 |\gamma'(s)| / \sqrt{2 g\, y(s)}\, ds`, by quadrature."""

    def integrand(s):
        _, y, dx, dy = curve(s)
        return np.hypot(dx, dy) / np.sqrt(2 * gravity * y)

    value, _ = scipy.integrate.quad(integrand, 0.0, 1.0, epsabs=0.0, epsrel=1e-12, limit=200)
    return value


def plot(path, target, curves, times, losses) -> None:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    paths, history = fig.subplots(1, 2, width_ratios=(1.6, 1))
    s = np.linspace(0.0, 1.0, 400)
    for (name, curve), style in zip(curves.items(), ("-", "--", ":")):
        x, y, _, _ = curve(s)
        paths.plot(x, y, style, lw=2, label=f"{name}: T = {times[name]:.4f} s")
    paths.plot(0, 0, "ko", ms=5)
    paths.plot(*target, "r*", ms=14, label=f"P = ({target[0]:g}, {target[1]:g}) m")
    paths.invert_yaxis()
    paths.set_aspect("equal")
    paths.set(xlabel="x (m)", ylabel="y, downward (m)", title="Paths from rest at the origin to P")
    paths.grid(alpha=0.3)
    paths.legend(loc="upper right", fontsize=9)
    history.semilogy(np.arange(len(losses)), losses, lw=2)
    history.set(
        xlabel="gradient step",
        ylabel=r"$((y_R(t^\star(R)) - P_y) / P_y)^2$",
        title="Fit of R through the root find",
    )
    history.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", nargs=2, type=float, default=(2.0, 1.0), metavar=("PX", "PY"), help="P in m")
    parser.add_argument("--gravity", type=float, default=9.81, help="g in m/s² (default 9.81)")
    parser.add_argument("--steps", type=int, default=200, help="at most this many gradient steps (default 200)")
    parser.add_argument("--learning-rate", type=float, default=1.0, help="default 1.0")
    parser.add_argument("--rtol", type=float, default=1e-8, help="tolerance of the checks (default 1e-8)")
    parser.add_argument("--figure-dir", default=None, help="where the figure goes (default examples/figures)")
    args = parser.parse_args(argv)
    if not min(args.target) > 0:
        parser.error("the target must lie to the right of and below the start: PX > 0 and PY > 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Fits the cycloid, checks it against SciPy, compares travel times and saves a figure.

    Returns:
      A dictionary of the fitted and reference values, the travel times, the loss history, the figure's path,
      and ``passed``, whether every check is within ``--rtol``.
    """
    args = parse_args(argv)
    px, py = args.target
    g = args.gravity
    print(f"Brachistochrone from the origin to P = ({px:g}, {py:g}) m, g = {g:g} m/s²")

    radius, losses = fit_radius((px, py), args.steps, args.learning_rate)
    root_and_derivative = jax.jit(jax.value_and_grad(reach_parameter, argnums=1, has_aux=True))
    (t_end, iterations), dt_dradius = root_and_derivative(jnp.pi, radius, px)
    t_end, dt_dradius = float(t_end), float(dt_dradius)
    fitted_time = t_end * np.sqrt(radius / g)
    print(
        f"fit: {len(losses)} gradient steps, loss {losses[0]:.1e} → {losses[-1]:.1e}; "
        f"{iterations} Newton iterations in the last root find"
    )

    reference_radius, reference_t_end = reference_cycloid(px, py)
    reference_time = travel_time(cycloid(reference_radius, reference_t_end), g)
    closed_form_dt_dradius = -(t_end - np.sin(t_end)) / (radius * (1 - np.cos(t_end)))
    checks = [
        compare("radius R (m)", radius, reference_radius, args.rtol),
        compare("end parameter t_P", t_end, reference_t_end, args.rtol),
        compare("travel time t_P √(R/g) (s)", fitted_time, reference_time, args.rtol),
        compare("implicit dt*/dR (1/m)", dt_dradius, closed_form_dt_dradius, args.rtol),
    ]

    curves = {
        "cycloid": cycloid(radius, t_end),
        "circular arc": circular_arc(px, py),
        "straight line": straight_line(px, py),
    }
    times = {name: travel_time(curve, g) for name, curve in curves.items()}
    print("travel times:")
    for name, value in times.items():
        slower = f"  {100 * (value / times['cycloid'] - 1):.2f}% slower" if name != "cycloid" else ""
        print(f"  {name:<14} {value:.6f} s{slower}")
    fastest = min(times, key=times.get) == "cycloid"
    if not fastest:
        print("  FAILED: the cycloid is not the fastest path")

    path = figure_path("brachistochrone.png", args.figure_dir)
    plot(path, (px, py), curves, times, losses)
    print(f"figure: {path}")
    return dict(
        target=(px, py),
        radius=radius,
        reference_radius=reference_radius,
        t_end=t_end,
        reference_t_end=reference_t_end,
        travel_time=fitted_time,
        reference_travel_time=reference_time,
        dt_dradius=dt_dradius,
        reference_dt_dradius=closed_form_dt_dradius,
        times=times,
        losses=losses,
        figure=path,
        passed=all(checks) and fastest,
    )


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)

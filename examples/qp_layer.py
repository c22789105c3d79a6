r"""A QP layer learns the constraints it projects onto (OptNet-style), end to end.

The layer maps a point :math:`v \in \mathbb R^2` to its projection onto a polygon,

.. math:: x^\star(v; G, h) = \arg\min_x \tfrac12 \|x - v\|^2 \quad \text{s.t.} \quad G x \le h,

solved by ``implax.qp`` (``Q = I``, ``c = -v``) under ``jax.vmap`` over a batch of points. Data come from an
unknown polygon :math:`\{x : G^\star x \le h^\star\}` (a rotated, shifted pentagon); the layer starts from a
square and learns :math:`(G, h)` by minimising :math:`L(G, h) = \frac1{2B} \sum_b \|x^\star(v_b; G, h) -
y_b\|^2` with Adam, every gradient coming from the implicit function theorem on the KKT conditions.

Checks, against references the layer does not compute: the gradient of :math:`L` at the initial parameters
against central finite differences of :math:`L` (float64), and the trained layer's error on held-out points
against the true projections, which must fall below 1 % of its error before training.

Run ``python examples/qp_layer.py [--quick]``; it prints the losses, saves ``examples/figures/qp_layer.png``
and exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from _common import compare, figure_path, relative_error
from matplotlib.figure import Figure

import implax

jax.config.update("jax_enable_x64", True)

SIDES = 5


def polygon(sides: int, radius: float, angle: float, centre) -> tuple[np.ndarray, np.ndarray]:
    """``(G, h)`` of the regular polygon with ``sides`` sides, inradius ``radius``, rotated and shifted."""
    angles = angle + 2 * np.pi * np.arange(sides) / sides
    normals = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return normals, radius + normals @ np.asarray(centre)


@jax.jit
def project(params, points):
    """The QP layer on a batch: the projection of each point onto ``{x : G x ≤ h}``."""
    G, h = params

    def one(v):
        return implax.qp(jnp.eye(2), -v, G=G, h=h).primal

    return jax.vmap(one)(points)


@jax.jit
def loss(params, points, targets):
    return 0.5 * jnp.mean(jnp.sum((project(params, points) - targets) ** 2, axis=1))


def finite_difference_gradient(params, points, targets, eps=1e-5):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = jax.jit(lambda p: loss(unravel(p), points, targets))
    steps = np.eye(flat.size) * eps
    return np.array([(f(flat + e) - f(flat - e)) / (2 * eps) for e in steps])


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and training steps")
    parser.add_argument("--figure-dir", default=None)
    args = parser.parse_args(argv)
    num_points, num_steps = (32, 100) if args.quick else (256, 600)

    rng = np.random.default_rng(0)
    true_params = polygon(SIDES, 1.0, 0.3, (0.4, -0.2))
    points = jnp.asarray(rng.uniform(-2.5, 2.5, size=(num_points, 2)))
    held_out = jnp.asarray(rng.uniform(-2.5, 2.5, size=(256, 2)))
    targets = project(true_params, points)
    held_out_targets = project(true_params, held_out)

    G0, h0 = polygon(SIDES, 1.5, 0.0, (0.0, 0.0))
    params = (jnp.asarray(G0 + 0.05 * rng.normal(size=G0.shape)), jnp.asarray(h0))

    print("gradient of the loss at the initial parameters, implicit against central finite differences:")
    gradient = jax.flatten_util.ravel_pytree(jax.jit(jax.grad(loss))(params, points, targets))[0]
    reference = finite_difference_gradient(params, points, targets)
    passed = compare("dL/d(G, h)", gradient, reference, 1e-6)
    gradient_error = relative_error(gradient, reference)

    optimizer = optax.adam(2e-2)
    state = optimizer.init(params)

    @jax.jit
    def train_step(params, state):
        value, grads = jax.value_and_grad(loss)(params, points, targets)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    initial_params = params
    losses = []
    for _ in range(num_steps):
        params, state, value = train_step(params, state)
        losses.append(float(value))
    held_out_error = float(loss(params, held_out, held_out_targets))
    initial_error = float(loss(initial_params, held_out, held_out_targets))
    print(f"training loss {losses[0]:.3e} -> {losses[-1]:.3e} in {num_steps} Adam steps")
    print(f"held-out loss {initial_error:.3e} -> {held_out_error:.3e}")
    ratio_ok = held_out_error <= 0.01 * initial_error
    print(f"  held-out loss below 1 % of its initial value: {'ok' if ratio_ok else 'FAILED'}")
    passed = passed and ratio_ok

    path = figure_path("qp_layer.png", args.figure_dir)
    _plot(path, true_params, initial_params, params, points, losses)
    summary = (
        f"held-out loss {initial_error:.2e} → {held_out_error:.2e} in {num_steps} Adam steps; "
        f"dL/d(G, h) vs finite differences {gradient_error:.0e}"
    )
    return dict(
        passed=passed,
        losses=losses,
        held_out_error=held_out_error,
        initial_held_out_error=initial_error,
        gradient=np.asarray(gradient),
        gradient_error=gradient_error,
        figure=path,
        summary=summary,
    )


def _polygon_outline(G, h):
    """Vertices of ``{x : G x ≤ h}`` in order, from the pairwise intersections of its edges."""
    G, h = np.asarray(G), np.asarray(h)
    vertices = []
    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            M = G[[i, j]]
            if abs(np.linalg.det(M)) < 1e-9:
                continue
            x = np.linalg.solve(M, h[[i, j]])
            if np.all(G @ x <= h + 1e-9):
                vertices.append(x)
    vertices = np.array(vertices)
    centre = vertices.mean(axis=0)
    order = np.argsort(np.arctan2(*(vertices - centre).T[::-1]))
    vertices = vertices[order]
    return np.vstack([vertices, vertices[:1]])


def _plot(path, true_params, initial_params, params, points, losses):
    figure = Figure(figsize=(10, 4.5))
    left, right = figure.subplots(1, 2)
    for (G, h), label, style in [
        (true_params, "true polygon", dict(color="0.3", linewidth=5, alpha=0.4)),
        (initial_params, "initial layer", dict(color="C1", linestyle="--")),
        (params, "learned layer", dict(color="C0")),
    ]:
        outline = _polygon_outline(G, h)
        left.plot(outline[:, 0], outline[:, 1], label=label, **style)
    left.scatter(*np.asarray(points).T, s=4, c="0.6", label="training inputs")
    left.set_aspect("equal")
    left.legend(loc="upper right", fontsize=8)
    left.set_title("projection layer: constraints learned from data")
    right.semilogy(losses)
    right.set_xlabel("Adam step")
    right.set_ylabel("training loss")
    right.set_title("loss (gradients by implicit differentiation)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)

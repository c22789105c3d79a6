"""What the examples share: where figures go, how a result is checked against its independent reference, and
hypergradient descent on a log-scale hyperparameter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

FIGURE_DIR = Path(__file__).resolve().parent / "figures"


def figure_path(name: str, directory: str | Path | None = None) -> Path:
    """``directory / name`` (by default ``examples/figures/name``), creating the directory if needed."""
    directory = FIGURE_DIR if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def relative_error(value, reference) -> float:
    r""":math:`\max_i |v_i - r_i| / \max_i |r_i|`, the relative error of a scalar or of an array as a whole."""
    value, reference = np.asarray(value, dtype=float), np.asarray(reference, dtype=float)
    return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


def compare(label: str, value, reference, rtol: float) -> bool:
    """Prints ``value`` (if a scalar), its reference and their relative error; returns whether it is ``≤ rtol``.

    A NaN error counts as a failure.
    """
    error = relative_error(value, reference)
    ok = bool(error <= rtol)
    shown = f"{float(value):<19.12g} reference {float(reference):<19.12g}" if np.ndim(value) == 0 else ""
    print(f"  {label:<34} {shown}relative error {error:.1e} (tolerance {rtol:.0e}) {'ok' if ok else 'FAILED'}")
    return ok


def hypergradient_descent(
    value_and_grad: Callable, u0: float, steps: int, learning_rate: float, name: str
) -> tuple[float, list[float], list[float]]:
    r"""Adam on :math:`u = \log(\text{hyperparameter})` with a cosine-decayed learning rate.

    Args:
      value_and_grad: ``u ↦ ((L(u), aux), dL/du)``, the validation loss and its hypergradient.
      u0: the starting :math:`u`.
      steps: Adam steps.
      learning_rate: the initial learning rate.
      name: the hyperparameter's name, for the progress bar.

    Returns:
      The last :math:`u`, and the path of :math:`u` and of :math:`L(u)` (one entry per evaluation).
    """
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3))

    @jax.jit
    def update(grad, state, u):
        updates, state = optimizer.update(grad, state)
        return optax.apply_updates(u, updates), state

    u = jnp.asarray(u0)
    state = optimizer.init(u)
    path, losses = [], []
    progress = tqdm(range(steps), desc="hypergradient descent", unit="step")
    for _ in progress:
        (value, _), grad = value_and_grad(u)
        path.append(float(u))
        losses.append(float(value))
        progress.set_postfix({name: f"{float(jnp.exp(u)):.4g}", "loss": f"{losses[-1]:.6f}"}, refresh=False)
        u, state = update(grad, state, u)
    progress.close()
    (value, _), _ = value_and_grad(u)
    path.append(float(u))
    losses.append(float(value))
    return float(u), path, losses

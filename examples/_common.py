"""What the examples share: where figures go, and how a result is checked against its independent reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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

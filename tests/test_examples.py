"""The examples, run with small settings, against references they do not compute themselves."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import brachistochrone  # noqa: E402
import run_all  # noqa: E402
import scipy_root  # noqa: E402

GRAVITY = 9.81


def test_brachistochrone_through_the_bottom_of_the_unit_cycloid(tmp_path):
    # P = (π, 2) is the lowest point of the cycloid of radius 1, reached at t = π.
    results = brachistochrone.main(["--target", repr(np.pi), "2", "--steps", "80", "--figure-dir", str(tmp_path)])
    assert results["passed"]
    assert_allclose(results["radius"], 1.0, rtol=1e-9)
    assert_allclose(results["t_end"], np.pi, rtol=1e-9)
    assert_allclose(results["travel_time"], np.pi / np.sqrt(GRAVITY), rtol=1e-9)
    assert_allclose(results["dt_dradius"], -np.pi / 2, rtol=1e-9)
    line = np.sqrt(2 * (np.pi**2 + 4) / (GRAVITY * 2))
    assert_allclose(results["times"]["straight line"], line, rtol=1e-10)
    assert results["losses"][-1] < 1e-20
    assert (tmp_path / "brachistochrone.png").stat().st_size > 0


def test_brachistochrone_rejects_a_target_above_the_start():
    with pytest.raises(SystemExit):
        brachistochrone.main(["--target", "1", "-1"])


def test_brachistochrone_fit_matches_scipy_for_a_target_past_the_bottom(tmp_path):
    results = brachistochrone.main(["--target", "5", "1", "--steps", "120", "--figure-dir", str(tmp_path)])
    assert results["passed"]
    assert results["t_end"] > np.pi
    assert_allclose(results["radius"], results["reference_radius"], rtol=1e-9)
    assert_allclose(results["travel_time"], results["reference_travel_time"], rtol=1e-9)


def test_scipy_root_derivatives_match_finite_differences(tmp_path):
    results = scipy_root.main(["--n", "16", "--grid", "6", "--figure-dir", str(tmp_path)])
    assert results["passed"]
    assert_allclose(results["jacobian_reverse"], results["jacobian_forward"], rtol=1e-10, atol=1e-12)
    scale = np.abs(results["reference_jacobian"]).max()
    assert_allclose(results["jacobian_reverse"], results["reference_jacobian"], rtol=0, atol=1e-6 * scale)
    assert_allclose(results["gradient"], results["reference_gradient"], rtol=1e-6)
    assert_allclose(results["sweep_dmean"], results["reference_sweep_dmean"], rtol=1e-6)
    assert (tmp_path / "scipy_root.png").stat().st_size > 0


def test_scipy_root_sensitivity_at_zero_reaction_is_a_linear_solve():
    # At λ = 0 the steady state is u* = 0, so ∂u*/∂λ = −(D₂ − c D₁)⁻¹ 1 and ∂u*/∂c = 0.
    n, c = 12, 1.5
    _, d2, d1 = scipy_root.discretization(n)
    solve = scipy_root.differentiable_solver(d2, d1)
    jacobian = jax.jit(jax.jacobian(solve, argnums=1))(np.zeros(n), np.array([0.0, c]))
    assert_allclose(jacobian[:, 0], np.linalg.solve(d2 - c * d1, -np.ones(n)), rtol=1e-10)
    assert_allclose(jacobian[:, 1], 0.0, atol=1e-12)


def test_run_all_reports_every_example_and_fails_on_a_failure(tmp_path, monkeypatch, capsys):
    def summarize(results):
        return "numbers"

    failing = run_all.Example("failing_example", (), summarize)
    module = type(sys)("failing_example")
    module.__doc__ = "An example whose check fails."
    module.main = lambda argv: {"passed": False}
    monkeypatch.setitem(sys.modules, "failing_example", module)
    monkeypatch.setattr(run_all, "EXAMPLES", (failing,))
    assert run_all.main(["--figure-dir", str(tmp_path)]) == 1
    assert "failing_example  FAILED" in capsys.readouterr().out


def test_run_all_quick(tmp_path, monkeypatch):
    # The bilevel examples run in tests/test_bilevel_examples.py; here the runner runs the first three.
    monkeypatch.setattr(run_all, "EXAMPLES", run_all.EXAMPLES[:3])
    assert run_all.main(["--quick", "--figure-dir", str(tmp_path)]) == 0
    figures = ["brachistochrone.png", "fixed_point_layer.png", "scipy_root.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == figures

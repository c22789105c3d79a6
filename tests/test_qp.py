"""implax.qp against CVXPY, finite differences and closed forms; statuses of infeasible and unbounded problems."""

import functools
import importlib

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import implax
from implax.qp import QPStatus

NAMES = ("Q", "c", "A", "b", "G", "h")


def random_qp(rng, n, p, m, lp=False):
    """A feasible, bounded problem: strictly convex, or a linear program inside a box."""
    M = rng.normal(size=(n, n))
    Q = np.zeros((n, n)) if lp else M @ M.T / n + 0.1 * np.eye(n)
    c = rng.normal(size=n)
    x0 = rng.normal(size=n)
    A = rng.normal(size=(p, n))
    G = rng.normal(size=(m, n))
    h = G @ x0 + rng.uniform(0.1, 1.0, size=m)
    if lp:
        G = np.vstack([G, np.eye(n), -np.eye(n)])
        h = np.concatenate([h, np.abs(x0) + 1, np.abs(x0) + 1])
    problem = dict(Q=Q, c=c, A=A, b=A @ x0, G=G, h=h)
    return {k: v for k, v in problem.items() if v.shape[0] > 0 or k in ("Q", "c")}


def cvxpy_solution(Q, c, A=None, b=None, G=None, h=None, upper=None, lower=None):
    """Primal and duals (equalities, rows of G, upper bounds, lower bounds) by Clarabel at tolerance 1e-12."""
    x = cp.Variable(c.shape[0])
    constraints = {
        "y": A @ x == b if A is not None else None,
        "z": G @ x <= h if G is not None else None,
        "upper": x <= upper if upper is not None else None,
        "lower": lower <= x if lower is not None else None,
    }
    objective = cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + c @ x)
    cp.Problem(objective, [v for v in constraints.values() if v is not None]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    duals = [np.zeros(0) if v is None else v.dual_value for v in constraints.values()]
    return (x.value, *duals) if upper is not None or lower is not None else (x.value, *duals[:2])


CASES = {
    "inequalities": (6, 0, 10, False),
    "equalities and inequalities": (8, 3, 12, False),
    "equalities only": (7, 3, 0, False),
    "unconstrained": (5, 0, 0, False),
    "linear program": (6, 2, 4, True),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_solution_and_duals_match_cvxpy(case, rng):
    problem = random_qp(rng, *CASES[case])
    sol = jax.jit(implax.qp)(**problem)
    x, y, z = cvxpy_solution(**problem)
    assert int(sol.stats.status) == QPStatus.SOLVED
    assert bool(sol.stats.converged)
    np.testing.assert_allclose(sol.primal, x, atol=1e-5)
    np.testing.assert_allclose(sol.equality_dual, y, atol=1e-5)
    np.testing.assert_allclose(sol.inequality_dual, z, atol=1e-5)


def test_float32_matches_cvxpy(rng):
    problem = random_qp(rng, 8, 2, 12)
    sol = implax.qp(**{k: v.astype(np.float32) for k, v in problem.items()})
    x, _, z = cvxpy_solution(**problem)
    assert sol.primal.dtype == jnp.float32
    assert int(sol.stats.status) == QPStatus.SOLVED
    np.testing.assert_allclose(sol.primal, x, atol=2e-3)
    np.testing.assert_allclose(sol.inequality_dual, z, atol=2e-3)


def directional_difference(fn, problem, name, direction, eps=1e-4):
    def at(t):
        return np.asarray(fn(**{**problem, name: problem[name] + t * direction}))

    return (at(eps) - at(-eps)) / (2 * eps)


@pytest.mark.parametrize("case", ["equalities and inequalities", "equalities only"])
def test_gradients_match_finite_differences(case, rng):
    problem = random_qp(rng, *CASES[case])
    weights = rng.normal(size=problem["c"].shape)

    def loss_of(data, tol=None):
        sol = implax.qp(**data, tol=tol, on_failure="ignore")
        return jnp.vdot(weights, sol.primal) + jnp.sum(sol.equality_dual**2) + jnp.sum(sol.inequality_dual**2)

    # The differences divide the solutions' errors by 2·eps: they are taken of solutions to a tighter tolerance.
    tight_loss = jax.jit(functools.partial(loss_of, tol=1e-12))

    def loss(**data):
        return tight_loss(data)

    grads = jax.jit(jax.grad(loss_of))(problem)
    for name, value in problem.items():
        direction = rng.normal(size=value.shape)
        if name == "Q":
            direction = direction + direction.T
        expected = directional_difference(loss, problem, name, direction)
        np.testing.assert_allclose(np.vdot(grads[name], direction), expected, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(grads["Q"], grads["Q"].T, atol=1e-12)


def test_jacfwd_matches_jacrev(rng):
    problem = random_qp(rng, 5, 1, 3)

    def primal(data):
        return implax.qp(**data).primal

    forward = jax.jit(jax.jacfwd(primal))(problem)
    reverse = jax.jit(jax.jacrev(primal))(problem)
    for name in problem:
        assert np.abs(forward[name]).max() > 1e-2, name
        np.testing.assert_allclose(forward[name], reverse[name], atol=1e-10, err_msg=name)


def test_gradients_at_weakly_active_constraints_are_the_active_set_derivative():
    # Problems with active constraints whose duals are ~1e-5 (slack/dual ratios of the interior point ~1e-2 at
    # complementarity 1e-12): the derivative of the optimum, not of the interior point, is the reference.
    rng = np.random.default_rng(0)
    n, m, batch = 50, 100, 12
    M = rng.normal(size=(batch, n, n))
    Q = M @ M.transpose(0, 2, 1) / n + 0.5 * np.eye(n)
    c, G, h = rng.normal(size=(batch, n)), rng.normal(size=(batch, m, n)), rng.uniform(0.1, 1.0, size=(batch, m))
    w = rng.normal(size=(batch, n))

    def loss(c, h):
        sols = jax.vmap(lambda Q, c, G, h: implax.qp(Q, c, G=G, h=h))(Q, c, G, h)
        return jnp.sum(w * sols.primal), sols

    # The solutions come out of the same compiled gradient, as its auxiliary output.
    (grad_c, grad_h), sols = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(c, h)
    np.testing.assert_array_equal(sols.stats.status, QPStatus.SOLVED)
    for i in range(batch):
        x, _, z = cvxpy_solution(Q[i], c[i], G=G[i], h=h[i])
        active = z > h[i] - G[i] @ x
        Ga = G[i][active]
        K = np.block([[Q[i], Ga.T], [Ga, np.zeros((len(Ga), len(Ga)))]])
        u = np.linalg.solve(K, np.concatenate([w[i], np.zeros(len(Ga))]))
        np.testing.assert_allclose(sols.primal[i], x, atol=1e-8)
        np.testing.assert_allclose(grad_c[i], -u[:n], atol=1e-8)
        np.testing.assert_allclose(grad_h[i][active], u[n:], atol=1e-8)
        np.testing.assert_allclose(grad_h[i][~active], 0.0, atol=1e-8)


def test_polished_solution_is_exact_at_weakly_active_constraints():
    # min ½‖x − a‖² s.t. x ≤ 0: x* = min(a, 0), z* = max(a, 0); duals of 1e-6 leave the interior point's
    # active slacks near 1e-8, the polishing step on the active set removes them.
    a = np.array([1e-6, -1.0, 2.0, 3e-6, 0.5])
    sol = jax.jit(implax.qp)(np.eye(5), -a, G=np.eye(5), h=np.zeros(5))
    assert int(sol.stats.status) == QPStatus.SOLVED
    np.testing.assert_allclose(sol.primal, np.minimum(a, 0), atol=1e-14)
    np.testing.assert_allclose(sol.inequality_dual, np.maximum(a, 0), atol=1e-14)
    assert float(sol.stats.residual) <= 1e-14


def test_nan_data_is_flagged_and_leaves_the_batch_alone():
    G = jnp.vstack([jnp.eye(2), -jnp.eye(2)])
    cs = jnp.array([[0.5, -0.25], [jnp.nan, 0.0]])
    sols = jax.jit(jax.vmap(lambda c: implax.qp(jnp.eye(2), c, G=G, h=jnp.ones(4), on_failure="ignore")))(cs)
    np.testing.assert_array_equal(sols.stats.converged, [True, False])
    np.testing.assert_array_equal(sols.stats.nonfinite, [False, True])
    assert int(sols.stats.status[1]) != QPStatus.SOLVED
    np.testing.assert_allclose(sols.primal[0], [-0.5, 0.25], atol=1e-7)


BOX_CASES = {
    "box": dict(upper=True, lower=True),
    "nonnegativity": dict(lower=True),
    "box, equalities and inequalities": dict(upper=True, lower=True, p=2, m=4),
    "box linear program": dict(upper=True, lower=True, lp=True),
}


def random_box_qp(rng, n=8, p=0, m=0, upper=False, lower=False, lp=False):
    """A problem whose bounds cut off its unconstrained minimizer (several bounds active)."""
    problem = random_qp(rng, n, p, m)
    if lp:
        problem["Q"] = np.zeros((n, n))
    problem["c"] = 3 * problem["c"]
    x0 = np.linalg.lstsq(problem["A"], problem["b"])[0] if p else np.zeros(n)
    if upper:
        problem["upper"] = x0 + rng.uniform(0.1, 1.0, n)
    if lower:
        problem["lower"] = x0 - rng.uniform(0.1, 1.0, n)
    return problem


@pytest.mark.parametrize("case", BOX_CASES, ids=list(BOX_CASES))
def test_box_constraints_match_cvxpy(case, rng):
    problem = random_box_qp(rng, **BOX_CASES[case])
    sol = jax.jit(implax.qp)(**problem)
    x, y, z, upper_dual, lower_dual = cvxpy_solution(**problem)
    assert int(sol.stats.status) == QPStatus.SOLVED
    assert np.sum(np.concatenate([upper_dual, lower_dual]) > 1e-6) >= 2, "the test needs active bounds"
    for name, expected in dict(primal=x, equality_dual=y, inequality_dual=z).items():
        np.testing.assert_allclose(getattr(sol, name), expected, atol=1e-7, err_msg=name)
    for name, expected in dict(upper_dual=upper_dual, lower_dual=lower_dual).items():
        assert getattr(sol, name).shape == expected.shape, name
        np.testing.assert_allclose(getattr(sol, name), expected, atol=1e-7, err_msg=name)


def test_box_gradients_match_finite_differences(rng):
    problem = random_box_qp(rng, n=6, m=3, upper=True, lower=True)
    weights = rng.normal(size=6)

    def loss_of(data, tol=None):
        sol = implax.qp(**data, tol=tol)
        return jnp.vdot(weights, sol.primal) + jnp.sum(sol.upper_dual**2) + jnp.sum(sol.lower_dual**2)

    tight_loss = jax.jit(functools.partial(loss_of, tol=1e-12))
    grads = jax.jit(jax.grad(loss_of))(problem)
    for name in ("Q", "c", "h", "upper", "lower"):
        direction = rng.normal(size=problem[name].shape)
        direction = direction + direction.T if name == "Q" else direction
        expected = directional_difference(lambda **data: tight_loss(data), problem, name, direction)
        np.testing.assert_allclose(np.vdot(grads[name], direction), expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_box_float32_under_vmap_matches_cvxpy(rng):
    problems = [random_box_qp(rng, upper=True, lower=True) for _ in range(3)]
    batch = {k: np.stack([p[k] for p in problems]).astype(np.float32) for k in problems[0]}
    sols = jax.jit(jax.vmap(implax.qp))(**batch)
    assert sols.primal.dtype == jnp.float32
    np.testing.assert_array_equal(sols.stats.status, QPStatus.SOLVED)
    for sol_x, problem in zip(sols.primal, problems):
        np.testing.assert_allclose(sol_x, cvxpy_solution(**problem)[0], atol=2e-3)


def test_box_first_order_path_matches_cvxpy_under_vmap(rng):
    """Box-only problems are solved by projected gradient and one polishing step, well within its step budget."""
    problems = [random_box_qp(rng, upper=True, lower=True) for _ in range(3)]
    batch = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
    sols = jax.jit(jax.vmap(implax.qp))(**batch)
    np.testing.assert_array_equal(sols.stats.status, QPStatus.SOLVED)
    assert np.all(np.asarray(sols.stats.num_steps) < importlib.import_module("implax.qp").FIRST_ORDER_STEPS)
    for i, problem in enumerate(problems):
        x, _, _, upper_dual, lower_dual = cvxpy_solution(**problem)
        np.testing.assert_allclose(sols.primal[i], x, atol=1e-7)
        np.testing.assert_allclose(sols.upper_dual[i], upper_dual, atol=1e-7)
        np.testing.assert_allclose(sols.lower_dual[i], lower_dual, atol=1e-7)


def test_box_falls_back_to_the_interior_point(rng, monkeypatch):
    """With too small a step budget projected gradient fails, and the interior point solves the problem; an empty
    box in the same batch is reported infeasible."""
    monkeypatch.setattr(importlib.import_module("implax.qp"), "FIRST_ORDER_STEPS", 2)
    problems = [random_box_qp(rng, upper=True, lower=True) for _ in range(2)]
    problems[1]["lower"] = problems[1]["upper"] + 1.0
    batch = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
    sols = jax.jit(jax.vmap(implax.qp))(**batch)
    np.testing.assert_array_equal(sols.stats.status, [QPStatus.SOLVED, QPStatus.PRIMAL_INFEASIBLE])
    assert int(sols.stats.num_steps[0]) > 2
    x, _, _, upper_dual, lower_dual = cvxpy_solution(**problems[0])
    np.testing.assert_allclose(sols.primal[0], x, atol=1e-7)
    np.testing.assert_allclose(sols.upper_dual[0], upper_dual, atol=1e-7)
    np.testing.assert_allclose(sols.lower_dual[0], lower_dual, atol=1e-7)


def test_box_nan_is_flagged_without_breaking_the_batch(rng):
    problem = random_box_qp(rng, upper=True, lower=True)
    cs = np.stack([problem["c"], np.full_like(problem["c"], np.nan)])
    sols = jax.jit(jax.vmap(lambda c: implax.qp(problem["Q"], c, upper=problem["upper"], lower=problem["lower"])))(cs)
    np.testing.assert_array_equal(sols.stats.converged, [True, False])
    assert bool(sols.stats.nonfinite[1]) and int(sols.stats.status[1]) != QPStatus.SOLVED
    np.testing.assert_allclose(sols.primal[0], cvxpy_solution(**problem)[0], atol=1e-7)


def test_empty_box_is_an_error_or_primal_infeasible():
    with pytest.raises(ValueError, match="lower > upper at indices \\[1\\]"):
        implax.qp(np.eye(2), np.ones(2), upper=np.array([1.0, 0.0]), lower=np.array([0.0, 1.0]))
    status = jax.jit(lambda upper, lower: implax.qp(np.eye(2), np.ones(2), upper=upper, lower=lower).stats.status)
    assert int(status(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))) == QPStatus.PRIMAL_INFEASIBLE


def test_primal_infeasible_status():
    G = np.vstack([np.eye(3), -np.eye(3)])
    h = np.array([1.0, 1.0, 1.0, -2.0, 0.0, 0.0])
    sol = implax.qp(np.eye(3), np.ones(3), G=G, h=h)
    assert int(sol.stats.status) == QPStatus.PRIMAL_INFEASIBLE
    assert not bool(sol.stats.converged)


def test_inconsistent_equalities_are_primal_infeasible():
    A = np.array([[1.0, 1.0], [1.0, 1.0]])
    sol = implax.qp(np.eye(2), np.zeros(2), A=A, b=np.array([0.0, 1.0]))
    assert int(sol.stats.status) == QPStatus.PRIMAL_INFEASIBLE


def test_unbounded_linear_program_status():
    sol = implax.qp(np.zeros((3, 3)), np.array([-1.0, 0.5, 0.0]), G=-np.eye(3), h=np.zeros(3))
    assert int(sol.stats.status) == QPStatus.DUAL_INFEASIBLE


def test_unbounded_equality_constrained_status():
    sol = implax.qp(np.zeros((3, 3)), np.array([-1.0, 0.0, 0.0]), A=np.ones((1, 3)), b=np.ones(1))
    assert int(sol.stats.status) == QPStatus.DUAL_INFEASIBLE


def test_relaxed_linear_program_has_smooth_finite_gradients(rng):
    """Degenerate LP: two optimal vertices tie. The relaxed point is within m·τ of the optimum and smooth."""
    c = np.array([1.0, 1.0])
    G = np.vstack([-np.eye(2), -np.ones((1, 2))])
    h = np.array([0.0, 0.0, -1.0])
    tau = 1e-3

    @jax.jit
    def primal(c):
        return implax.qp(jnp.zeros((2, 2)), c, G=G, h=h, relaxation=tau).primal

    sol = implax.qp(np.zeros((2, 2)), c, G=G, h=h, relaxation=tau)
    assert int(sol.stats.status) == QPStatus.SOLVED
    np.testing.assert_allclose(sol.inequality_dual * (h - G @ sol.primal), tau, rtol=1e-6)
    assert 1.0 <= c @ sol.primal <= 1.0 + 3 * tau
    jacobian = jax.jit(jax.jacrev(primal))(c)
    assert np.all(np.isfinite(jacobian)) and np.abs(jacobian).max() > 1.0
    direction = rng.normal(size=2)
    expected = directional_difference(lambda c: primal(c), dict(c=c), "c", direction, eps=1e-7)
    np.testing.assert_allclose(jacobian @ direction, expected, rtol=1e-5)


def test_vmap_sums_gradients_of_shared_parameters(rng):
    batch, n, m = 4, 5, 8
    problems = [random_qp(rng, n, 0, m) for _ in range(batch)]
    Qs = jnp.asarray(np.stack([p["Q"] for p in problems]))
    cs = jnp.asarray(np.stack([p["c"] for p in problems]))
    G = jnp.asarray(rng.normal(size=(m, n)))
    h = jnp.asarray(rng.uniform(0.5, 1.0, size=m))

    def batched(G):
        x = jax.vmap(lambda Q, c: implax.qp(Q, c, G=G, h=h).primal)(Qs, cs)
        return jnp.sum(x**2)

    @jax.jit
    @jax.grad
    def one(G, Q, c):
        return jnp.sum(implax.qp(Q, c, G=G, h=h).primal ** 2)

    # The sum of the gradients of the problems solved one at a time, by one compiled gradient.
    looped = sum(one(G, Qs[i], cs[i]) for i in range(batch))
    np.testing.assert_allclose(jax.jit(jax.grad(batched))(G), looped, rtol=1e-7, atol=1e-10)


def test_one_infeasible_problem_does_not_break_the_batch(rng):
    n = 3
    G = jnp.asarray(np.vstack([np.eye(n), -np.eye(n)]))
    h = np.tile(np.ones(2 * n), (4, 1))
    h[2, n] = -2.0
    cs = jnp.asarray(rng.normal(size=(4, n)))

    def solve(c, h):
        return implax.qp(jnp.eye(n), c, G=G, h=h, on_failure="ignore")

    sols = jax.jit(jax.vmap(solve))(cs, jnp.asarray(h))
    np.testing.assert_array_equal(
        sols.stats.status, [QPStatus.SOLVED, QPStatus.SOLVED, QPStatus.PRIMAL_INFEASIBLE, QPStatus.SOLVED]
    )
    for i in (0, 1, 3):
        np.testing.assert_allclose(sols.primal[i], np.clip(-np.asarray(cs[i]), -1, 1), atol=1e-7)
    grads = jax.jit(jax.grad(lambda cs: jnp.sum(jax.vmap(solve)(cs, jnp.asarray(h)).primal[jnp.array([0, 1, 3])])))(cs)
    inside = np.abs(np.asarray(cs)) < 1
    np.testing.assert_allclose(np.asarray(grads)[[0, 1, 3]], -inside[[0, 1, 3]].astype(float), atol=1e-6)


BAD_INPUTS = {
    "non-square Q": (dict(Q=np.ones((2, 3)), c=np.ones(2)), "square"),
    "non-symmetric Q": (dict(Q=np.array([[1.0, 1.0], [0.0, 1.0]]), c=np.ones(2)), "symmetric"),
    "c of wrong length": (dict(Q=np.eye(2), c=np.ones(3)), "c must have shape"),
    "A of wrong width": (dict(Q=np.eye(2), c=np.ones(2), A=np.ones((1, 3)), b=np.ones(1)), "A must have shape"),
    "b of wrong length": (dict(Q=np.eye(2), c=np.ones(2), A=np.ones((1, 2)), b=np.ones(2)), "b must have shape"),
    "G without h": (dict(Q=np.eye(2), c=np.ones(2), G=np.ones((1, 2))), "given together"),
    "h of wrong length": (dict(Q=np.eye(2), c=np.ones(2), G=np.ones((3, 2)), h=np.ones(2)), "h must have shape"),
    "upper of wrong length": (dict(Q=np.eye(2), c=np.ones(2), upper=np.ones(3)), "upper must be a scalar or have"),
    "infinite lower bound": (dict(Q=np.eye(2), c=np.ones(2), lower=np.array([0.0, -np.inf])), "lower must be finite"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(case):
    data, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        implax.qp(**data)


def test_negative_relaxation_raises():
    with pytest.raises(ValueError, match="relaxation"):
        implax.qp(np.eye(2), np.ones(2), relaxation=-1.0)


def sparsemax(v):
    r"""Closed form of :math:`\arg\min_{p \in \Delta} \|p - v\|^2` (Martins & Astudillo, 2016)."""
    u = np.sort(v)[::-1]
    k = np.arange(1, v.size + 1)
    support = 1 + k * u > np.cumsum(u)
    tau = (np.cumsum(u)[support][-1] - 1) / k[support][-1]
    return np.maximum(v - tau, 0.0)


def test_sparsemax_as_a_qp_matches_its_closed_form(rng):
    n = 8
    v = rng.normal(size=n) * 2

    def qp_sparsemax(v):
        ones = jnp.ones((1, n))
        return implax.qp(jnp.eye(n), -v, A=ones, b=jnp.ones(1), G=-jnp.eye(n), h=jnp.zeros(n)).primal

    p = sparsemax(v)
    assert 1 < np.count_nonzero(p) < n
    np.testing.assert_allclose(jax.jit(qp_sparsemax)(v), p, atol=1e-8)
    support = (p > 0).astype(float)
    jacobian = np.diag(support) - np.outer(support, support) / support.sum()
    np.testing.assert_allclose(jax.jit(jax.jacrev(qp_sparsemax))(v), jacobian, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(qp_sparsemax))(v), jacobian, atol=1e-7)


def test_projection_onto_a_polyhedron_matches_cvxpy_and_its_jacobian(rng):
    n, m = 4, 6
    G = rng.normal(size=(m, n))
    h = rng.uniform(0.1, 0.5, size=m)
    y = 3 * rng.normal(size=n)

    def project(y):
        return implax.qp(jnp.eye(n), -y, G=G, h=h).primal

    x, _, z = cvxpy_solution(np.eye(n), -y, G=G, h=h)
    np.testing.assert_allclose(project(y), x, atol=1e-6)
    active = G[z > 1e-6]
    assert active.shape[0] >= 1
    nullspace_projector = np.eye(n) - active.T @ np.linalg.solve(active @ active.T, active)
    np.testing.assert_allclose(jax.jit(jax.jacrev(project))(y), nullspace_projector, atol=1e-7)

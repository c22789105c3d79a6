"""implax.prox and implax.projections against CVXPY, their optimality conditions and finite differences; checks."""

import functools

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOLERANCES
from numpy.testing import assert_allclose

from implax import projections, prox

SEEDS = range(3)
N = 6
RADIUS = 1.3
SCALE = 2.5
A = np.random.default_rng(0).normal(size=N)
B = 0.7
LOWER = -np.random.default_rng(1).uniform(0.2, 1.0, N)
UPPER = np.random.default_rng(2).uniform(0.2, 1.0, N)
STRENGTH = np.random.default_rng(3).uniform(0.2, 1.0, N)
GROUP_STRENGTH = np.array([0.8, 1.0, 0.5, 1.2])


def cvxpy_argmin(shape, objective, constraints=()):
    """Solution of ``min ½‖u − v‖² + …`` by CVXPY's Clarabel at tight tolerances."""
    u = cp.Variable(shape)
    cp.Problem(cp.Minimize(objective(u)), list(constraints(u)) if constraints else []).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10
    )
    return u.value


def random_groups(rng):
    """Four rows of three: a zero group, one shrunk to zero and two shrunk toward zero by GROUP_STRENGTH."""
    v = rng.normal(size=(4, 3))
    norms = np.array([0.0, 0.4, 1.7, 2.5])
    return v / np.linalg.norm(v, axis=1, keepdims=True) * norms[:, None]


# --- Proximal operators ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_l1_matches_cvxpy_and_its_optimality_condition(seed):
    v = 1.5 * np.random.default_rng(seed).normal(size=N)
    u = np.asarray(prox.l1(v, STRENGTH))
    reference = cvxpy_argmin(N, lambda u: 0.5 * cp.sum_squares(u - v) + STRENGTH @ cp.abs(u))
    assert_allclose(u, reference, atol=1e-6)
    # v − u ∈ λ ⊙ ∂‖u‖₁: λ sign(u) on the support, |v| ≤ λ off it.
    support = u != 0
    assert_allclose((v - u)[support], (STRENGTH * np.sign(u))[support], atol=1e-12)
    assert np.all(np.abs(v[~support]) <= STRENGTH[~support])
    assert support.any() and (~support).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_elastic_net_matches_cvxpy_and_its_optimality_condition(seed):
    v = 1.5 * np.random.default_rng(seed).normal(size=N)
    alpha, beta = 0.4, 0.7
    u = np.asarray(prox.elastic_net(v, alpha, beta))
    reference = cvxpy_argmin(
        N, lambda u: 0.5 * cp.sum_squares(u - v) + alpha * cp.norm1(u) + beta / 2 * cp.sum_squares(u)
    )
    assert_allclose(u, reference, atol=1e-6)
    support = u != 0
    assert_allclose((v - u - beta * u)[support], alpha * np.sign(u[support]), atol=1e-12)
    assert np.all(np.abs(v[~support]) <= alpha)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_lasso_matches_cvxpy_and_its_optimality_condition(seed):
    v = random_groups(np.random.default_rng(seed))
    u = np.asarray(prox.group_lasso(v, GROUP_STRENGTH[:, None]))
    reference = cvxpy_argmin(
        v.shape,
        lambda u: 0.5 * cp.sum_squares(u - v) + GROUP_STRENGTH @ cp.norm(u, 2, axis=1),
    )
    assert_allclose(u, reference, atol=1e-6)
    for v_g, u_g, strength in zip(v, u, GROUP_STRENGTH):
        norm = np.linalg.norm(u_g)
        if norm > 0:
            assert_allclose(v_g - u_g, strength * u_g / norm, atol=1e-12)
        else:
            assert np.linalg.norm(v_g) <= strength
    # Groups as columns: the same operator on the transpose.
    assert_allclose(prox.group_lasso(v.T, GROUP_STRENGTH, axis=0), u.T, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_nonnegative_and_box_prox_match_cvxpy(seed):
    v = 1.5 * np.random.default_rng(seed).normal(size=N)
    nonnegative = cvxpy_argmin(N, lambda u: 0.5 * cp.sum_squares(u - v), lambda u: [u >= 0])
    in_box = cvxpy_argmin(N, lambda u: 0.5 * cp.sum_squares(u - v), lambda u: [u >= LOWER, u <= UPPER])
    assert_allclose(prox.nonnegative(v), nonnegative, atol=1e-6)
    assert_allclose(prox.box(v, LOWER, UPPER), in_box, atol=1e-6)


def test_prox_acts_leaf_by_leaf_on_pytrees():
    v = {"w": np.array([[1.0, -0.2], [0.0, 3.0]]), "b": np.array(-2.0)}
    strength = {"w": np.array([0.5, 1.0]), "b": np.array(0.5)}
    out = prox.l1(v, strength)
    assert_allclose(out["w"], [[0.5, 0.0], [0.0, 2.0]])
    assert_allclose(out["b"], -1.5)
    assert_allclose(prox.l1(v, 0.5)["w"], [[0.5, 0.0], [0.0, 2.5]])
    assert_allclose(prox.box(v, -1.0, 1.0)["b"], -1.0)
    groups = prox.group_lasso({"w": v["w"], "b": np.array([3.0, -4.0])}, 1.5)
    assert_allclose(groups["w"], [[0.0, 0.0], [0.0, 1.5]], atol=1e-12)
    assert_allclose(groups["b"], [2.1, -2.8], atol=1e-12)


# --- Projections -----------------------------------------------------------------------------------------------


def inside_ball(norm, radius):
    def sample(rng):
        x = rng.normal(size=N)
        return 0.7 * radius * x / np.linalg.norm(x, norm)

    return sample


def inside_halfspace(rng):
    x = rng.normal(size=N)
    return x - (max(A @ x - B, 0.0) + rng.uniform(0.1, 1.0)) * A / (A @ A)


# name: (projection, CVXPY constraints, a sampler of points inside the set)
SETS = {
    "simplex": (
        lambda x: projections.simplex(x, SCALE),
        lambda y: [y >= 0, cp.sum(y) == SCALE],
        lambda rng: SCALE * rng.dirichlet(np.ones(N)),
    ),
    "l1_ball": (lambda x: projections.l1_ball(x, RADIUS), lambda y: [cp.norm1(y) <= RADIUS], inside_ball(1, RADIUS)),
    "l2_ball": (lambda x: projections.l2_ball(x, RADIUS), lambda y: [cp.norm(y, 2) <= RADIUS], inside_ball(2, RADIUS)),
    "linf_ball": (
        lambda x: projections.linf_ball(x, RADIUS),
        lambda y: [cp.norm_inf(y) <= RADIUS],
        inside_ball(np.inf, RADIUS),
    ),
    "box": (
        lambda x: projections.box(x, LOWER, UPPER),
        lambda y: [y >= LOWER, y <= UPPER],
        lambda rng: rng.uniform(LOWER, UPPER),
    ),
    "hyperplane": (
        lambda x: projections.hyperplane(x, A, B),
        lambda y: [A @ y == B],
        lambda rng: (lambda x: x + (B - A @ x) * A / (A @ A))(rng.normal(size=N)),
    ),
    "halfspace": (lambda x: projections.halfspace(x, A, B), lambda y: [A @ y <= B], inside_halfspace),
    "nonnegative": (projections.nonnegative, lambda y: [y >= 0], lambda rng: np.abs(rng.normal(size=N))),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", SETS)
def test_projection_matches_cvxpy(name, seed):
    project, constraints, _ = SETS[name]
    x = 2.0 * np.random.default_rng(seed).normal(size=N)
    reference = cvxpy_argmin(N, lambda y: 0.5 * cp.sum_squares(y - x), constraints)
    assert_allclose(project(x), reference, atol=1e-6)


@pytest.mark.parametrize("name", SETS)
def test_projection_of_a_point_inside_is_the_point(name):
    project, _, inside = SETS[name]
    rng = np.random.default_rng(4)
    for _ in range(3):
        y = inside(rng)
        assert_allclose(project(y), y, atol=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_simplex_per_row_matches_cvxpy(seed):
    x = 2.0 * np.random.default_rng(seed).normal(size=(3, 5))
    rows = cvxpy_argmin(x.shape, lambda y: 0.5 * cp.sum_squares(y - x), lambda y: [y >= 0, cp.sum(y, axis=1) == 1])
    columns = cvxpy_argmin(
        x.shape, lambda y: 0.5 * cp.sum_squares(y - x), lambda y: [y >= 0, cp.sum(y, axis=0) == SCALE]
    )
    assert_allclose(projections.simplex(x, axis=-1), rows, atol=1e-6)
    assert_allclose(projections.simplex(x, SCALE, axis=0), columns, atol=1e-6)
    whole = cvxpy_argmin(x.shape, lambda y: 0.5 * cp.sum_squares(y - x), lambda y: [y >= 0, cp.sum(y) == 1])
    assert_allclose(projections.simplex(x), whole, atol=1e-6)


def test_simplex_along_a_middle_axis_projects_each_slice():
    x = np.random.default_rng(5).normal(size=(2, 4, 3))
    out = projections.simplex(x, SCALE, axis=1)
    one_simplex = jax.jit(projections.simplex)
    for i in range(2):
        for k in range(3):
            assert_allclose(out[i, :, k], one_simplex(x[i, :, k], SCALE), atol=1e-12)


def test_projections_of_pytrees_take_all_leaves_as_one_vector():
    rng = np.random.default_rng(6)
    x = {"w": 2 * rng.normal(size=(2, 2)), "b": 2 * rng.normal(size=2)}
    a = {"w": rng.normal(size=(2, 2)), "b": rng.normal(size=2)}

    def flat(tree):
        return np.concatenate([np.ravel(tree["b"]), np.ravel(tree["w"])])

    for project in (projections.simplex, projections.l1_ball, projections.l2_ball):
        assert_allclose(flat(project(x)), project(flat(x)), atol=1e-12)
    assert_allclose(flat(projections.hyperplane(x, a, B)), projections.hyperplane(flat(x), flat(a), B), atol=1e-12)
    assert_allclose(flat(projections.halfspace(x, a, B)), projections.halfspace(flat(x), flat(a), B), atol=1e-12)
    assert_allclose(projections.box(x, -0.5, 0.5)["w"], np.clip(x["w"], -0.5, 0.5))


# --- Derivatives -----------------------------------------------------------------------------------------------


def away_from_kinks(rng, shape, threshold, margin=0.2):
    """Entries whose magnitude is at least ``margin`` from ``threshold`` and from zero, of random signs."""
    magnitude = np.where(
        rng.uniform(size=shape) < 0.5,
        rng.uniform(margin, max(threshold - margin, margin + 0.01), shape),
        rng.uniform(threshold + margin, threshold + 1.5, shape),
    )
    return rng.choice([-1.0, 1.0], size=shape) * magnitude


def simplex_point_away_from_kinks(rng, scale, margin=0.05):
    """A point whose projection has a support that no small perturbation changes: ``|x − τ| ≥ margin``."""
    while True:
        x = rng.normal(size=N)
        y = np.asarray(projections.simplex(x, scale))
        tau = np.mean((x - y)[y > 0])
        if np.min(np.abs(x - tau)) >= margin and (y > 0).sum() > 1:
            return x


def l1_ball_point_away_from_kinks(rng, radius):
    """Outside the ball, away from zero, and with ``|x|`` a simplex point away from kinks for ``radius``."""
    while True:
        x = 1.5 * away_from_kinks(rng, N, 0.5, margin=0.1)
        if np.abs(x).sum() <= radius:
            continue
        y = np.asarray(projections.simplex(np.abs(x), radius))
        tau = np.mean((np.abs(x) - y)[y > 0])
        if np.min(np.abs(np.abs(x) - tau)) >= 0.05 and (y > 0).sum() > 1:
            return x


RNG = np.random.default_rng(7)
V_L1 = away_from_kinks(RNG, N, 0.6)
V_GROUPS = random_groups(RNG)[1:]  # the rows of norms 0.4, 1.7, 2.5, against strengths 1.0, 0.5, 1.2
X_SIMPLEX = simplex_point_away_from_kinks(RNG, SCALE)
X_L1_BALL = l1_ball_point_away_from_kinks(RNG, RADIUS)
X_OUTSIDE = (lambda g: 2 * RADIUS * g / np.linalg.norm(g))(RNG.normal(size=N))

# name: (function of a point and of constants, the point, away from the function's kinks, and the constants)
DIFFERENTIABLE = {
    "l1 in v": (lambda v: prox.l1(v, 0.6), V_L1, ()),
    "l1 in strength": (lambda s, v: prox.l1(v, s), np.full(N, 0.6), (V_L1,)),
    "elastic_net in strengths": (lambda s, v: prox.elastic_net(v, s[0], s[1]), np.array([0.6, 0.3]), (V_L1,)),
    "group_lasso in v": (lambda v, s: prox.group_lasso(v, s[:, None]), V_GROUPS, (GROUP_STRENGTH[1:],)),
    "group_lasso in strength": (lambda s, v: prox.group_lasso(v, s[:, None]), GROUP_STRENGTH[1:], (V_GROUPS,)),
    "simplex in x": (lambda x: projections.simplex(x, SCALE), X_SIMPLEX, ()),
    "simplex in scale": (lambda s, x: projections.simplex(x, s), np.array(SCALE), (X_SIMPLEX,)),
    "simplex per row in x": (
        lambda x: projections.simplex(x.reshape(2, 3), axis=-1).ravel(),
        np.array([0.9, 0.2, -1.0, 0.1, 0.5, 0.45]),
        (),
    ),
    "l2_ball in x": (lambda x: projections.l2_ball(x, RADIUS), X_OUTSIDE, ()),
    "l2_ball in radius": (lambda r, x: projections.l2_ball(x, r), np.array(RADIUS), (X_OUTSIDE,)),
    "l1_ball in x": (lambda x: projections.l1_ball(x, RADIUS), X_L1_BALL, ()),
    "l1_ball in radius": (lambda r, x: projections.l1_ball(x, r), np.array(RADIUS), (X_L1_BALL,)),
}
EPS = 1e-6
FLOAT32 = ["l1 in v", "group_lasso in v", "simplex in x", "simplex per row in x", "l2_ball in x", "l1_ball in x"]


@functools.cache
def jacobians(name, dtype):
    """``jacfwd``, ``jacrev`` and central differences of ``DIFFERENTIABLE[name]`` in ``dtype``, in one compilation."""
    fn, point, constants = DIFFERENTIABLE[name]
    point = np.asarray(point, dtype)
    constants = [np.asarray(c, dtype) for c in constants]
    steps = EPS * np.eye(point.size, dtype=dtype).reshape(-1, *point.shape)

    @jax.jit
    def run(p):
        def of_point(p):
            return fn(p, *constants)

        forward, backward = jnp.split(jax.vmap(of_point)(p + np.concatenate([steps, -steps])), 2)
        differences = (forward - backward) / (2 * EPS)
        return jax.jacfwd(of_point)(p), jax.jacrev(of_point)(p), jnp.moveaxis(differences, 0, -1)

    forward, reverse, differences = run(point)
    return forward, reverse, differences.reshape(forward.shape)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_jacobians_match_each_other_and_finite_differences(name):
    forward, reverse, differences = jacobians(name, np.float64)
    assert_allclose(reverse, forward, rtol=1e-12, atol=1e-12)
    assert_allclose(forward, differences, rtol=1e-7, atol=1e-7)
    assert np.any(forward != 0)


@pytest.mark.parametrize("name", FLOAT32)
def test_jacobians_in_float32_match_float64(name):
    forward, _, _ = jacobians(name, np.float64)
    forward32, reverse32, _ = jacobians(name, np.float32)
    assert forward32.dtype == reverse32.dtype == jnp.float32
    assert_allclose(forward32, forward, atol=1e-5)
    assert_allclose(reverse32, forward, atol=1e-5)


def test_derivatives_inside_a_ball_are_the_identity():
    inside = 0.1 * X_L1_BALL / np.abs(X_L1_BALL).sum()
    jacobian = jax.jit(jax.jacrev(lambda x: jnp.stack([projections.l1_ball(x), projections.l2_ball(x)])))(inside)
    assert_allclose(jacobian, np.stack([np.eye(N), np.eye(N)]))


def test_gradients_are_finite_at_zero_groups_and_kinks():
    at_kinks = np.array([0.0, 0.5, -0.5, 2.0])
    operators = (
        lambda v: prox.l1(v, 0.5),
        lambda v: prox.elastic_net(v, 0.5, 1.0),
        lambda v: prox.group_lasso(v, 0.5),
        lambda v: prox.box(v, -0.5, 0.5),
        prox.nonnegative,
        lambda v: projections.l1_ball(v, 1.0),
        lambda v: projections.l2_ball(v, 1.0),
        lambda v: projections.simplex(v, 1.0),
        lambda v: projections.linf_ball(v, 0.5),
    )
    jacobian = jax.jit(jax.jacrev(lambda v: jnp.stack([op(v) for op in operators])))
    assert np.all(np.isfinite(jacobian(at_kinks)))
    assert np.all(np.isfinite(jacobian(np.zeros(4))))

    @jax.jit
    def zero_groups(v, s):
        # A zero group maps to zero on a neighbourhood when s > 0; with s = 0 the prox is the identity.
        return (
            jax.jacrev(lambda v: prox.group_lasso(v, s))(v),
            jax.jacfwd(lambda v: prox.group_lasso(v, 0.0))(v),
            jax.grad(lambda s: prox.group_lasso(v, s).sum())(s),
        )

    shrunk, identity, in_strength = zero_groups(np.zeros((2, 3)), 0.5)
    assert_allclose(shrunk, np.zeros((2, 3, 2, 3)))
    assert_allclose(identity, np.eye(6).reshape(2, 3, 2, 3))
    assert np.isfinite(in_strength)

    @jax.jit
    def in_traced_parameters(v, s):
        # Traced parameters take the guarded path, whose where must not leak NaN into gradients either.
        return jax.grad(lambda s: (prox.l1(v, s) + projections.l2_ball(v, s) + prox.box(v, -s, 1.0)).sum())(s)

    assert np.isfinite(in_traced_parameters(at_kinks, 0.5))


# --- jit, vmap and float32 -------------------------------------------------------------------------------------

# name: (function, arguments; the first is batched by vmap)
CALLS = {
    "prox.l1": (prox.l1, (V_L1, STRENGTH)),
    "prox.elastic_net": (prox.elastic_net, (V_L1, 0.4, 0.7)),
    "prox.group_lasso": (prox.group_lasso, (V_GROUPS, GROUP_STRENGTH[1:, None])),
    "prox.nonnegative": (prox.nonnegative, (V_L1,)),
    "prox.box": (prox.box, (V_L1, LOWER, UPPER)),
    "simplex": (projections.simplex, (X_SIMPLEX, SCALE)),
    "simplex per row": (lambda x: projections.simplex(x, axis=-1), (V_GROUPS,)),
    "l1_ball": (projections.l1_ball, (X_L1_BALL, RADIUS)),
    "l2_ball": (projections.l2_ball, (X_OUTSIDE, RADIUS)),
    "linf_ball": (projections.linf_ball, (X_OUTSIDE, RADIUS)),
    "box": (projections.box, (X_OUTSIDE, LOWER, UPPER)),
    "hyperplane": (projections.hyperplane, (X_OUTSIDE, A, B)),
    "halfspace": (projections.halfspace, (X_OUTSIDE, A, B)),
    "nonnegative": (projections.nonnegative, (X_OUTSIDE,)),
}


def jit_and_vmap_outputs(fn, x, traced, concrete):
    """``fn`` on each point of a batch (``x`` first) with the ``traced`` parameters (the guarded path), and under
    ``vmap`` on the batch with the ``concrete`` ones (the checked path)."""
    batch = jnp.stack([x, -0.5 * x])
    return jnp.stack([fn(point, *traced) for point in batch]), jax.vmap(lambda point: fn(point, *concrete))(batch)


@pytest.mark.parametrize("name", CALLS)
def test_jit_and_vmap_agree_with_eager_in_float32_and_float64(name):
    fn, args = CALLS[name]
    dtypes = (np.dtype(np.float32), np.dtype(np.float64))
    args_by_dtype = [tuple(np.asarray(a, dtype) for a in args) for dtype in dtypes]

    @jax.jit
    def run(traced_by_dtype):
        return [
            jit_and_vmap_outputs(fn, traced[0], traced[1:], concrete[1:])
            for traced, concrete in zip(traced_by_dtype, args_by_dtype)
        ]

    eager = fn(*args)
    for dtype, (one_by_one, batched) in zip(dtypes, run(args_by_dtype)):
        assert one_by_one.dtype == batched.dtype == dtype
        assert_allclose(batched, one_by_one, **TOLERANCES[dtype])
        assert_allclose(one_by_one[0], eager, **TOLERANCES[dtype])


def test_vmap_over_parameters():
    strengths = np.array([0.1, 0.6, 2.0])
    radii = np.array([0.5, 1.0, 3.0])

    @jax.jit
    def batched(strengths, radii):
        return (
            jax.vmap(prox.l1, in_axes=(None, 0))(V_L1, strengths),
            jax.vmap(projections.l2_ball, in_axes=(None, 0))(X_OUTSIDE, radii),
        )

    soft, balls = batched(strengths, radii)
    assert_allclose(soft, [np.sign(V_L1) * np.maximum(np.abs(V_L1) - s, 0) for s in strengths])
    assert_allclose(balls, [X_OUTSIDE * min(1, r / np.linalg.norm(X_OUTSIDE)) for r in radii])


# --- Checks of the arguments -----------------------------------------------------------------------------------

EMPTY_BOX_LOWER = np.array([0.0, 2.0, 0.0, 3.0, 0.0])


@pytest.mark.parametrize("box", [projections.box, prox.box], ids=["projections.box", "prox.box"])
def test_infeasible_concrete_box_raises(box):
    with pytest.raises(
        ValueError, match=r"infeasible box: lower > upper at 2 of 5 coordinates, indices \(1,\), \(3,\)"
    ):
        box(np.ones(5), EMPTY_BOX_LOWER, 1.0)
    with pytest.raises(ValueError, match=r"at 1 of 4 coordinates \(leaf \['w'\]\)"):
        box({"w": np.ones((2, 2))}, {"w": np.array([[0.0, 0.0], [5.0, 0.0]])}, 1.0)


@pytest.mark.parametrize("box", [projections.box, prox.box], ids=["projections.box", "prox.box"])
def test_infeasible_traced_box_is_nan_exactly_where_empty(box):
    x = np.array([0.5, 0.5, -3.0, 0.5, 4.0])
    out = np.asarray(jax.jit(box)(x, EMPTY_BOX_LOWER, 1.0))
    empty = EMPTY_BOX_LOWER > 1.0
    assert np.all(np.isnan(out[empty]))
    assert_allclose(out[~empty], np.clip(x, EMPTY_BOX_LOWER, 1.0)[~empty])


SIZED = {
    "simplex": projections.simplex,
    "simplex per row": lambda x, s: projections.simplex(x, s, axis=-1),
    "l1_ball": projections.l1_ball,
    "l2_ball": projections.l2_ball,
    "linf_ball": projections.linf_ball,
}


@pytest.mark.parametrize("name", SIZED)
def test_nonpositive_radius_raises_when_concrete_and_is_nan_when_traced(name):
    project = SIZED[name]
    for size in (-1.0, 0.0):
        with pytest.raises(ValueError, match="must be positive"):
            project(X_OUTSIDE, size)
    assert np.all(np.isnan(jax.jit(project)(X_OUTSIDE, -1.0)))
    with pytest.raises(TypeError, match="must be a scalar"):
        project(X_OUTSIDE, np.ones(2))


@pytest.mark.parametrize("project", [projections.hyperplane, projections.halfspace], ids=["hyperplane", "halfspace"])
def test_normal_vector_of_another_shape_or_zero_raises(project):
    with pytest.raises(TypeError, match=r"x is float64\[2, 3\], a is float64\[6\]"):
        project(np.ones((2, 3)), np.ones(6), 1.0)
    with pytest.raises(TypeError, match="a must have the structure"):
        project({"w": np.ones(3)}, np.ones(3), 1.0)
    with pytest.raises(TypeError, match="b must be a scalar"):
        project(np.ones(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="normal vector a is zero"):
        project(np.ones(3), np.zeros(3), 1.0)


def test_negative_strength_raises_when_concrete_and_is_nan_where_traced():
    strength = np.array([0.5, -0.1, 0.5])
    with pytest.raises(ValueError, match="l1: strength must be nonnegative; it is negative or NaN at 1 of 3"):
        prox.l1(np.ones(3), strength)
    with pytest.raises(ValueError, match="elastic_net: l2_strength"):
        prox.elastic_net(np.ones(3), 0.1, -1.0)
    with pytest.raises(ValueError, match="group_lasso: strength"):
        prox.group_lasso(np.ones((2, 3)), np.array([[1.0], [-1.0]]))
    out = np.asarray(jax.jit(prox.l1)(np.full(3, 2.0), strength))
    assert_allclose(out[[0, 2]], 1.5)
    assert np.isnan(out[1])


def test_simplex_along_an_axis_needs_an_array():
    with pytest.raises(TypeError, match="with axis=-1, x must be an array"):
        projections.simplex({"w": np.ones(3)}, axis=-1)

"""Failure policies of the backward linear solve, and clear errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

import implax
from implax import linear


def cube_optimality(x, theta):
    r""":math:`x^3 - \theta`: at :math:`\theta = 0` the root is 0 and :math:`\partial_x F = 0` is singular."""
    return x**3 - theta


def cube_root_solver(solve):
    @implax.custom_root(cube_optimality, solve=solve)
    def solver(init, theta):
        return jnp.cbrt(jax.lax.stop_gradient(theta))

    return solver


def diagonal_optimality(x, d, b):
    return d * x - b


def diagonal_solver(solve):
    @implax.custom_root(diagonal_optimality, solve=solve)
    def solver(init, d, b):
        return jax.lax.stop_gradient(b / d)

    return solver


ILL_CONDITIONED = np.array([1.0, 1e3, 1e6])
WELL_CONDITIONED = np.array([2.0, 2.0, 2.0])
ONES = np.ones(3)


def cube_root_gradient(policy, transform=jax.jit):
    solver = cube_root_solver(linear.LU(on_failure=policy))
    return transform(jax.grad(lambda theta: solver(jnp.ones(()), theta)))


def diagonal_gradient(policy):
    solver = diagonal_solver(linear.CG(maxiter=1, on_failure=policy))
    return jax.jit(jax.grad(lambda d, b: solver(jnp.zeros(3), d, b).sum(), argnums=1))


def run(fn, *args):
    out = jax.block_until_ready(fn(*args))
    jax.effects_barrier()
    return out


def test_warn_policy_on_singular_jacobian():
    with pytest.warns(implax.SolveFailureWarning, match=r"implax\.linear\.LU failed"):
        run(cube_root_gradient("warn"), 0.0)


def test_warn_policy_in_forward_mode():
    solver = cube_root_solver(linear.LU())
    with pytest.warns(implax.SolveFailureWarning, match=r"implax\.linear\.LU failed"):
        run(jax.jit(jax.jacfwd(lambda theta: solver(jnp.ones(2), theta))), jnp.array([0.0, 8.0]))


def test_warn_and_ignore_return_the_inaccurate_solve_unchanged():
    with pytest.warns(implax.SolveFailureWarning, match=r"implax\.linear\.CG failed"):
        warned = run(diagonal_gradient("warn"), ILL_CONDITIONED, ONES)
    ignored = run(diagonal_gradient("ignore"), ILL_CONDITIONED, ONES)

    assert np.all(np.isfinite(warned))
    assert_allclose(warned, ignored)
    assert np.abs(warned - 1 / ILL_CONDITIONED).max() > 0.1


def test_raise_policy_eager():
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"SolveFailureError: implax\.linear\.LU failed"):
        run(cube_root_gradient("raise", lambda f: f), 0.0)


def test_raise_policy_under_jit():
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"SolveFailureError: implax\.linear\.CG failed"):
        run(diagonal_gradient("raise"), ILL_CONDITIONED, ONES)


def test_raise_policy_is_silent_on_success():
    assert_allclose(run(cube_root_gradient("raise"), 8.0), 1 / 12)


def test_nan_policy():
    assert np.isnan(run(cube_root_gradient("nan"), 0.0))
    assert np.all(np.isnan(run(diagonal_gradient("nan"), ILL_CONDITIONED, ONES)))


def test_nan_policy_under_vmap_marks_only_the_failing_element():
    cube_root = run(jax.vmap(cube_root_gradient("nan")), jnp.array([0.0, 8.0]))
    diagonal = run(
        jax.vmap(diagonal_gradient("nan")), jnp.stack([ILL_CONDITIONED, WELL_CONDITIONED]), jnp.stack([ONES, ONES])
    )

    assert np.isnan(cube_root[0])
    assert_allclose(cube_root[1], 1 / 12)
    assert np.all(np.isnan(diagonal[0]))
    assert_allclose(diagonal[1], 1 / WELL_CONDITIONED)


def test_warn_policy_under_vmap_leaves_good_elements_exact():
    with pytest.warns(implax.SolveFailureWarning, match=r"implax\.linear\.LU failed"):
        gradients = run(jax.vmap(cube_root_gradient("warn")), jnp.array([8.0, 0.0, 27.0]))

    assert_allclose(np.asarray(gradients)[[0, 2]], [1 / 12, 1 / 27])


def solve_once(optimality_fn, solver, x0, *args, has_aux=False):
    return implax.custom_root(optimality_fn, has_aux=has_aux)(solver)(x0, *args)


def identity_solver(init, theta):
    return init


@pytest.mark.parametrize(
    ("optimality_fn", "returned"),
    [
        (lambda x, theta: (x - theta, x), r"\('float64\[3\]', 'float64\[3\]'\)"),
        (lambda x, theta: x[:2] - theta[:2], r"float64\[2\]"),
        (lambda x, theta: jnp.outer(x, theta), r"float64\[3, 3\]"),
    ],
    ids=["tuple", "shorter", "matrix"],
)
def test_optimality_fn_not_shaped_like_x(optimality_fn, returned):
    with pytest.raises(
        TypeError, match=rf"optimality_fn must return .* x is float64\[3\] but optimality_fn returned {returned}"
    ):
        solve_once(optimality_fn, identity_solver, jnp.zeros(3), jnp.ones(3))


def test_optimality_fn_not_shaped_like_pytree_x():
    def optimality_fn(x, theta):
        return {"u": x["u"] - theta}

    message = r"x is \{'u': 'float64\[3\]', 'v': 'float64\[\]'\} but optimality_fn returned \{'u': 'float64\[3\]'\}"
    with pytest.raises(TypeError, match=message):
        solve_once(optimality_fn, identity_solver, {"u": jnp.zeros(3), "v": jnp.zeros(())}, jnp.ones(3))


def test_solver_output_not_what_optimality_fn_expects():
    matrix = jnp.eye(3)

    def short_solver(init, b):
        return init[:2]

    with pytest.raises(TypeError, match=r"optimality_fn failed .* x: float64\[2\], args: \('float64\[3\]',\)"):
        solve_once(lambda x, b: matrix @ x - b, short_solver, jnp.zeros(3), jnp.ones(3))


class Settings:
    pass


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ((jnp.ones(3), "newton"), {}, r"args\[1\] is a str"),
        ((jnp.ones(3),), {"options": {"settings": Settings()}}, r"kwargs\['options'\]\['settings'\] is a Settings"),
    ],
    ids=["string", "object"],
)
def test_non_array_argument(args, kwargs, where):
    def optimality_fn(x, theta, *unused_args, **unused_kwargs):
        return x - theta

    def solver(init, theta, *unused_args, **unused_kwargs):
        return theta

    with pytest.raises(TypeError, match=rf"solver argument {where}, not an array"):
        implax.custom_root(optimality_fn)(solver)(jnp.zeros(3), *args, **kwargs)


@pytest.mark.parametrize(
    ("solver", "returned"),
    [(lambda init, theta: theta, r"float64\[3\]"), (lambda init, theta: (theta, theta, 0), r"\(.*, .*, .*\)")],
    ids=["array", "triple"],
)
def test_has_aux_without_a_pair(solver, returned):
    with pytest.raises(TypeError, match=rf"has_aux=True .* pair \(x, aux\); it returned {returned}"):
        solve_once(lambda x, theta: x - theta, solver, jnp.zeros(3), jnp.ones(3), has_aux=True)


@pytest.mark.parametrize(
    "solver_class",
    [
        linear.LU,
        linear.Cholesky,
        linear.CG,
        linear.GMRES,
        linear.BiCGSTAB,
        linear.NormalCG,
        linear.Neumann,
        linear.Auto,
        linear.Custom,
    ],
)
def test_invalid_on_failure(solver_class):
    with pytest.raises(ValueError, match=r"on_failure must be one of \('warn', 'raise', 'nan', 'ignore'\), got 'fail'"):
        solver_class(on_failure="fail")


def test_invalid_tolerance_and_iteration_limit():
    with pytest.raises(ValueError, match=r"rtol must be nonnegative, got -1e-06"):
        linear.CG(rtol=-1e-6)
    with pytest.raises(ValueError, match=r"maxiter must be positive, got 0"):
        linear.GMRES(maxiter=0)


def test_solve_that_is_not_a_solver():
    solver = implax.custom_root(lambda x, theta: x - theta, solve=42)(identity_solver)

    with pytest.raises(TypeError, match=r"solve must be an implax.linear solver or a callable .* got 42"):
        jax.grad(lambda theta: solver(jnp.zeros(3), theta).sum())(jnp.ones(3))


def test_custom_without_fn():
    with pytest.raises(TypeError, match=r"implax\.linear\.Custom needs fn"):
        linear.Custom()(lambda v: v, jnp.ones(3))


@pytest.mark.parametrize(
    ("returned", "description"),
    [(np.zeros(2), r"float64\[2\]"), ((np.zeros(3), np.zeros(3)), r"\('float64\[3\]', 'float64\[3\]'\)")],
    ids=["shape", "structure"],
)
def test_black_box_output_not_shaped_like_init(returned, description):
    @implax.black_box
    def numpy_solver(init, theta):
        return returned

    with pytest.raises(
        jax.errors.JaxRuntimeError,
        match=rf"TypeError: black-box solver 'numpy_solver' returned {description}, expected float64\[3\]",
    ):
        run(numpy_solver, jnp.zeros(3), jnp.ones(3))

"""Parametrisation of tests over solvers × a table of problems, shared by the root and fixed-point tests."""

import jax
import jax.numpy as jnp
import pytest


def solver_problem_cases(problems, solvers):
    """Two ``parametrize`` marks over every (solver, problem) pair.

    Each problem lists in ``hard_for`` the solver types known to fail on it. The first mark makes those pairs
    strict expected failures (the solution tests show that they fail); the second skips them (tests of
    derivatives, which need a solution).
    """

    def params(mark_hard):
        return [
            pytest.param(
                solver,
                problem,
                id=f"{type(solver).__name__}-{problem.name}",
                marks=mark_hard(problem) if isinstance(solver, problem.hard_for) else (),
            )
            for problem in problems
            for solver in solvers
        ]

    expected_failure = lambda problem: pytest.mark.xfail(reason=problem.reason, strict=True, raises=AssertionError)  # noqa: E731
    skip = lambda problem: pytest.mark.skip(reason=problem.reason)  # noqa: E731
    return (
        pytest.mark.parametrize("solver, problem", params(expected_failure)),
        pytest.mark.parametrize("solver, problem", params(skip)),
    )


def cast(tree, dtype):
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)

"""implax: differentiate through any solver with the implicit function theorem."""

from implax import conditions, linear, projections, prox
from implax.engine import custom_fixed_point, custom_root, root_jvp, root_vjp
from implax.failures import SolveFailureError, SolveFailureWarning
from implax.fixed_point import Anderson, FixedPointIteration, fixed_point
from implax.interop import black_box
from implax.least_squares import GaussNewton, LevenbergMarquardt, least_squares
from implax.minimize import LBFGS, GradientDescent, MirrorDescent, ProjectedGradient, ProximalGradient, minimize
from implax.policies import JFB, Implicit, Phantom, Unrolled
from implax.qp import KKTPoint, QPSolution, QPStats, QPStatus, qp
from implax.root import Bisection, Broyden, Newton, root
from implax.solution import Solution, Stats

__version__ = "0.1.0"

__all__ = [
    "JFB",
    "LBFGS",
    "Anderson",
    "Bisection",
    "Broyden",
    "FixedPointIteration",
    "GaussNewton",
    "GradientDescent",
    "Implicit",
    "KKTPoint",
    "LevenbergMarquardt",
    "MirrorDescent",
    "Newton",
    "Phantom",
    "ProjectedGradient",
    "ProximalGradient",
    "QPSolution",
    "QPStats",
    "QPStatus",
    "Solution",
    "SolveFailureError",
    "SolveFailureWarning",
    "Stats",
    "Unrolled",
    "black_box",
    "conditions",
    "custom_fixed_point",
    "custom_root",
    "fixed_point",
    "least_squares",
    "linear",
    "minimize",
    "projections",
    "prox",
    "qp",
    "root",
    "root_jvp",
    "root_vjp",
]

"""The Pyro-free optimisers of pyro_mle.optim on plain torch functions.

References are independent of pyro_mle: scipy's L-BFGS-B, known optima (Rosenbrock's
(1, …, 1)), numpy.linalg.solve for quadratics, and the stopping measure's formula written out
by hand. Everything is float64 and seeded.
"""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, rosen, rosen_der

from pyro_mle.optim.adam import adam
from pyro_mle.optim.lbfgs import lbfgs as torch_lbfgs
from pyro_mle.optim.lbfgsb import lbfgsb
from pyro_mle.optim.stopping import default_tolerances, relative_gradient

F64 = torch.float64


def closure(f, params, seen=None):
    """The ``evaluate(probe)`` contract of :func:`lbfgs` for a function of ``params``: the loss,
    its gradient in ``.grad``, ``None`` for a non-finite trial point. ``seen`` collects the
    non-finite losses met."""

    def evaluate(probe):
        for p in params:
            p.grad = None
        loss = f(*params)
        if not torch.isfinite(loss):
            if seen is not None:
                seen.append(float(loss.detach()))
            if probe:
                return None
            raise FloatingPointError(f"non-finite loss {float(loss.detach())} at an iterate")
        loss.backward()
        return loss.detach()

    return evaluate


def rosenbrock(x):
    """scipy.optimize.rosen, written in torch."""
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


# ----------------------------------------------------------------------------- L-BFGS
def scipy_lbfgs(evaluate, params, *, lr, **kwargs):
    """:func:`lbfgsb` (scipy's L-BFGS-B, which scales its first step itself) called as
    :func:`torch_lbfgs`."""
    return lbfgsb(evaluate, params, **kwargs)


#: both L-BFGS drivers keep one contract (fit uses scipy's for float64 CPU parameters)
DRIVERS = pytest.mark.parametrize("lbfgs", [torch_lbfgs, scipy_lbfgs], ids=["torch", "scipy"])


@DRIVERS
@pytest.mark.parametrize("dim", [2, 10])
def test_lbfgs_rosenbrock_matches_scipy_and_the_optimum(dim, lbfgs):
    x0 = np.tile([-1.2, 1.0], dim // 2)  # the standard start (extended Rosenbrock for dim > 2)
    x = torch.tensor(x0, dtype=F64, requires_grad=True)
    result = lbfgs(closure(rosenbrock, [x]), [x], num_steps=1000, lr=1.0, rtol=1e-15, gtol=1e-10)
    reference = minimize(rosen, x0, jac=rosen_der, method="L-BFGS-B", options=dict(gtol=1e-12, ftol=1e-15))

    assert result.converged, result.message
    assert result.grad_norm <= 1e-10
    assert reference.success, reference.message
    np.testing.assert_allclose(x.detach().numpy(), reference.x, atol=1e-6, rtol=0)
    np.testing.assert_allclose(x.detach().numpy(), np.ones(dim), atol=1e-6, rtol=0)


@DRIVERS
def test_lbfgs_ill_conditioned_quadratic_matches_solve(lbfgs):
    rng = np.random.default_rng(0)
    n = 8
    rotation, _ = np.linalg.qr(rng.normal(size=(n, n)))
    factor = rotation @ np.diag(np.logspace(0, 2, n))  # A = factor·factorᵀ, eigenvalues 1 … 1e4
    A = factor @ factor.T
    b = rng.normal(size=n)
    assert np.linalg.cond(A) == pytest.approx(1e4, rel=1e-6)
    factor_t, b_t = torch.tensor(factor), torch.tensor(b)

    # ½xᵀAx is computed as the sum of squares ½‖factorᵀx‖²: written as x @ A @ x, its rounding
    # (eps·‖A‖·‖x‖² ≈ 1e-12) would hide the loss's decrease along the flattest direction past
    # |x − x*| ≈ 1e-6, and no line search can then locate the minimiser to 1e-6.
    def loss(v):
        return 0.5 * ((factor_t.T @ v) ** 2).sum() - b_t @ v

    # The float64 defaults: relative gradient ≤ 1e-7 bounds |x − x*| by about
    # 1e-7·max(|f|, 1)/λ_min ≈ 1.3e-7 here (λ_min = 1, f* ≈ −1.3); 1e-10 is below what the loss's
    # rounding lets a line search resolve along the flattest direction (|f*|·eps ≈ ½λ_min·δ²).
    rtol, gtol = default_tolerances(F64)
    x = torch.zeros(n, dtype=F64, requires_grad=True)
    result = lbfgs(closure(loss, [x]), [x], num_steps=1000, lr=1.0, rtol=rtol, gtol=gtol)

    assert result.converged, result.message
    np.testing.assert_allclose(x.detach().numpy(), np.linalg.solve(A, b), atol=1e-6, rtol=0)


@DRIVERS
def test_lbfgs_out_of_steps_is_not_converged(lbfgs):
    x = torch.tensor([-1.2, 1.0], dtype=F64, requires_grad=True)
    result = lbfgs(closure(rosenbrock, [x]), [x], num_steps=2, lr=1.0, rtol=1e-10, gtol=1e-7)

    assert not result.converged
    assert not result.stalled
    assert result.num_steps == 2
    assert "not converged" in result.message


@DRIVERS
def test_lbfgs_backs_off_a_non_finite_trial_point(lbfgs):
    # f(x) = Σ 10 x_i − log x_i, minimised at x_i = 0.1; log of a negative coordinate is NaN, so a
    # line-search step from x = 3 that overshoots past 0 meets a NaN loss and must be shortened.
    seen = []
    x = torch.tensor([3.0, 3.0], dtype=F64, requires_grad=True)
    result = lbfgs(
        closure(lambda v: (10.0 * v - torch.log(v)).sum(), [x], seen),
        [x],
        num_steps=100,
        lr=1.0,
        rtol=1e-15,
        gtol=1e-10,
    )

    assert result.rejected > 0
    assert result.rejected == len(seen)
    assert any(math.isnan(v) for v in seen)
    assert result.converged, result.message
    np.testing.assert_allclose(x.detach().numpy(), [0.1, 0.1], atol=1e-9, rtol=0)


@DRIVERS
def test_lbfgs_never_accepts_a_non_finite_trial_point_after_a_long_extrapolation(lbfgs):
    # f(x) = 100(c − x) − log(c − x), minimised at c − 0.01, NaN beyond c: from x = 0 the
    # search extrapolates 1 → 5 (the loss falls 40-fold) → 21 (NaN). A stand-in loss set from
    # the last finite trial point would lie below the search's start and be taken as a point.
    c = 5.1
    x = torch.zeros(1, dtype=F64, requires_grad=True)

    def evaluate(probe):  # None for a non-finite loss, trial point or not
        x.grad = None
        loss = 100.0 * (c - x[0]) - torch.log(c - x[0])
        if not torch.isfinite(loss):
            return None
        loss.backward()
        return loss.detach()

    result = lbfgs(evaluate, [x], num_steps=100, lr=1.0, rtol=1e-10, gtol=1e-7)

    assert result.converged, result.message
    assert result.rejected > 0
    assert abs(float(x.detach()) - (c - 0.01)) < 1e-8


@DRIVERS
def test_lbfgs_stalls_on_a_kink_and_says_so(lbfgs):
    # |x − π/3| + (x − π/3)/2: the line search brackets the kink and finds no lower loss, while
    # the gradient (−0.5 left of it, 1.5 right of it and 0.5 at it in torch) never passes the
    # test: a stall, not a convergence
    x = torch.tensor([3.3], dtype=F64, requires_grad=True)
    kink = math.pi / 3
    result = lbfgs(
        closure(lambda v: ((v - kink).abs() + 0.5 * (v - kink)).sum(), [x]),
        [x],
        num_steps=500,
        lr=1.0,
        rtol=1e-15,
        gtol=1e-10,
    )

    assert not result.converged, result.message
    assert result.stalled
    assert result.num_steps < 500
    assert "stalled" in result.message
    assert abs(float(x.detach()) - kink) < 1e-3


@pytest.mark.parametrize(
    ("loss", "num_data", "expected"),
    [
        # |g|·max(|x|, 1) = (0.5·2, 3·1, 0.1·10) = (1, 3, 1): max 3, over max(|f|, N)
        (-4.0, 2.0, 3.0 / 4.0),  # |f| dominates
        (1.0, 10.0, 3.0 / 10.0),  # N dominates: a loss near zero is still "per data point"
        (0.25, 0.5, 3.0 / 1.0),  # neither exceeds 1
        (math.nan, 2.0, 3.0 / 2.0),  # a non-finite loss does not set the scale
    ],
)
def test_relative_gradient_formula(loss, num_data, expected):
    grad = torch.tensor([0.5, -3.0, 0.1], dtype=F64)
    x = torch.tensor([2.0, 0.5, -10.0], dtype=F64)
    assert relative_gradient(grad, x, loss, num_data) == pytest.approx(expected, rel=1e-15)


def test_relative_gradient_of_no_parameters_is_zero():
    empty = torch.zeros(0, dtype=F64)
    assert relative_gradient(empty, empty, 5.0, 1.0) == 0.0


# ----------------------------------------------------------------------------- Adam
CURVATURE = torch.tensor([4.0, 10.0, 20.0], dtype=F64)
OPTIMUM = torch.tensor([0.5, -1.0, 2.0], dtype=F64)


def quadratic(x):
    return 0.5 * (CURVATURE * (x - OPTIMUM) ** 2).sum()


def run_adam(num_steps, *, noise=0.0, seed=0, stochastic=False, lr=0.05, rtol=1e-6, gtol=1e-7):
    """Adam on :func:`quadratic` from 0, with seeded N(0, noise²) added to every gradient."""
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    generator = torch.Generator().manual_seed(seed)

    def evaluate(step):
        x.grad = None
        loss = quadratic(x)
        loss.backward()
        if noise:
            x.grad += noise * torch.randn(3, generator=generator, dtype=F64)
        return loss.detach()

    result = adam(evaluate, [x], num_steps=num_steps, lr=lr, rtol=rtol, gtol=gtol, num_data=1.0, stochastic=stochastic)
    return result, float((x.detach() - OPTIMUM).norm())


def test_adam_reaches_the_minimiser_of_a_convex_quadratic():
    result, error = run_adam(5000)
    assert result.converged, result.message
    assert "plateau" in result.message
    assert result.num_steps < 5000
    assert error < 1e-3


def test_adam_out_of_steps_is_not_converged():
    result, error = run_adam(20)
    assert not result.converged
    assert result.num_steps == 20
    assert "not converged" in result.message
    assert error > 0.1


def test_adam_polyak_average_beats_the_last_iterate_under_gradient_noise():
    # The same seeded run twice: stochastic=False keeps the last iterate, stochastic=True
    # replaces it by the average of the iterates of the last two windows once a plateau is
    # reached. The trajectories are identical, so only the averaging differs.
    averaged, last = [], []
    for seed in range(6):
        result, error = run_adam(2000, noise=1.0, seed=seed, stochastic=True, rtol=1e-4)
        if not result.converged:  # no plateau within the budget: nothing was averaged
            continue
        plain, plain_error = run_adam(2000, noise=1.0, seed=seed, stochastic=False, rtol=1e-4)
        assert plain.converged and plain.num_steps == result.num_steps
        averaged.append(error)
        last.append(plain_error)
    assert len(averaged) >= 2
    # The last iterate jitters by about lr·(noise / |g|) per step; the average of hundreds of
    # correlated iterates is several times closer.
    assert np.mean(averaged) < 0.5 * np.mean(last)
    assert max(averaged) < 0.03

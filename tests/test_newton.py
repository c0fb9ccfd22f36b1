"""pyro_mle.optim.newton against independent references.

References are computed without the module: scipy's Rosenbrock function, derivatives and
trust-exact optimiser, numpy's solve and lstsq, the NIST StRD certified Longley coefficients and
statsmodels' Logit. Losses are written in torch and differentiated with the module's helpers, whose
derivatives are themselves checked against scipy's closed forms.
"""

import math

import numpy as np
import pytest
import statsmodels.api as sm
import torch
import torch.nn.functional as F
from scipy import optimize, special
from statsmodels.datasets import longley

from pyro_mle.optim.newton import NewtonResult, hessian_from, hvp_from, newton, value_and_grad_from

F64 = torch.float64


def run(fn, x0, **kwargs) -> NewtonResult:
    return newton(value_and_grad_from(fn), x0, hessian=hessian_from(fn), **kwargs)


def relative_gradient(x, loss, grad):
    """Dennis & Schnabel's relative gradient, written out independently of the module."""
    x, grad = np.asarray(x, dtype=float), np.asarray(grad, dtype=float)
    return np.max(np.abs(grad) * np.maximum(np.abs(x), 1.0)) / max(abs(loss), 1.0)


def rosenbrock(x):
    """scipy.optimize.rosen, in torch."""
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


# ----------------------------------------------------------------------------- derivative helpers
def test_helpers_give_scipy_rosenbrock_derivatives():
    x = np.array([-1.2, 1.0, 0.3, 2.0, -0.7])
    v = np.array([0.5, -1.0, 2.0, 0.1, 1.5])
    xt = torch.tensor(x)
    loss, grad = value_and_grad_from(rosenbrock)(xt)
    assert float(loss) == pytest.approx(optimize.rosen(x), rel=1e-14)
    np.testing.assert_allclose(grad.numpy(), optimize.rosen_der(x), rtol=1e-13)
    np.testing.assert_allclose(hessian_from(rosenbrock)(xt).numpy(), optimize.rosen_hess(x), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(hvp_from(rosenbrock)(xt, torch.tensor(v)).numpy(), optimize.rosen_hess_prod(x, v))
    assert not xt.requires_grad


def test_hessian_of_a_linear_loss_is_zero():
    a = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    H = hessian_from(lambda x: a @ x)(torch.zeros(3, dtype=F64))
    assert H.shape == (3, 3) and not H.any()


# ----------------------------------------------------------------------------- Rosenbrock
def test_rosenbrock_2d_from_standard_start():
    result = run(rosenbrock, torch.tensor([-1.2, 1.0], dtype=F64))
    reference = optimize.minimize(
        optimize.rosen,
        [-1.2, 1.0],
        method="trust-exact",
        jac=optimize.rosen_der,
        hess=optimize.rosen_hess,
        options={"gtol": 1e-12},
    )
    assert result.converged, result.message
    np.testing.assert_allclose(result.x.numpy(), np.ones(2), rtol=0, atol=1e-8)
    np.testing.assert_allclose(result.x.numpy(), reference.x, rtol=0, atol=1e-8)
    assert result.loss == pytest.approx(optimize.rosen(result.x.numpy()), abs=1e-15)
    np.testing.assert_allclose(result.grad.numpy(), optimize.rosen_der(result.x.numpy()), atol=1e-12)
    assert result.min_eigenvalue > 0


@pytest.mark.parametrize(
    "start",
    [
        [1.3, 0.7, 0.8, 1.9, 1.2] * 2,  # scipy's tutorial start: the global minimum, ones
        [-1.2, 1.0] * 5,  # the standard start, repeated: a local minimum near (-0.99, 1, ..., 1)
    ],
)
def test_rosenbrock_10d_matches_trust_exact(start):
    result = run(rosenbrock, torch.tensor(start, dtype=F64))
    reference = optimize.minimize(
        optimize.rosen,
        start,
        method="trust-exact",
        jac=optimize.rosen_der,
        hess=optimize.rosen_hess,
        options={"gtol": 1e-10},
    )
    assert result.converged, result.message
    np.testing.assert_allclose(result.x.numpy(), reference.x, rtol=0, atol=1e-8)
    assert np.all(np.linalg.eigvalsh(optimize.rosen_hess(result.x.numpy())) > 0)  # a minimum
    if start[0] > 0:
        np.testing.assert_allclose(result.x.numpy(), np.ones(10), rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------- ill-conditioned problems
def test_ill_conditioned_quadratic_matches_solve_and_trust_exact():
    n = 20
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = Q @ np.diag(np.logspace(0, 10, n)) @ Q.T
    A = 0.5 * (A + A.T)
    b = rng.normal(size=n)
    At, bt = torch.tensor(A), torch.tensor(b)
    result = run(lambda x: 0.5 * x @ (At @ x) - bt @ x, torch.zeros(n, dtype=F64))
    reference = optimize.minimize(
        lambda x: 0.5 * x @ A @ x - b @ x,
        np.zeros(n),
        jac=lambda x: A @ x - b,
        hess=lambda x: A,
        method="trust-exact",
    )
    solution = np.linalg.solve(A, b)
    scale = np.linalg.norm(solution)
    # Both answers are accurate to about cond·eps = 2e-6 in the worst direction, not better.
    assert np.linalg.norm(result.x.numpy() - solution) / scale < 1e-6
    assert np.linalg.norm(result.x.numpy() - reference.x) / scale < 1e-6
    assert result.condition == pytest.approx(np.linalg.cond(A), rel=1e-3)
    assert result.min_eigenvalue == pytest.approx(1.0, rel=1e-6)


# NIST StRD, Longley: certified coefficients (intercept, GNPDEFL, GNP, UNEMP, ARMED, POP, YEAR).
LONGLEY_CERTIFIED = np.array(
    [
        -3482258.63459582,
        15.0618722713733,
        -0.358191792925910e-01,
        -2.02022980381683,
        -1.03322686717359,
        -0.511041056535807e-01,
        1829.15146461355,
    ]
)


@pytest.fixture(scope="module")
def longley_data():
    data = longley.load_pandas()
    X = np.column_stack([np.ones(len(data.exog)), data.exog.to_numpy(dtype=float)])  # unscaled
    return X, data.endog.to_numpy(dtype=float)


@pytest.mark.parametrize("loss_name", ["least squares", "normal nll"])
def test_longley_from_zero_matches_lstsq(longley_data, loss_name):
    X, y = longley_data
    Xt, yt = torch.tensor(X), torch.tensor(y)
    losses = {
        "least squares": lambda w: 0.5 * ((yt - Xt @ w) ** 2).sum(),
        "normal nll": lambda w: -torch.distributions.Normal(Xt @ w, 1.0).log_prob(yt).sum(),
    }
    result = run(losses[loss_name], torch.zeros(X.shape[1], dtype=F64))
    expected = np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(expected, LONGLEY_CERTIFIED, rtol=1e-9)  # the reference itself
    np.testing.assert_allclose(result.x.numpy(), expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(result.x.numpy(), LONGLEY_CERTIFIED, rtol=1e-6, atol=0)
    assert result.condition > 1e15
    assert result.condition == pytest.approx(np.linalg.cond(X.T @ X), rel=0.05)
    # Rounding puts a floor of about 1e-8 under the relative gradient here, above the default
    # 1e-9: the iteration stops when no step lowers the loss, and reports whether the test held.
    assert result.converged == (relative_gradient(result.x, result.loss, result.grad) <= 1e-9)


def test_longley_with_a_problem_sized_convergence_test(longley_data):
    X, y = longley_data
    Xt, yt = torch.tensor(X), torch.tensor(y)
    result = run(
        lambda w: 0.5 * ((yt - Xt @ w) ** 2).sum(),
        torch.zeros(X.shape[1], dtype=F64),
        converged=lambda x, loss, grad: relative_gradient(x, loss, grad) <= 1e-6,
    )
    assert result.converged, result.message
    np.testing.assert_allclose(result.x.numpy(), LONGLEY_CERTIFIED, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- logistic regression
def logistic_data(separable, seed=0, n=200):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    score = X @ np.array([0.3, 1.0, -0.5])
    if separable:
        return X, (score > 0).astype(float)
    return X, (rng.uniform(size=n) < 1 / (1 + np.exp(-score))).astype(float)


def logistic_loss(X, y):
    sign = torch.tensor(2 * y - 1)
    return lambda w: F.softplus(-sign * (torch.as_tensor(X, dtype=w.dtype) @ w)).sum()


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_logistic_regression_matches_statsmodels(dtype, rtol):
    X, y = logistic_data(separable=False)
    result = run(logistic_loss(X, y), torch.zeros(3, dtype=dtype))
    expected = sm.Logit(y, X).fit(disp=0, tol=1e-12).params
    assert result.x.dtype == dtype
    assert result.converged, result.message
    np.testing.assert_allclose(result.x.double().numpy(), expected, rtol=rtol)


def test_separable_logistic_regression_does_not_claim_a_false_optimum():
    """The MLE does not exist: the loss falls towards 0 as ||w|| → ∞.

    What happens: each Newton step lengthens w, the loss and gradient fall exponentially, and
    after about 30 steps the relative gradient max|g_i|·max(|w_i|, 1) / max(|f|, 1) drops under
    1e-9 with ||w|| in the hundreds. That is a true statement about the gradient (which is
    recomputed here independently), not a minimum: spotting separation is the caller's job,
    through the size of w or of the loss.
    """
    X, y = logistic_data(separable=True)
    loss = logistic_loss(X, y)
    for max_steps in (5, 200):
        result = run(loss, torch.zeros(3, dtype=F64), max_steps=max_steps)
        w = result.x.numpy()
        sign = 2 * y - 1
        grad = -X.T @ (sign * special.expit(-sign * (X @ w)))  # d/dw Σ log(1 + exp(-s xᵀw))
        np.testing.assert_allclose(result.grad.numpy(), grad, rtol=1e-8, atol=1e-300)
        assert result.converged is False or relative_gradient(w, result.loss, grad) <= 1e-9
        if max_steps == 5:
            assert not result.converged and "max_steps" in result.message
    assert result.loss < 1e-6 and np.linalg.norm(w) > 10


# ----------------------------------------------------------------------------- non-convex and non-finite
def test_indefinite_start_descends_to_a_minimum():
    result = run(lambda x: (x**4 - x**2).sum(), torch.tensor([0.1], dtype=F64))  # f''(0.1) < 0
    assert result.converged, result.message
    assert abs(result.x.item()) == pytest.approx(1 / math.sqrt(2), abs=1e-10)
    assert result.loss == pytest.approx(-0.25, abs=1e-15)
    assert result.min_eigenvalue == pytest.approx(4.0, rel=1e-8)  # f'' = 12x² - 2 = 4


@pytest.mark.parametrize("start", [[1.0, 0.0], [0.0, 0.0]])
def test_saddle_is_left_along_negative_curvature(start):
    """f = x² - y² + y⁴/2 has a saddle at 0 and minima at (0, ±1); y = 0 is invariant under
    Newton, so only a step along the negative-curvature direction reaches a minimum."""
    result = run(lambda v: v[0] ** 2 - v[1] ** 2 + 0.5 * v[1] ** 4, torch.tensor(start, dtype=F64))
    assert result.converged, result.message
    np.testing.assert_allclose(np.abs(result.x.numpy()), [0.0, 1.0], atol=1e-10)
    assert result.loss == pytest.approx(-0.5, abs=1e-15)
    assert result.min_eigenvalue == pytest.approx(2.0, rel=1e-8)


def test_non_finite_trial_losses_are_backtracked():
    # The full Newton step from 3 lands at -3, where log is nan; half of it at 0 (inf).
    result = run(lambda x: (x - torch.log(x)).sum(), torch.tensor([3.0], dtype=F64))
    assert result.converged, result.message
    assert result.x.item() == pytest.approx(1.0, abs=1e-9)  # relative gradient <= 1e-9, f''(1) = 1


def test_hand_written_value_and_grad_returning_floats():
    A = np.array([[3.0, 1.0], [1.0, 2.0]])
    b = np.array([1.0, -1.0])

    def value_and_grad(x):
        x = x.numpy()
        return float(0.5 * x @ A @ x - b @ x), torch.tensor(A @ x - b)

    result = newton(value_and_grad, torch.zeros(2, dtype=F64), hessian=lambda x: torch.tensor(A))
    assert result.converged and result.num_steps == 1
    np.testing.assert_allclose(result.x.numpy(), np.linalg.solve(A, b), rtol=1e-14)


# ----------------------------------------------------------------------------- dtype, callback, refusals
def test_float32_rosenbrock():
    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float32)
    result = run(rosenbrock, x0)
    assert result.converged, result.message
    assert result.x.dtype == torch.float32 and result.grad.dtype == torch.float32
    np.testing.assert_allclose(result.x.numpy(), np.ones(2), atol=1e-4)


def test_convergence_callback_is_honoured():
    calls = []

    def converged(x, loss, grad):
        calls.append((x.clone(), loss, grad.clone()))
        return len(calls) == 3

    result = run(rosenbrock, torch.tensor([-1.2, 1.0], dtype=F64), converged=converged)
    assert result.converged and result.num_steps == 2 and len(calls) == 3
    x, loss, grad = calls[-1]
    assert torch.equal(x, result.x) and loss == result.loss and torch.equal(grad, result.grad)
    assert isinstance(loss, float) and x.shape == grad.shape == (2,)
    assert loss == pytest.approx(optimize.rosen(x.numpy()), rel=1e-14)

    never = run(rosenbrock, torch.tensor([-1.2, 1.0], dtype=F64), converged=lambda *args: False, max_steps=40)
    assert not never.converged
    np.testing.assert_allclose(never.x.numpy(), np.ones(2), atol=1e-8)  # ran on to the optimum anyway


def test_x0_is_not_modified():
    x0 = torch.tensor([-1.2, 1.0], dtype=F64)
    result = run(rosenbrock, x0)
    assert torch.equal(x0, torch.tensor([-1.2, 1.0], dtype=F64))
    assert result.x.data_ptr() != x0.data_ptr()


@pytest.mark.parametrize(
    "x0, kwargs, match",
    [
        (torch.zeros(11, dtype=F64), {"max_params": 10}, "11 parameters, more than max_params=10"),
        (torch.zeros(2, 2, dtype=F64), {}, "flat"),
        (torch.zeros(2, dtype=torch.float16), {}, "float32 or float64"),
        (torch.zeros(2, dtype=F64), {"hessian": None}, "hessian_from"),
    ],
)
def test_refusals(x0, kwargs, match):
    kwargs = {"hessian": hessian_from(lambda x: (x**2).sum()), **kwargs}
    with pytest.raises(ValueError, match=match):
        newton(value_and_grad_from(lambda x: (x**2).sum()), x0, **kwargs)


def test_gradient_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 1\)"):
        newton(lambda x: (0.0, torch.zeros(2, 1)), torch.zeros(2, dtype=F64), hessian=lambda x: torch.eye(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_round_trip():
    x0 = torch.tensor([-1.2, 1.0], dtype=F64, device="cuda")
    result = run(rosenbrock, x0)
    assert result.x.device == x0.device and result.grad.device == x0.device
    np.testing.assert_allclose(result.x.cpu().numpy(), np.ones(2), atol=1e-8)

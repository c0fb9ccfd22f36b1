"""AsymmetricLaplace(quantile=q) is quantile regression (issue 13), on statsmodels' Engel data.

Reference: the exact linear programme of quantile regression (Koenker & Bassett 1978) solved by
scipy's HiGHS, cross-checked with statsmodels ``QuantReg``.
"""

import warnings

import numpy as np
import pyro
import pytest
import statsmodels.api as sm
import torch
from scipy import optimize

import pyro_mle
from pyro_mle.likelihoods import AsymmetricLaplace

QUANTILES = (0.1, 0.5, 0.9)


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def engel():
    d = sm.datasets.engel.load_pandas().data
    return d.income.to_numpy(), d.foodexp.to_numpy()


def quantreg_lp(X, y, q):
    """min Σ q·u⁺ + (1−q)·u⁻ subject to Xβ + u⁺ − u⁻ = y, u± ≥ 0."""
    n, p = X.shape
    c = np.r_[np.zeros(p), q * np.ones(n), (1 - q) * np.ones(n)]
    A = np.hstack([X, np.eye(n), -np.eye(n)])
    bounds = [(None, None)] * p + [(0, None)] * (2 * n)
    res = optimize.linprog(c, A_eq=A, b_eq=y, bounds=bounds, method="highs")
    assert res.status == 0
    return res.x[:p], res.fun


def head_nll(q, beta, x, y, scale=1.0):
    f = torch.as_tensor(beta[0] + beta[1] * x)
    return AsymmetricLaplace(quantile=q, scale=scale).nll(f, torch.as_tensor(y)).sum().item()


@pytest.mark.parametrize("q", QUANTILES)
def test_the_quantile_regression_is_the_minimiser_of_the_head_nll(q):
    x, y = engel()
    X = sm.add_constant(x)
    beta, rho = quantreg_lp(X, y, q)
    with warnings.catch_warnings():  # QuantReg's IRLS warns of cycles on Engel at q = 0.1, 0.9
        warnings.simplefilter("ignore")
        sm_beta = sm.QuantReg(y, X).fit(q=q, max_iter=5000, p_tol=1e-10).params
    np.testing.assert_allclose(sm_beta, beta, rtol=1e-2)  # the two references agree

    # the head's NLL at scale 1 is the pinball objective plus n·(−log q(1−q))
    n = len(y)
    assert head_nll(q, beta, x, y) == pytest.approx(rho - n * np.log(q * (1 - q)), rel=1e-12)
    # and the LP solution is its minimiser: no direction lowers it
    best = head_nll(q, beta, x, y)
    rng = np.random.default_rng(0)
    for d in rng.normal(size=(40, 2)) * np.array([1.0, 1e-3]):
        for eps in (1e-3, 1e-1, 10.0):
            assert head_nll(q, beta + eps * d, x, y) >= best - 1e-9


@pytest.mark.parametrize("q", QUANTILES)
def test_fit_equals_quantile_regression(q):
    x, y = engel()
    beta, _ = quantreg_lp(sm.add_constant(x), y, q)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def model(x, y=None):
        a = pyro.param("a", x.new_tensor(0.0))
        b = pyro.param("b", x.new_tensor(0.0))
        return AsymmetricLaplace(quantile=q, scale=1.0)("y", a + b * x, obs=y)

    fit = pyro_mle.fit(model, xt, yt)
    assert fit.converged
    np.testing.assert_allclose([fit.params["a"].item(), fit.params["b"].item()], beta, rtol=1e-6)

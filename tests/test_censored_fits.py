"""Censored fits against independent implementations (issue 13).

* Tobit: a Normal left-censored at 0, against the Tobit likelihood written out with scipy's
  ``norm.logcdf``/``logpdf`` and maximised by ``scipy.optimize.minimize``.
* Survival: a Weibull accelerated-failure-time model on lifelines' bundled Rossi recidivism
  data (432 released prisoners, 318 right-censored), against lifelines ``WeibullAFTFitter``.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import optimize, stats

import pyro_mle
from pyro_mle.likelihoods import Censored, Normal, Weibull

F64 = torch.float64


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def tobit_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = np.maximum(0.5 + 1.5 * x + rng.normal(scale=1.2, size=n), 0.0)  # ~40 % at the bound
    return x, y


def tobit_nll(theta, x, y):
    a, b, log_s = theta
    d = stats.norm(a + b * x, np.exp(log_s))
    return -np.where(y <= 0, d.logcdf(0.0), d.logpdf(y)).sum()


def test_tobit_fit_equals_the_hand_coded_tobit_likelihood():
    x, y = tobit_data()
    assert 0.25 < (y == 0).mean() < 0.6
    ref = optimize.minimize(tobit_nll, [0.0, 0.0, 0.0], args=(x, y), method="BFGS", options={"gtol": 1e-9})

    def model(x, y=None):
        a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 10.0))
        b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 10.0))
        scale = pyro.sample("scale", dist.LogNormal(x.new_tensor(0.0), 2.0))
        return Censored(Normal(scale=scale), lower=0.0)("y", a + b * x, obs=y)

    fit = pyro_mle.fit(model, torch.as_tensor(x), torch.as_tensor(y))
    got = [fit.params["a"].item(), fit.params["b"].item(), np.log(fit.params["scale"].item())]
    assert fit.converged
    np.testing.assert_allclose(got, ref.x, atol=1e-5)
    assert fit.nll == pytest.approx(ref.fun, rel=1e-9)


COVARIATES = ["fin", "age", "prio"]


def rossi():
    from lifelines.datasets import load_rossi

    return load_rossi()[["week", "arrest", *COVARIATES]]


def test_weibull_right_censored_fit_equals_lifelines_weibull_aft():
    from lifelines import WeibullAFTFitter

    df = rossi()
    ref = WeibullAFTFitter().fit(df, duration_col="week", event_col="arrest")
    X = torch.tensor(df[COVARIATES].to_numpy(), dtype=F64)
    time = torch.tensor(df["week"].to_numpy(), dtype=F64)
    censored = torch.tensor(1 - df["arrest"].to_numpy())  # 1: right-censored at `week`

    def model(X, y=None):
        b0 = pyro.param("b0", X.new_tensor(4.0))
        b = pyro.param("b", X.new_zeros(X.shape[1]))
        log_k = pyro.param("log_k", X.new_tensor(0.0))
        # λ = exp(b0 + Xb): the log link of Weibull's scale; the shape k is shared by all rows
        head = Censored(Weibull(concentration=log_k.exp()), censoring=censored)
        return head("time", b0 + X @ b, obs=y)

    fit = pyro_mle.fit(model, X, time)
    assert fit.converged
    lam = ref.params_["lambda_"]
    expected = np.r_[lam["Intercept"], [lam[c] for c in COVARIATES], ref.params_["rho_"]["Intercept"]]
    got = np.r_[fit.params["b0"].item(), fit.params["b"].numpy(), fit.params["log_k"].item()]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert fit.nll == pytest.approx(-ref.log_likelihood_, rel=1e-7)

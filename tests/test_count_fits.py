"""Zero-inflated Poisson fit against statsmodels ``ZeroInflatedPoisson`` (issue 13), on
simulated visits: a Poisson count with a log-linear mean, and structural zeros whose log-odds
are linear in a second covariate."""

import warnings

import numpy as np
import pyro
import pytest
import statsmodels.api as sm
import torch
from statsmodels.discrete.count_model import ZeroInflatedPoisson as SMZeroInflatedPoisson

import pyro_mle
from pyro_mle.likelihoods import ZeroInflatedPoisson

F64 = torch.float64


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def zip_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=n), rng.normal(size=n)
    structural = rng.random(n) < 1 / (1 + np.exp(-(-0.3 + 1.0 * z)))
    y = np.where(structural, 0, rng.poisson(np.exp(0.7 + 0.5 * x)))
    return x, z, y.astype(float)


def test_zero_inflated_poisson_fit_equals_statsmodels():
    x, z, y = zip_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' optimizer chatter
        ref = SMZeroInflatedPoisson(y, sm.add_constant(x), exog_infl=sm.add_constant(z), inflation="logit").fit(
            method="bfgs", maxiter=5000, gtol=1e-10, disp=False
        )
    infl_const, infl_z, const, slope = ref.params

    def model(x, z, y=None):
        a, b = pyro.param("a", x.new_tensor(0.0)), pyro.param("b", x.new_tensor(0.0))
        c, d = pyro.param("c", x.new_tensor(0.0)), pyro.param("d", x.new_tensor(0.0))
        f = torch.stack([a + b * x, c + d * z], -1)  # log-rate, logit of a structural zero
        return ZeroInflatedPoisson()("y", f, obs=y)

    fit = pyro_mle.fit(model, torch.as_tensor(x), torch.as_tensor(z), torch.as_tensor(y))
    assert fit.converged
    got = [fit.params[k].item() for k in "abcd"]
    np.testing.assert_allclose(got, [const, slope, infl_const, infl_z], atol=1e-5)
    assert fit.nll == pytest.approx(-ref.llf, rel=1e-9)

"""Ordinal fits against statsmodels ``OrderedModel`` (issue 13), logit and probit, on the
marriage ratings (1–5) of statsmodels' bundled Fair affairs survey (6,366 women)."""

import warnings

import numpy as np
import pyro
import pytest
import statsmodels.api as sm
import torch
from pyro.distributions import constraints
from statsmodels.miscmodels.ordinal_model import OrderedModel

import pyro_mle
from pyro_mle.likelihoods import OrderedLogistic, OrderedProbit

COLUMNS = ["age", "yrs_married", "children", "religious"]


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def fair():
    d = sm.datasets.fair.load_pandas().data
    X = d[COLUMNS].to_numpy()
    X = (X - X.mean(0)) / X.std(0)  # standardised, for both fits alike
    return X, d["rate_marriage"].to_numpy().astype(int) - 1  # levels 0..4


@pytest.mark.parametrize(("head", "distr"), [(OrderedLogistic, "logit"), (OrderedProbit, "probit")])
def test_ordinal_fit_equals_statsmodels_ordered_model(head, distr):
    X, y = fair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = OrderedModel(y, X, distr=distr).fit(method="bfgs", maxiter=5000, gtol=1e-10, disp=False)
    k = X.shape[1]
    beta = ref.params[:k]
    cuts = ref.model.transform_threshold_params(ref.params)[1:-1]  # c1 and exp-increments → cut points

    def model(X, y=None):
        b = pyro.param("b", X.new_zeros(X.shape[1]))
        c = pyro.param("c", torch.arange(4.0, dtype=X.dtype) - 1.5, constraint=constraints.ordered_vector)
        return head(num_classes=5, cutpoints=c)("rating", X @ b, obs=y)

    fit = pyro_mle.fit(model, torch.as_tensor(X), torch.as_tensor(y, dtype=torch.float64))
    assert fit.converged
    np.testing.assert_allclose(fit.params["b"].numpy(), beta, atol=1e-5)
    np.testing.assert_allclose(fit.params["c"].numpy(), cuts, atol=1e-5)
    assert fit.nll == pytest.approx(-ref.llf, rel=1e-9)

"""The issue-13 model files against independent implementations, on their default data in
float64: censored survival = lifelines ``WeibullAFTFitter``, zero-inflated counts = statsmodels
``ZeroInflatedPoisson``, ordinal ratings = statsmodels ``OrderedModel`` (logit), quantile
regression = statsmodels ``QuantReg`` (q = 0.9). The generic
model-file suite (tests/test_models.py) runs over them too."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pytest
import statsmodels.api as sm
from statsmodels.discrete.count_model import ZeroInflatedPoisson
from statsmodels.miscmodels.ordinal_model import OrderedModel

import pyro_mle

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def fit_model(name):
    spec = importlib.util.spec_from_file_location(f"issue13_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x, y = (t.double() for t in module.load_data())
    return pyro_mle.fit(module.model, x, y), x.numpy(), y.numpy()


def test_censored_survival_model_equals_lifelines():
    from lifelines import WeibullAFTFitter

    fit, x, y = fit_model("censored_survival")
    assert 0.2 < x[:, -1].mean() < 0.5  # a real share of censored rows
    df = pd.DataFrame({"load": x[:, 0], "coating": x[:, 1], "time": y, "event": 1 - x[:, 2]})
    ref = WeibullAFTFitter().fit(df, duration_col="time", event_col="event")
    lam = ref.params_["lambda_"]
    expected = [lam["load"], lam["coating"], lam["Intercept"], np.exp(ref.params_["rho_"]["Intercept"])]
    got = [*fit.params["w"].numpy(), fit.params["b"].item(), fit.params["k"].item()]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert fit.nll == pytest.approx(-ref.log_likelihood_, rel=1e-7)


def test_zero_inflated_counts_model_equals_statsmodels():
    fit, x, y = fit_model("zero_inflated_counts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ZeroInflatedPoisson(
            y, sm.add_constant(x[:, 0]), exog_infl=sm.add_constant(x[:, 1]), inflation="logit"
        ).fit(method="bfgs", maxiter=5000, gtol=1e-10, disp=False)
    c, d, a, b = ref.params
    np.testing.assert_allclose([fit.params[k].item() for k in "abcd"], [a, b, c, d], atol=1e-5)
    assert fit.nll == pytest.approx(-ref.llf, rel=1e-9)


def test_ordinal_ratings_model_equals_statsmodels():
    fit, x, y = fit_model("ordinal_ratings")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = OrderedModel(y.astype(int), x, distr="logit").fit(method="bfgs", maxiter=5000, gtol=1e-10, disp=False)
    np.testing.assert_allclose(fit.params["w"].numpy(), ref.params[:2], atol=1e-5)
    np.testing.assert_allclose(
        fit.params["c"].numpy(), ref.model.transform_threshold_params(ref.params)[1:-1], atol=1e-5
    )
    assert fit.nll == pytest.approx(-ref.llf, rel=1e-9)


def test_quantile_regression_model_equals_statsmodels_quantreg():
    fit, x, y = fit_model("quantile_regression")
    assert fit.converged, fit.message
    with warnings.catch_warnings():  # QuantReg's IRLS may warn of cycles
        warnings.simplefilter("ignore")
        reference = sm.QuantReg(y, sm.add_constant(x)).fit(q=0.9, max_iter=5000, p_tol=1e-10).params
    got = [fit.params["intercept"].item(), fit.params["slope"].item()]
    np.testing.assert_allclose(got, reference, rtol=1e-5)

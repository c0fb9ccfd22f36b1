"""Every Pyro modelling style through the converter, checked against ArviZ's own NumPyro
converter (``arviz_base.from_numpyro``) on the equivalent NumPyro model, fed the same draws,
and against scipy.

NumPyro (with JAX) is a test-only reference: the draws of a short NumPyro run are replayed
through the Pyro program, so both trees describe the same posterior draws."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS
from scipy import stats

import pyro_mle
from pyro_mle.diagnostics import DiagnosticWarning

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
numpyro = pytest.importorskip("numpyro")
nd = pytest.importorskip("numpyro.distributions")
from arviz_base import from_numpyro  # noqa: E402

F64 = torch.float64
Y8 = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
SIGMA8 = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])


def eight_schools(J, sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=F64)))
    with pyro.plate("school", J):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_numpyro(J, sigma, y=None):
    mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
    with numpyro.plate("school", J):
        theta_tilde = numpyro.sample("theta_tilde", nd.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", nd.Normal(theta, sigma), obs=y)


def _numpyro_run(model, *args, num=40, **kwargs):
    from numpyro.infer import MCMC as NMCMC
    from numpyro.infer import NUTS as NNUTS

    mcmc = NMCMC(NNUTS(model), num_warmup=60, num_samples=num, num_chains=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), *args, **kwargs)
    return mcmc


def _as_posterior(mcmc, model, args, kwargs=None, latent=None):
    draws = mcmc.get_samples(group_by_chain=True)
    samples = {k: torch.tensor(np.array(v), dtype=F64) for k, v in draws.items() if k in latent}
    return pyro_mle.Posterior("nuts", samples, {}, {}, model, args, dict(kwargs or {}))


@pytest.fixture(scope="module")
def eight_pair():
    ref_mcmc = _numpyro_run(eight_schools_numpyro, 8, SIGMA8, y=Y8)
    ref = from_numpyro(ref_mcmc, log_likelihood=True)
    post = _as_posterior(
        ref_mcmc, eight_schools, (8, torch.tensor(SIGMA8), torch.tensor(Y8)), latent=("mu", "tau", "theta_tilde")
    )
    return ref, pyro_mle.to_datatree(post)


def test_eight_schools_deterministic_matches_from_numpyro(eight_pair, same_groups):
    ref, dt = eight_pair
    same_groups(dt, ref)
    assert "theta" not in dt["observed_data"] and "theta" not in dt["log_likelihood"]
    assert dt["posterior"].attrs["inference_library"] == "pyro"
    assert dt["posterior"].attrs["inference_library_version"] == pyro.__version__
    assert "subsampled" not in dt.attrs  # a plate is not a minibatch


def test_eight_schools_log_likelihood_equals_scipy(eight_pair):
    _, dt = eight_pair
    theta = dt["posterior"]["theta"].values
    ref = stats.norm(theta, SIGMA8).logpdf(Y8)
    np.testing.assert_allclose(dt["log_likelihood"]["obs"].values, ref, rtol=1e-12)
    import arviz_stats as azs

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        assert np.isfinite(azs.loo(dt).elpd)


def test_raw_mcmc_with_a_deterministic_converts():
    pyro.set_rng_seed(1)
    mcmc = MCMC(NUTS(eight_schools), num_samples=30, warmup_steps=30, num_chains=1, disable_progbar=True)
    mcmc.run(8, torch.tensor(SIGMA8), torch.tensor(Y8))
    dt = pyro_mle.to_datatree(mcmc, predictive=True)
    post = dt["posterior"]
    assert post["theta"].dims == ("chain", "draw", "school")
    np.testing.assert_allclose(
        post["theta"].values, post["mu"].values[..., None] + post["tau"].values[..., None] * post["theta_tilde"].values
    )
    assert set(dt["posterior_predictive"].data_vars) == {"obs"}
    assert dt["posterior_predictive"]["obs"].shape == (1, 30, 8)


# ----------------------------------------------------------------------- missing data

N_MISS = 12
MISSING = np.array([2, 5, 9])


def _missing_data():
    g = np.random.default_rng(4)
    x = g.normal(size=N_MISS)
    y = 1.0 + 2.0 * x + 0.5 * g.normal(size=N_MISS)
    y[MISSING] = np.nan
    return x, y


def missing_model(x, y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=F64), 5.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=F64), 5.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(a + b * x, 0.5), obs=y, obs_mask=~torch.isnan(y))


def test_masked_observations_are_left_out_and_nan_is_accepted():
    x, y = _missing_data()
    tx, ty = torch.tensor(x), torch.tensor(y)  # NaN where the mask drops the row
    g = torch.Generator().manual_seed(0)
    draws = {
        "a": 1.0 + 0.1 * torch.randn(1, 30, generator=g, dtype=F64),
        "b": 2.0 + 0.1 * torch.randn(1, 30, generator=g, dtype=F64),
        "y_unobserved": torch.randn(1, 30, N_MISS, generator=g, dtype=F64),
    }
    post = pyro_mle.Posterior("nuts", draws, {}, {}, missing_model, (tx, ty), {})
    dt = pyro_mle.to_datatree(post)
    kept = np.setdiff1d(np.arange(N_MISS), MISSING)
    ll = dt["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "y_observed")
    assert list(ll["y_observed"].values) == list(kept)  # the coordinates say which rows are data
    a, b = draws["a"].numpy()[..., None], draws["b"].numpy()[..., None]
    ref = stats.norm(a + b * x[kept], 0.5).logpdf(y[kept])
    np.testing.assert_allclose(ll.values, ref, rtol=1e-12)
    np.testing.assert_array_equal(dt["observed_data"]["y"].values, y[kept])
    assert dt["posterior_predictive"]["y"].shape == (1, 30, len(kept))
    # the imputed data: observed rows are the data, missing rows the y_unobserved draws
    imputed = dt["posterior"]["y"].values
    np.testing.assert_array_equal(imputed[..., kept], np.broadcast_to(y[kept], imputed[..., kept].shape))
    np.testing.assert_array_equal(imputed[..., MISSING], draws["y_unobserved"].numpy()[..., MISSING])
    import arviz_stats as azs

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        elpd = azs.loo(dt)
    assert np.isfinite(elpd.elpd) and elpd.n_data_points == len(kept)


def test_nan_at_an_unmasked_row_is_still_refused():
    x, y = _missing_data()
    mask = torch.ones(N_MISS, dtype=torch.bool)  # claims every row is observed
    mask[MISSING[1:]] = False

    def model(x, y):
        a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=F64), 5.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(a + x, 0.5), obs=y, obs_mask=mask)

    draws = {"a": torch.zeros(1, 3, dtype=F64), "y_unobserved": torch.zeros(1, 3, N_MISS, dtype=F64)}
    post = pyro_mle.Posterior("nuts", draws, {}, {}, model, (torch.tensor(x), torch.tensor(y)), {})
    with pytest.raises(ValueError, match="y_observed"):
        pyro_mle.to_datatree(post)


# ------------------------------------------------------------------------ factor sites

CENSOR = 2.0


def _censored_data():
    g = np.random.default_rng(7)
    t = g.exponential(1.5, size=20)
    censored = t > CENSOR
    return np.minimum(t, CENSOR), censored


def censored_model(t, censored):
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=F64), 2.0))
    with pyro.plate("units", t.shape[0]):
        with pyro.poutine.mask(mask=~censored):
            pyro.sample("t", dist.Exponential(rate), obs=t)
        # right-censored units: log S(c) = -rate * c, written by hand
        pyro.factor("censored", torch.where(censored, -rate * t, torch.zeros_like(t)))


def _censored_posterior():
    t, c = _censored_data()
    rate = torch.linspace(0.4, 1.2, 25, dtype=F64).reshape(1, 25)
    return pyro_mle.Posterior("nuts", {"rate": rate}, {}, {}, censored_model, (torch.tensor(t), torch.tensor(c)), {})


def test_a_folded_factor_makes_one_observation_per_unit():
    t, c = _censored_data()
    post = _censored_posterior()
    dt = pyro_mle.to_datatree(post, log_likelihood={"t": ["t", "censored"]})
    rate = post.samples["rate"].numpy()[..., None]
    ref = np.where(c, stats.expon(scale=1 / rate).logsf(t), stats.expon(scale=1 / rate).logpdf(t))
    np.testing.assert_allclose(dt["log_likelihood"]["t"].values, ref, rtol=1e-12)
    assert set(dt["log_likelihood"].data_vars) == {"t"}
    assert "censored" not in dt["posterior_predictive"] and "censored" not in dt["observed_data"]


def test_an_unfolded_factor_is_left_out_with_a_note():
    post = _censored_posterior()
    with pytest.warns(DiagnosticWarning, match=r"log_likelihood=\{'t': \['t', 'censored'\]\}"):
        dt = pyro_mle.to_datatree(post)
    assert set(dt["log_likelihood"].data_vars) == {"t"}
    assert dt["log_likelihood"]["t"].sizes["t_observed"] == int((~_censored_data()[1]).sum())
    assert list(dt.attrs["factor_sites"]) == ["censored"]


def test_a_bad_fold_names_the_sites():
    post = _censored_posterior()
    with pytest.raises(ValueError, match=r"\['cens'\] which is not an observed or factor site"):
        pyro_mle.to_datatree(post, log_likelihood={"t": ["t", "cens"]})


# ------------------------------------------------------------- prior and predictions groups


def regression(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
    with pyro.plate("data", X.shape[0]):
        mu = pyro.deterministic("mu", X @ w)
        pyro.sample("y", dist.Normal(mu, s), obs=y)


@pytest.fixture(scope="module")
def regression_tree():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(15, 2, generator=g, dtype=F64)
    y = X @ torch.tensor([1.0, -1.0], dtype=F64) + 0.3 * torch.randn(15, generator=g, dtype=F64)
    X_new = torch.randn(4, 2, generator=g, dtype=F64)
    draws = {
        "w": torch.tensor([1.0, -1.0], dtype=F64) + 0.05 * torch.randn(2, 20, 2, generator=g, dtype=F64),
        "s": 0.3 + 0.01 * torch.rand(2, 20, generator=g, dtype=F64),
    }
    post = pyro_mle.Posterior("nuts", draws, {}, {}, regression, (X, y), {})
    dt = pyro_mle.to_datatree(post, prior=200, predictions=(X_new,))
    return dt, post, X, X_new


def test_prior_groups_hold_prior_draws(regression_tree):
    dt, _, X, _ = regression_tree
    prior = dt["prior"]
    assert set(prior.data_vars) == {"w", "s", "mu"} and set(dt["prior_predictive"].data_vars) == {"y"}
    assert prior["w"].dims == ("chain", "draw", "w_dim_0") and prior["w"].shape == (1, 200, 2)
    assert prior["mu"].dims == ("chain", "draw", "data")
    assert dt["prior_predictive"]["y"].dims == ("chain", "draw", "data")
    # HalfNormal(1) prior: a Kolmogorov-Smirnov test against scipy's distribution
    assert stats.kstest(prior["s"].values.ravel(), stats.halfnorm().cdf).pvalue > 1e-3
    np.testing.assert_allclose(prior["mu"].values[0], prior["w"].values[0] @ X.numpy().T, rtol=1e-12)


def test_predictions_groups_at_new_inputs(regression_tree):
    dt, post, _, X_new = regression_tree
    pred = dt["predictions"]["y"]
    assert pred.dims == ("chain", "draw", "data") and pred.shape == (2, 20, 4)
    assert dt["predictions_constant_data"]["X"].dims == ("data", "X_dim_1")
    np.testing.assert_array_equal(dt["predictions_constant_data"]["X"].values, X_new.numpy())
    # standardised residuals against each draw's own mean and scale are standard normal
    w, s = post.samples["w"].numpy(), post.samples["s"].numpy()
    z = (pred.values - w @ X_new.numpy().T) / s[..., None]
    assert stats.kstest(z.ravel(), stats.norm().cdf).pvalue > 1e-3
    assert dt["predictions"].attrs["inference_library"] == "pyro"


def test_predictions_accept_keywords_and_pred_dims(regression_tree):
    _, post, _, X_new = regression_tree
    dt = pyro_mle.to_datatree(post, predictions={"X": X_new}, pred_dims={"y": ["school"]}, log_likelihood=False)
    assert dt["predictions"]["y"].dims == ("chain", "draw", "school")
    with pytest.raises(TypeError, match=r"predictions=\(x_new,\)"):
        pyro_mle.to_datatree(post, predictions=[X_new])


def test_posterior_predict_can_return_a_datatree():
    """Posterior.predict(x_new, datatree=True): the predictions groups, dims from the plate, and
    draws that are the likelihood at each posterior draw (y = w·x + N(0, 0.3²) at x = 1)."""
    x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    y = 2 * x + 0.3 * torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
        with pyro.plate("row", len(x)):
            pyro.sample("y", dist.Normal(w * x, 0.3), obs=y)

    post = pyro_mle.posterior(model, x, y, method="laplace", num_samples=400, progress=False)
    tree = post.predict(torch.tensor([0.0, 1.0], dtype=torch.float64), datatree=True)
    assert {"predictions", "predictions_constant_data"} <= set(tree.children)
    draws = tree["predictions"]["y"]
    assert draws.dims == ("chain", "draw", "row") and draws.sizes["row"] == 2
    w = post.samples["w"].reshape(-1)
    spread = math.sqrt(float(w.var()) + 0.3**2) / math.sqrt(w.numel())
    assert abs(float(draws.sel(row=1).mean()) - float(w.mean())) < 5 * spread


def test_fit_predict_can_return_a_datatree():
    """Fit.predict(x_new, datatree=True): the likelihood at the estimate as the predictions
    group (num_samples draws, marked a point estimate) and x_new as predictions_constant_data;
    the draws at x = 1 are N(ŵ, 0.3²) with ŵ the least-squares slope (numpy)."""
    x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    y = 2 * x + 0.3 * torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def model(x, y=None):
        w = pyro.param("w", torch.tensor(0.0, dtype=torch.float64))
        with pyro.plate("row", len(x)):
            pyro.sample("y", dist.Normal(w * x, 0.3), obs=y)

    fit = pyro_mle.fit(model, x, y)
    x_new = torch.tensor([0.0, 1.0], dtype=torch.float64)
    tree = fit.predict(x_new, datatree=True, num_samples=400, seed=1)
    draws = tree["predictions"]["y"]
    assert draws.dims == ("chain", "draw", "row") and draws.shape == (1, 400, 2)
    assert tree["predictions"].attrs["point_estimate"] == "mle"
    np.testing.assert_array_equal(tree["predictions_constant_data"]["x"].values, x_new.numpy())
    w_hat = float(np.linalg.lstsq(x.numpy()[:, None], y.numpy(), rcond=None)[0][0])
    assert stats.kstest(draws.sel(row=1).values.ravel(), stats.norm(w_hat, 0.3).cdf).pvalue > 1e-3
    assert stats.kstest(draws.sel(row=0).values.ravel(), stats.norm(0.0, 0.3).cdf).pvalue > 1e-3
    again = fit.predict(x_new, datatree=True, num_samples=400, seed=1)
    np.testing.assert_array_equal(again["predictions"]["y"].values, draws.values)

"""The Pyro → ArviZ 1.x converter: groups, dims from plates, and a pointwise log-likelihood
that is never silently missing."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from pyro.infer import MCMC, NUTS
from scipy import special, stats

import pyro_mle
from pyro_mle.likelihoods import Bernoulli, Normal

N, D, SIGMA = 40, 2, 0.7


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([0.8, -1.5], dtype=torch.float64) + SIGMA * torch.randn(N, generator=g, dtype=torch.float64)
    z = (torch.rand(N, generator=g, dtype=torch.float64) < torch.sigmoid(X[:, 0])).double()
    return X, y, z


def matmul_model(X, y=None):
    """The case the old ArviZ converter dropped: ``X @ w`` does not broadcast over draws."""
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
    Normal(scale=SIGMA)("y", X @ w, obs=y)


def plate_model(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), SIGMA), obs=y)


def two_sites(X, y=None, z=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=X.dtype), 1.0))
    with pyro.plate("rows", X.shape[0]):
        mean = (X * w).sum(-1)
        Normal(scale=SIGMA)("y", mean, obs=y)
        Bernoulli()("z", b + X[..., 0], obs=z)


def _run(model, *args, **kwargs):
    return pyro_mle.posterior(model, *args, num_samples=150, warmup=150, chains=2, seed=0, diagnose=False, **kwargs)


@pytest.fixture(scope="module")
def matmul_dt(data):
    X, y, _ = data
    return pyro_mle.to_datatree(_run(matmul_model, X, y))


@pytest.mark.parametrize("model", [matmul_model, plate_model])
def test_log_likelihood_sums_to_the_total_per_draw(model, data):
    X, y, _ = data
    dt = pyro_mle.to_datatree(_run(model, X, y))
    expected_method = "vmap" if model is matmul_model else "vectorised"
    assert dt.attrs["log_likelihood_method"] == expected_method
    w = dt["posterior"]["w"].values.reshape(-1, D)
    ll = dt["log_likelihood"]["y"].values.reshape(len(w), N)
    ref = stats.norm((w @ X.numpy().T), SIGMA).logpdf(y.numpy())  # (draws, N), from scipy
    np.testing.assert_allclose(ll, ref, rtol=1e-10)
    np.testing.assert_allclose(ll.sum(-1), ref.sum(-1), rtol=1e-10)


def test_two_observed_sites_each_get_a_log_likelihood(data):
    X, y, z = data
    dt = pyro_mle.to_datatree(_run(two_sites, X, y, z))
    assert set(dt["log_likelihood"].data_vars) == {"y", "z"}
    w = dt["posterior"]["w"].values.reshape(-1, D)
    b = dt["posterior"]["b"].values.reshape(-1)
    f = b[:, None] + X[:, 0].numpy()[None, :]
    ref_z = z.numpy() * special.log_expit(f) + (1 - z.numpy()) * special.log_expit(-f)
    np.testing.assert_allclose(dt["log_likelihood"]["z"].values.reshape(-1, N), ref_z, rtol=1e-10)
    ref_y = stats.norm(w @ X.numpy().T, SIGMA).logpdf(y.numpy())
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values.reshape(-1, N), ref_y, rtol=1e-10)
    assert dt["log_likelihood"]["z"].dims == ("chain", "draw", "rows")


def test_groups_and_dims_come_from_plates(matmul_dt):
    dt = matmul_dt
    assert {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "constant_data",
        "sample_stats",
    } <= set(dt.children)
    assert dt["posterior"]["w"].dims == ("chain", "draw", "w_dim_0")
    assert dt["observed_data"]["y"].dims == ("y_obs",)  # the plate the likelihood head opened
    assert dt["posterior_predictive"]["y"].dims == ("chain", "draw", "y_obs")
    assert dt["constant_data"]["X"].dims == ("y_obs", "X_dim_1")
    assert dt["sample_stats"]["diverging"].dtype == bool


def test_arviz_functions_run_without_warnings(matmul_dt):
    import arviz_plots as azp
    import arviz_stats as azs
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a high Pareto k is a property of the data and of the draws (one influential row here,
        # k near the threshold for 300 draws, above or below it by the seed), not of the tree
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        summary = azs.summary(matmul_dt)
        assert {"w[0]", "w[1]"} <= set(summary.index)
        azs.ess(matmul_dt)
        azs.rhat(matmul_dt)
        elpd = azs.loo(matmul_dt)
        assert np.isfinite(elpd.elpd)
        azs.loo_pit(matmul_dt)
        azp.plot_dist(matmul_dt, backend="matplotlib")
        azp.plot_ppc_dist(matmul_dt, backend="matplotlib")


def test_raw_pyro_mcmc_converts(data):
    X, y, _ = data
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(matmul_model), num_samples=50, warmup_steps=50, num_chains=1, disable_progbar=True)
    mcmc.run(X, y)
    dt = pyro_mle.to_datatree(mcmc)
    assert dt["posterior"]["w"].shape == (1, 50, D)
    assert dt["log_likelihood"]["y"].shape == (1, 50, N)
    assert "diverging" in dt["sample_stats"]


def test_coords_and_dims_override(data):
    X, y, _ = data
    post = _run(matmul_model, X, y)
    dt = pyro_mle.to_datatree(post, dims={"w": ["feature"]}, coords={"feature": ["age", "income"]})
    assert dt["posterior"]["w"].dims == ("chain", "draw", "feature")
    assert list(dt["posterior"]["feature"].values) == ["age", "income"]


def test_netcdf_round_trip(matmul_dt, tmp_path):
    path = tmp_path / "fit.nc"
    matmul_dt.to_netcdf(path)
    back = xr.open_datatree(path)
    xr.testing.assert_allclose(back["log_likelihood"].to_dataset(), matmul_dt["log_likelihood"].to_dataset())
    xr.testing.assert_allclose(back["posterior"].to_dataset(), matmul_dt["posterior"].to_dataset())
    back.close()


def test_unknown_result_type_is_refused():
    with pytest.raises(TypeError, match="cannot convert a dict"):
        pyro_mle.to_datatree({"w": 1})


# ----------------------------------------------------------------- replays that must not drift


def scaled_model(X, y=None):
    """A noise scale that is a pyro.param: replays must use its current value."""
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
    s = pyro.param("s", torch.tensor(1.0, dtype=X.dtype), constraint=dist.constraints.positive)
    Normal(scale=s)("y", X @ w, obs=y)


def test_replays_use_the_current_param_store(data):
    X, y, _ = data
    pyro.clear_param_store()
    pyro.param("s", torch.tensor(0.25, dtype=torch.float64), constraint=dist.constraints.positive)
    post = pyro_mle.posterior(scaled_model, X, y, method="laplace", num_samples=20, chains=1)
    dt = pyro_mle.to_datatree(post)
    w = dt["posterior"]["w"].values.reshape(-1, D)
    ref = stats.norm(w @ X.numpy().T, 0.25).logpdf(y.numpy())
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values.reshape(-1, N), ref, rtol=1e-10)
    assert float(pyro.param("s").detach()) == pytest.approx(0.25)  # and the store is left as it was
    pyro.clear_param_store()


def test_masked_rows_are_not_observations(data):
    X, y, _ = data
    keep = torch.arange(N) < 30

    def masked(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
        with pyro.plate("data", N), pyro.poutine.mask(mask=keep):
            pyro.sample("y", dist.Normal((X * w).sum(-1), SIGMA), obs=y)

    post = pyro_mle.posterior(masked, X, y, method="laplace", num_samples=10, chains=1)
    dt = pyro_mle.to_datatree(post)
    ll = dt["log_likelihood"]["y"]
    # masked rows are left out (ArviZ's LOO has no missing values); the coordinates name the rows kept
    assert ll.dims == ("chain", "draw", "y_observed") and list(ll["y_observed"].values) == list(range(30))
    w = dt["posterior"]["w"].values.reshape(-1, D)
    ref = stats.norm(w @ X.numpy()[:30].T, SIGMA).logpdf(y.numpy()[:30])
    np.testing.assert_allclose(ll.values.reshape(10, 30), ref, rtol=1e-10)
    assert dt["observed_data"]["y"].shape == (30,) and dt["posterior_predictive"]["y"].shape == (1, 10, 30)


def test_a_subsampled_model_keeps_one_set_of_rows(data):
    X, y, _ = data

    def minibatch(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
        with pyro.plate("data", N, subsample_size=8) as idx:
            pyro.sample("y", dist.Normal((X[idx] * w).sum(-1), SIGMA), obs=y[idx])

    draws = {"w": torch.randn(1, 5, D, dtype=torch.float64)}
    fake = pyro_mle.Posterior("nuts", draws, {}, {}, minibatch, (X, y), {})
    dt = pyro_mle.to_datatree(fake)
    assert dt.attrs["subsampled"] == 1
    obs = dt["observed_data"]["y"].values  # the rows of the pinned minibatch
    rows = [int(np.flatnonzero(np.isclose(y.numpy(), v))[0]) for v in obs]
    w = draws["w"][0].numpy()
    ref = stats.norm(w @ X.numpy()[rows].T, SIGMA).logpdf(obs)
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values[0], ref, rtol=1e-10)


def test_a_discrete_latent_without_draws_is_summed_out(data):
    """No longer refused: the marginal log-likelihood, log Σ_k ½ N(y_n | mu_k, 1), by scipy."""
    X, y, _ = data

    def mixture(X, y=None):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=X.dtype), 5.0).to_event(1))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2, dtype=X.dtype)))
            pyro.sample("y", dist.Normal(mu[..., z] if mu.dim() == 1 else mu.gather(-1, z), 1.0), obs=y)

    mu = torch.tensor([[[-1.0, 1.0], [0.0, 0.5], [0.2, -0.3]]], dtype=torch.float64)
    fake = pyro_mle.Posterior("nuts", {"mu": mu}, {}, {}, mixture, (X, y), {})
    dt = pyro_mle.to_datatree(fake)
    ref = special.logsumexp(np.log(0.5) + stats.norm(mu.numpy()[..., None, :], 1.0).logpdf(y.numpy()[:, None]), axis=-1)
    np.testing.assert_allclose(dt["log_likelihood"]["y"].values, ref, rtol=1e-10)
    assert "z" not in dt["posterior"] and "z" not in dt["posterior_predictive"]


def test_vectorised_prediction_is_checked_against_a_single_draw(data):
    # normalising w across its own last axis is fine per draw, but a vectorised replay that
    # broadcasts wrongly would change the values; predictions must match the per-draw meaning
    X, y, _ = data

    def normalised(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
        u = w / w.norm()
        with pyro.plate("data", N):
            pyro.sample("y", dist.Normal((X * u).sum(-1), 1e-3), obs=y)

    draws = {"w": torch.randn(1, 4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))}
    fake = pyro_mle.Posterior("nuts", draws, {}, {}, normalised, (X, y), {})
    pp = fake.predict()["y"][0].numpy()
    w = draws["w"][0].numpy()
    mean = (w / np.linalg.norm(w, axis=-1, keepdims=True)) @ X.numpy().T
    assert np.abs(pp - mean).max() < 0.01

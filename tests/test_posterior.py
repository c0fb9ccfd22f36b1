"""Full posterior inference against the closed-form conjugate posterior.

Bayesian linear regression with known noise σ and prior w ~ N(0, τ²I) has the posterior
N(m, C) with C = (XᵀX/σ² + I/τ²)⁻¹ and m = C Xᵀy/σ² (Bishop, PRML eq. 3.53-3.54).
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import pyro_mle
from pyro_mle.diagnostics import DiagnosticWarning
from pyro_mle.likelihoods import Normal

N, D, SIGMA, TAU = 60, 3, 0.5, 1.0


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + SIGMA * torch.randn(
        N, generator=g, dtype=torch.float64
    )
    precision = X.T @ X / SIGMA**2 + torch.eye(D, dtype=torch.float64) / TAU**2
    C = torch.linalg.inv(precision)
    m = C @ X.T @ y / SIGMA**2
    return X, y, m.numpy(), C.numpy()


def blr(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), TAU).to_event(1))
    Normal(scale=SIGMA)("y", X @ w, obs=y)


@pytest.fixture(scope="module", params=["nutpie", "pyro"])
def nuts(data, request):
    X, y, _, _ = data
    return pyro_mle.posterior(
        blr, X, y, method="nuts", sampler=request.param, num_samples=500, warmup=300, chains=2, seed=1
    )


def test_nuts_mean_matches_the_conjugate_posterior_within_mcse(nuts, data):
    import arviz_stats as azs

    _, _, m, C = data
    dt = pyro_mle.to_datatree(nuts, log_likelihood=False, predictive=False)
    summary = azs.summary(dt, var_names=["w"], round_to="none")
    z_mean = (summary["mean"].to_numpy(dtype=float) - m) / summary["mcse_mean"].to_numpy(dtype=float)
    z_sd = (summary["sd"].to_numpy(dtype=float) - np.sqrt(np.diag(C))) / summary["mcse_sd"].to_numpy(dtype=float)
    assert np.abs(z_mean).max() < 4, z_mean
    assert np.abs(z_sd).max() < 4, z_sd


def test_nuts_covariance_matches_the_conjugate_posterior(nuts, data):
    _, _, _, C = data
    w = nuts.samples["w"].reshape(-1, D).numpy()
    corr_true = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    # sd of a sample correlation ≈ (1 − ρ²)/√n_eff; n_eff ≥ 400 here
    tol = 4 * (1 - corr_true**2) / np.sqrt(400) + 1e-12
    assert (np.abs(np.corrcoef(w.T) - corr_true) <= tol).all()


def test_nuts_sample_stats_and_reproducibility(nuts, data):
    X, y, _, _ = data
    assert nuts.samples["w"].shape == (2, 500, D)
    st = nuts.sample_stats
    assert set(st) == {
        "diverging",
        "acceptance_rate",
        "step_size",
        "tree_depth",
        "n_steps",
        "energy",
        "lp",
        "reached_max_treedepth",
    }
    assert all(v.shape == (2, 500) for v in st.values())
    acc = st["acceptance_rate"]
    assert ((acc >= 0) & (acc <= 1 + 1e-9)).all() and 0.6 < acc.mean() < 1.0
    # Stan's convention: the doublings taken, the last one possibly cut short by a U-turn
    depth = st["tree_depth"]
    assert (st["n_steps"] < 2**depth).all() and (st["n_steps"] >= 2 ** (depth - 1)).all()
    assert not st["diverging"].any()
    # lp is the log joint at the draw: check it against scipy for one draw
    w = nuts.samples["w"][0, 7]
    lp = stats.norm(0, TAU).logpdf(w.numpy()).sum() + stats.norm((X @ w).numpy(), SIGMA).logpdf(y.numpy()).sum()
    assert st["lp"][0, 7].item() == pytest.approx(lp, rel=1e-8)
    assert not st["reached_max_treedepth"].any()
    short = dict(method="nuts", sampler=nuts.info["sampler"], num_samples=20, warmup=20, chains=2, diagnose=False)
    again = pyro_mle.posterior(blr, X, y, seed=1, **short)
    first = pyro_mle.posterior(blr, X, y, seed=1, **short)
    other = pyro_mle.posterior(blr, X, y, seed=2, **short)
    assert torch.equal(again.samples["w"], first.samples["w"])
    assert not torch.equal(other.samples["w"], first.samples["w"])
    # each chain has its own stream
    assert not torch.equal(first.samples["w"][0], first.samples["w"][1])
    assert nuts.info["jit"] is True and nuts.info["route"] == "script"


def test_laplace_is_exact_for_the_linear_gaussian_model(data):
    X, y, m, C = data
    post = pyro_mle.posterior(blr, X, y, method="laplace", num_samples=2000, chains=2)
    np.testing.assert_allclose(post.info["loc"].numpy(), m, atol=1e-5, rtol=0)
    np.testing.assert_allclose(post.info["covariance"].numpy(), C, atol=1e-5, rtol=0)
    w = post.samples["w"].reshape(-1, D).numpy()
    np.testing.assert_allclose(w.mean(0), m, atol=5 * np.sqrt(np.diag(C) / 4000).max())


def test_predict_draws_every_observed_site(nuts, data):
    X, y, _, _ = data
    pred = nuts.predict()
    assert pred["y"].shape == (2, 500, N)
    # the predictive mean of y at row i is x_i·E[w]
    np.testing.assert_allclose(pred["y"].mean((0, 1)).numpy(), (X @ nuts.samples["w"].mean((0, 1))).numpy(), atol=0.1)
    new = nuts.predict(X[:5])
    assert new["y"].shape == (2, 500, 5)


SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SD = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools_centred(y=None):
    # the centred parameterisation is a funnel in (tau, theta): NUTS diverges in its neck
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, SCHOOLS_SD), obs=y)


def test_divergences_are_reported_for_a_funnel():
    # a low target acceptance makes the steps long, so the neck is hit quickly and cheaply
    with pytest.warns(DiagnosticWarning) as record:
        post = pyro_mle.posterior(
            eight_schools_centred, SCHOOLS_Y, num_samples=150, warmup=100, chains=1, seed=0, target_accept=0.5
        )
    n = int(post.sample_stats["diverging"].sum())
    assert n > 0
    assert any(f"{n} of 150 transitions diverged" in str(w.message) for w in record)
    assert any("Raise target_accept" in str(w.message) for w in record)


def test_bad_arguments_are_refused(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match=r"unknown method 'hmc'; choose one of \['nuts', 'laplace', 'vi'\]"):
        pyro_mle.posterior(blr, X, y, method="hmc")
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        pyro_mle.posterior(blr, X, y, num_samples=0)

    def no_latent(X, y=None):
        Normal(scale=1.0)("y", X[:, 0], obs=y)

    with pytest.raises(ValueError, match="has no latent sample site"):
        pyro_mle.posterior(no_latent, X, y)

    def no_obs(X):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="has no observed site"):
        pyro_mle.posterior(no_obs, X)


def test_vi_is_reproducible_and_leaves_the_param_store_alone(data):
    X, y, _, _ = data
    pyro.clear_param_store()
    with pytest.warns(pyro_mle.ConvergenceWarning):  # 50 steps: not converged, and said so
        a = pyro_mle.posterior(blr, X, y, method="vi", num_samples=10, chains=1, vi_steps=50, seed=3)
        b = pyro_mle.posterior(blr, X, y, method="vi", num_samples=10, chains=1, vi_steps=50, seed=3)
    assert torch.equal(a.info["loc"], b.info["loc"]) and a.info["elbo"] == b.info["elbo"]
    assert list(pyro.get_param_store().keys()) == []

    def one_weight(X, y=None):  # a model with another latent size must not trip over the first
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=X.dtype), TAU))
        Normal(scale=SIGMA)("y", X[:, 0] * w, obs=y)

    with pytest.warns(pyro_mle.ConvergenceWarning):
        pyro_mle.posterior(one_weight, X, y, method="vi", num_samples=10, chains=1, vi_steps=20)


# ------------------------------------------------------------------ missing data
def _missing_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, 30, dtype=torch.float64)
    y = 1.5 * x + 0.5 * torch.randn(30, dtype=torch.float64, generator=g)
    mask = torch.ones(30, dtype=torch.bool)
    mask[[3, 7, 20]] = False
    return x, y, mask


@pytest.mark.parametrize("method", ["nuts", "laplace", "vi"])
def test_rows_masked_out_with_nan_are_left_out_of_the_posterior(method):
    """``poutine.mask`` with NaN at the masked rows: every method samples the posterior of the
    observed rows alone (conjugate: w ~ N(m, s²) from the 27 kept rows, closed form)."""
    from pyro import poutine

    x, y, mask = _missing_rows()
    y_nan = y.clone()
    y_nan[~mask] = float("nan")

    def model(x, y, mask):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
        with pyro.plate("data", len(x)), poutine.mask(mask=mask):
            pyro.sample("y", dist.Normal(w * x, 0.5), obs=y)

    xo, yo = x[mask].numpy(), y[mask].numpy()
    precision = 1 / 25 + (xo**2).sum() / 0.25
    mean, sd = (xo * yo).sum() / 0.25 / precision, precision**-0.5
    post = pyro_mle.posterior(model, x, y_nan, mask, method=method, num_samples=500, warmup=500, progress=False)
    w = post.samples["w"].reshape(-1).numpy()
    assert abs(w.mean() - mean) < 0.1 * sd + 4 * sd / np.sqrt(len(w))
    assert abs(w.std() / sd - 1) < 0.15


def test_obs_mask_imputation_is_refused_by_nuts_and_laplace_with_the_fix():
    x, y, mask = _missing_rows()
    y_nan = y.clone()
    y_nan[~mask] = float("nan")

    def model(x, y, mask):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x, 0.5), obs=y, obs_mask=mask)

    for method in ("nuts", "laplace"):
        with pytest.raises(ValueError, match=r"'y' impute their missing entries through obs_mask.*poutine.mask"):
            pyro_mle.posterior(model, x, y_nan, mask, method=method, progress=False)

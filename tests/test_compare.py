"""compare(): MLE, MAP and the posterior of one program, against closed forms; a point fit as
an ArviZ DataTree."""

import warnings

import matplotlib
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import pyro_mle
from pyro_mle.likelihoods import Normal

matplotlib.use("Agg")

N, D, SIGMA, TAU = 30, 2, 0.8, 0.5


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.2, -0.7], dtype=torch.float64) + SIGMA * torch.randn(N, generator=g, dtype=torch.float64)
    return X, y


def blr(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), TAU).to_event(1))
    Normal(scale=SIGMA)("y", X @ w, obs=y)


@pytest.fixture(scope="module")
def comparison(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyro_mle.DiagnosticWarning)
        return pyro_mle.compare(
            blr,
            X,
            y,
            methods=("mle", "map", "laplace", "nuts"),
            posterior_options={"num_samples": 300, "warmup": 300, "chains": 2},
        )


def test_table_against_closed_forms(comparison, data):
    X, y = data
    Xn, yn = X.numpy(), y.numpy()
    lstsq = np.linalg.lstsq(Xn, yn, rcond=None)[0]
    precision = Xn.T @ Xn / SIGMA**2 + np.eye(D) / TAU**2
    m = np.linalg.solve(precision, Xn.T @ yn / SIGMA**2)
    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    t = comparison.table
    for i in range(D):
        p = f"w[{i}]"
        assert t.loc[(p, "mle"), "estimate"] == pytest.approx(lstsq[i], abs=1e-6)
        assert t.loc[(p, "map"), "estimate"] == pytest.approx(m[i], abs=1e-6)  # Gaussian: mode = mean
        assert t.loc[(p, "laplace"), "estimate"] == pytest.approx(m[i], abs=5 * sd[i] / np.sqrt(600))
        assert t.loc[(p, "nuts"), "estimate"] == pytest.approx(m[i], abs=5 * sd[i] / np.sqrt(200))
        assert t.loc[(p, "nuts"), "sd"] == pytest.approx(sd[i], rel=0.2)
        lo, hi = t.loc[(p, "nuts"), ["lower", "upper"]]
        assert lo < m[i] < hi


def test_per_method_summary(comparison, data):
    X, y = data
    s = comparison.methods
    assert list(s.index) == ["mle", "map", "laplace", "nuts"]
    # MLE minimises the NLL: no other estimate has a lower one; and the value is scipy's
    assert s.loc["mle", "nll"] <= s[["nll"]].min().item() + 1e-9
    lstsq = np.linalg.lstsq(X.numpy(), y.numpy(), rcond=None)[0]
    ref = -stats.norm(X.numpy() @ lstsq, SIGMA).logpdf(y.numpy()).sum()
    assert s.loc["mle", "nll"] == pytest.approx(ref, rel=1e-8)
    assert np.isfinite(s.loc["nuts", "elpd_loo"]) and np.isnan(s.loc["mle", "elpd_loo"])
    assert s.loc["nuts", "divergences"] == 0 and s.loc["nuts", "max_r_hat"] < 1.05
    assert (s["run_time_s"] > 0).all()
    assert "elpd_loo" in str(comparison)


def test_plot_places_points_on_densities(comparison, tmp_path):
    fig = comparison.plot()
    assert len([a for a in fig.axes if a.get_title()]) == D
    fig.savefig(tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_a_point_fit_becomes_a_constant_posterior(data):
    import arviz_stats as azs

    X, y = data
    f = pyro_mle.fit(blr, X, y, method="mle")
    dt = pyro_mle.to_datatree(f, num_draws=200)
    assert dt["posterior"]["w"].shape == (1, 200, D)
    assert np.ptp(dt["posterior"]["w"].values, axis=1).max() == 0
    lstsq = np.linalg.lstsq(X.numpy(), y.numpy(), rcond=None)[0]
    ll = dt["log_likelihood"]["y"].values[0, 0]
    np.testing.assert_allclose(ll, stats.norm(X.numpy() @ lstsq, SIGMA).logpdf(y.numpy()), rtol=1e-6)
    pp = dt["posterior_predictive"]["y"].values[0]
    assert pp.std(0).mean() == pytest.approx(SIGMA, rel=0.1)  # real draws from the likelihood
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pit = pyro_mle.loo_pit(dt)["y"].values
    # uniform weights: the PIT is the fraction of predictive draws below each observation
    below = (dt["posterior_predictive"]["y"].values[0] <= y.numpy()).mean(0)
    assert np.abs(pit - below).max() <= 1.0 / 200 + 1e-12
    assert azs.summary(dt, kind="stats") is not None


def test_unknown_method_is_refused(data):
    X, y = data
    with pytest.raises(ValueError, match=r"unknown methods \['bayes'\]"):
        pyro_mle.compare(blr, X, y, methods=("mle", "bayes"))


def test_two_observed_sites_are_scored_leave_one_row_out(data):
    X, y = data
    z = (y > 0).double()

    def two_sites(X, y=None, z=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), TAU).to_event(1))
        with pyro.plate("rows", X.shape[0]):
            mean = (X * w).sum(-1)
            pyro.sample("y", dist.Normal(mean, SIGMA), obs=y)
            pyro.sample("z", dist.Bernoulli(logits=mean), obs=z)

    cmp = pyro_mle.compare(
        two_sites, X, y, z, methods=("mle", "laplace"), posterior_options={"num_samples": 200, "chains": 2}
    )
    assert np.isfinite(cmp.methods.loc["laplace", "elpd_loo"])
    # the joint pointwise log-likelihood is the sum of the two sites' (checked against scipy)
    dt = cmp.datatrees["laplace"]
    w = dt["posterior"]["w"].values.reshape(-1, D)
    m = w @ X.numpy().T
    ref = stats.norm(m, SIGMA).logpdf(y.numpy()) + stats.bernoulli(1 / (1 + np.exp(-m))).logpmf(z.numpy())
    total = dt["log_likelihood"]["y"].values.reshape(-1, N) + dt["log_likelihood"]["z"].values.reshape(-1, N)
    np.testing.assert_allclose(total, ref, rtol=1e-8)


def test_chain_diagnostics_only_on_nuts_rows(comparison):
    t, s = comparison.table, comparison.methods
    assert t.xs("laplace", level="method")[["r_hat", "ess_bulk", "ess_tail"]].isna().all().all()
    assert np.isfinite(t.xs("nuts", level="method")[["r_hat", "ess_bulk", "ess_tail"]].to_numpy(float)).all()
    assert s.loc["laplace", ["max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences"]].isna().all()
    # Laplace is the posterior of a linear-Gaussian model: p/q is constant over the draws
    assert s.loc["laplace", "q_pareto_k"] == -np.inf and np.isnan(s.loc["nuts", "q_pareto_k"])
    assert 0 < s.loc["laplace", "max_pareto_k"] < 0.7 and 0 < s.loc["nuts", "max_pareto_k"] < 0.7
    assert s.loc["mle", "converged"] is True and s.loc["mle", "steps"] >= 1


def poisson_rate(y=None):
    lam = pyro.sample("lam", dist.Gamma(torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)))
    with pyro.plate("rows", y.shape[0]):
        pyro.sample("y", dist.Poisson(lam), obs=y)


@pytest.mark.filterwarnings("ignore::pyro_mle.ConvergenceWarning")  # VI's 300 steps: not the subject
def test_approximations_report_the_pareto_k_of_their_importance_weights():
    """Few small counts: the Gamma posterior of a Poisson rate is skewed in log λ, so the
    Laplace Gaussian misses its left tail. The Pareto k of p/q is checked against PSIS on the
    closed-form posterior's density at the same draws, and Laplace's (about 0.9) warns."""
    from arviz_stats.base import array_stats

    y = torch.tensor([0.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    with pytest.warns(pyro_mle.DiagnosticWarning) as record:
        cmp = pyro_mle.compare(
            poisson_rate, y, methods=("laplace", "vi"), posterior_options={"num_samples": 500, "vi_steps": 300}
        )
    posterior = stats.gamma(1 + float(y.sum()), scale=1 / (1 + len(y)))
    for method in ("laplace", "vi"):
        post = cmp.results[method]
        lam = post.samples["lam"].reshape(-1).numpy()
        u = np.log(lam)  # the unconstrained space of q; Jacobian d lam / d u = lam
        log_p = posterior.logpdf(lam) + u
        log_q = stats.norm(post.info["loc"].item(), np.sqrt(post.info["covariance"].item())).logpdf(u)
        _, ref = array_stats.psislw(log_p - log_q - (log_p - log_q).max())
        assert cmp.methods.loc[method, "q_pareto_k"] == pytest.approx(float(ref), rel=1e-8, abs=1e-10)
        row = cmp.methods.loc[method]
        assert row[["max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences"]].isna().all()
    assert cmp.methods.loc["laplace", "q_pareto_k"] > 0.7
    assert any(
        "laplace: the Pareto k of the importance weights p/q over its 1000 draws" in str(w.message) for w in record
    )
    # VI's row carries its ELBO convergence where the run records it
    vi = cmp.results["vi"].info
    for key in ("converged", "steps"):
        got = cmp.methods.loc["vi", key]
        assert (pd.isna(got) and key not in vi) or got == vi[key]

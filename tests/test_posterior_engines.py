"""The NUTS engines: the checked potential, the HMC warnings, heads inside inference.

References are independent of the library: a long run of the other engine (eight schools),
the closed form of the conjugate model (``test_posterior.py``), the interpreted program (a
trace that would be wrong), statsmodels' stackloss data.
"""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
from pyro_mle.diagnostics import DiagnosticWarning
from pyro_mle.likelihoods import Normal
from pyro_mle.potential import TraceMismatchWarning, build_potential

SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64)
SCHOOLS_SD = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)


def eight_schools_centred(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, SCHOOLS_SD), obs=y)


def eight_schools_noncentred(y=None):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=torch.float64)))
    with pyro.plate("school", 8):
        eta = pyro.sample("eta", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        pyro.sample("y", dist.Normal(mu + tau * eta, SCHOOLS_SD), obs=y)


def value_branch(y=None):
    # Python control flow on a value: a trace records one branch and is silently wrong elsewhere
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
    loc = 2.0 * w if float(w.detach()) > 0 else w - 5.0
    pyro.sample("y", dist.Normal(loc, 1.0).expand([y.shape[0]]).to_event(1), obs=y)


def test_a_wrong_trace_is_rejected_and_the_interpreted_program_is_sampled():
    y = torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64)
    with pytest.warns(TraceMismatchWarning, match="differs from the program"):
        traced = pyro_mle.posterior(value_branch, y, num_samples=100, warmup=100, chains=2, seed=0, diagnose=False)
    assert traced.info["route"] == "interpreted" and traced.info["jit"] is False
    assert "another value or gradient" in traced.info["route_reason"]
    interpreted = pyro_mle.posterior(
        value_branch, y, num_samples=100, warmup=100, chains=2, seed=0, diagnose=False, jit=False
    )
    assert torch.equal(traced.samples["w"], interpreted.samples["w"])
    # the posterior puts w at mean(y)/2 = 0.75 (the w > 0 branch, loc = 2w), far from w - 5
    assert abs(float(traced.samples["w"].mean()) - 0.75) < 0.2


def test_the_potential_routes_are_checked_against_the_interpreter():
    # HalfCauchy's exp transform makes the one-graph trace fail; make_fx captures it
    with pyro_mle._rng.rng_scope(0):
        pot = build_potential(eight_schools_centred, (SCHOOLS_Y,), {})
    assert pot.route in ("script", "fx-script")
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(pot.size, generator=g, dtype=pot.dtype)
        v, grad = pot.value_and_grad(x)
        v0, grad0 = pot.interpreted(x)
        assert torch.allclose(v, v0, rtol=1e-10) and torch.allclose(grad, grad0, rtol=1e-9, atol=1e-12)
    # a scale that overflows has log density -inf: +inf potential, zero gradient, no exception
    x = torch.zeros(pot.size, dtype=pot.dtype)
    x[1] = 1e4  # tau = exp(1e4) = inf
    for fn in (pot.value_and_grad, pot.interpreted):
        v, grad = fn(x)
        assert v.item() == float("inf") and not grad.any()


def _summary(post, names):
    import arviz_stats as azs

    dt = pyro_mle.to_datatree(post, log_likelihood=False, predictive=False)
    return azs.summary(dt, var_names=names, round_to="none")


def test_the_two_samplers_agree_on_eight_schools_noncentred():
    runs = {
        s: pyro_mle.posterior(
            eight_schools_noncentred, SCHOOLS_Y, sampler=s, num_samples=400, warmup=300, seed=3, diagnose=False
        )
        for s in ("nutpie", "pyro")
    }
    a, b = (_summary(runs[s], ["mu", "tau"]) for s in ("nutpie", "pyro"))
    mean_a, mean_b = a["mean"].to_numpy(float), b["mean"].to_numpy(float)
    mcse = np.hypot(a["mcse_mean"].to_numpy(float), b["mcse_mean"].to_numpy(float))
    assert (np.abs(mean_a - mean_b) < 4 * mcse).all(), (mean_a, mean_b, mcse)
    sd_a, sd_b = a["sd"].to_numpy(float), b["sd"].to_numpy(float)
    assert (np.abs(sd_a - sd_b) < 0.2 * sd_b).all(), (sd_a, sd_b)


def test_ebfmi_and_tree_depth_warnings_fire_on_the_centred_funnel():
    with pytest.warns(DiagnosticWarning) as record:
        post = pyro_mle.posterior(
            eight_schools_centred, SCHOOLS_Y, num_samples=200, warmup=200, chains=2, seed=1, max_tree_depth=4
        )
    text = [str(w.message) for w in record]
    assert any("E-BFMI below 0.3 (chain" in t for t in text), text
    hits = int(post.sample_stats["reached_max_treedepth"].sum())
    assert hits > 0
    assert any(f"{hits} of 400 transitions reached the maximum tree depth (4)" in t for t in text), text


def test_the_hmc_warnings_stay_silent_on_the_conjugate_model():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.5 * torch.randn(
        60, generator=g, dtype=torch.float64
    )

    def blr(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=X.dtype), 1.0).to_event(1))
        Normal(scale=0.5)("y", X @ w, obs=y)

    with warnings.catch_warnings():
        warnings.simplefilter("error", DiagnosticWarning)
        post = pyro_mle.posterior(blr, X, y, num_samples=300, warmup=300, chains=2, seed=0)
    assert not post.sample_stats["reached_max_treedepth"].any()


@pytest.fixture(scope="module")
def stackloss():
    sm = pytest.importorskip("statsmodels.api")
    data = sm.datasets.stackloss.load_pandas()
    return torch.tensor(data.exog.to_numpy(), dtype=torch.float64), torch.tensor(
        data.endog.to_numpy(), dtype=torch.float64
    )


def stackloss_model(X, y=None):
    # raw covariates, a latent scale handed to a likelihood head
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=X.dtype), 100.0))
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=X.dtype), 10.0).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(10.0, dtype=X.dtype)))
    with pyro.plate("rows", X.shape[0]):
        Normal(scale=s)("y", b + X @ w, obs=y)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_head_with_a_latent_scale_survives_warmup(stackloss, seed):
    X, y = stackloss
    # the crash came in early warm-up trajectories; a shallow tree keeps the raw-scale run short
    post = pyro_mle.posterior(
        stackloss_model, X, y, num_samples=20, warmup=100, chains=1, seed=seed, max_tree_depth=6, diagnose=False
    )
    assert torch.isfinite(post.samples["s"]).all() and (post.samples["s"] > 0).all()


def test_an_overflowing_scale_is_a_zero_density_not_an_error(stackloss):
    X, y = stackloss
    with pyro_mle._rng.rng_scope(0):
        pot = build_potential(stackloss_model, (X, y), {}, compile=False)
    offset = {"b": 0, "w": 1, "s": 4}
    assert [k for k, _ in pot.layout] == list(offset)
    for log_s in (1e4, -1e4):  # s = inf; s = 0 (the head refuses both as parameters)
        x = pot.init.clone()
        x[offset["s"]] = log_s
        value, grad = pot.interpreted(x)
        assert value.item() == float("inf") and not grad.any()


def test_laplace_on_the_centred_funnel_names_the_site_without_a_mode():
    """The centred eight schools' density grows without bound as tau → 0: no mode, no Laplace
    approximation. The error says so and names tau, instead of a raw validation error."""
    with pytest.raises(ValueError, match=r"no mode of the posterior density.*running off.*'tau'"):
        pyro_mle.posterior(eight_schools_centred, SCHOOLS_Y, method="laplace", progress=False)


SHIFT = 1.0


def _global_switch(y=None):
    # a discrete latent that Pyro's NUTS enumerates: y_i ~ Normal(mu + SHIFT * z, 1)
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.5, dtype=torch.float64)), infer={"enumerate": "parallel"})
    with pyro.plate("rows", y.shape[0]):
        pyro.sample("y", dist.Normal(mu + SHIFT * z, 1.0), obs=y)


def test_a_discrete_latent_falls_back_to_pyro_with_a_warning_and_the_right_posterior():
    from scipy import stats

    y = torch.tensor([0.3, 1.4, 0.9, -0.2, 1.1], dtype=torch.float64)
    with pytest.warns(
        pyro_mle.SamplerFallbackWarning, match=r"nutpie cannot sample it \(discrete latent sites \['z'\]"
    ):
        post = pyro_mle.posterior(_global_switch, y, num_samples=250, warmup=150, chains=1, seed=0, diagnose=False)
    assert post.info["sampler"] == "pyro" and post.info["route"] == "interpreted"
    assert "discrete latent sites ['z']" in post.info["fallback"]
    with warnings.catch_warnings():  # Pyro's interpreted NUTS asked for: nothing to warn about
        warnings.simplefilter("error", pyro_mle.SamplerFallbackWarning)
        pyro_mle.posterior(_global_switch, y, sampler="pyro", jit=False, num_samples=5, warmup=5, diagnose=False)
    # closed form: mu | z, y is Normal(m_z, v); z | y from the marginal y | z ~ N(SHIFT z 1, I + 11')
    n, yn = len(y), y.numpy()
    v = 1 / (1 + n)
    m = np.array([v * (yn - SHIFT * z).sum() for z in (0, 1)])
    cov = np.eye(n) + np.ones((n, n))
    logw = np.array([stats.multivariate_normal(SHIFT * z * np.ones(n), cov).logpdf(yn) for z in (0, 1)])
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean, sd = w @ m, np.sqrt(w @ (v + m**2) - (w @ m) ** 2)
    s = _summary(post, ["mu"])
    assert abs(s["mean"].item() - mean) < 4 * s["mcse_mean"].item(), (s["mean"].item(), mean)
    assert abs(s["sd"].item() - sd) < 0.15 * sd, (s["sd"].item(), sd)


def test_a_subsampling_plate_is_refused_by_nuts_with_the_fix():
    def minibatch(y=None):
        m = pyro.sample("m", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
        with pyro.plate("rows", 40, subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(m, 1.0), obs=y[idx])

    y = torch.zeros(40, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'minibatch' has a subsampling plate.*method='vi'"):
        pyro_mle.posterior(minibatch, y, num_samples=10, warmup=10, chains=1, progress=False)


def test_low_rank_adaptation_reaches_nutpie_and_matches_the_closed_form(monkeypatch):
    """Strongly correlated coefficients (two near-collinear columns): the conjugate posterior
    N(m, S) is known exactly; nutpie's low-rank adaptation must have run (its trace carries
    the number of eigenvalues it kept, a statistic only that adaptation writes)."""
    import arviz_stats as azs
    import nutpie

    g = torch.Generator().manual_seed(0)
    n, tau, sigma = 50, 2.0, 0.5
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    X = torch.stack([z[:, 0], z[:, 0] + 0.05 * z[:, 1], z[:, 2]], 1)
    y = X @ torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64) + sigma * torch.randn(
        n, generator=g, dtype=torch.float64
    )

    def blr(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=X.dtype), tau).to_event(1))
        Normal(scale=sigma)("y", X @ w, obs=y)

    seen = []
    real = nutpie.sample

    def spy(*args, **kwargs):
        trace = real(*args, **kwargs)
        seen.append((kwargs["adaptation"], "num_eigenvalues" in trace["sample_stats"]))
        return trace

    monkeypatch.setattr(nutpie, "sample", spy)
    post = pyro_mle.posterior(blr, X, y, adaptation="low_rank", num_samples=300, warmup=300, seed=0)
    assert seen == [("low_rank", True)]
    assert post.info["adaptation"] == "low_rank"
    assert post.info["route"] == "script" and post.info["route_reason"] == ""
    Xn, yn = X.numpy(), y.numpy()
    precision = Xn.T @ Xn / sigma**2 + np.eye(3) / tau**2
    cov = np.linalg.inv(precision)
    mean, sd = cov @ Xn.T @ yn / sigma**2, np.sqrt(np.diag(cov))
    assert cov[0, 1] / (sd[0] * sd[1]) < -0.99  # the correlation low_rank adapts to
    draws = pyro_mle.to_datatree(post, log_likelihood=False, predictive=False)["posterior"]["w"]
    got_mean = draws.mean(("chain", "draw")).values
    mcse = azs.mcse(draws.to_dataset(), method="mean")["w"].values
    assert (np.abs(got_mean - mean) < 4 * mcse).all(), (got_mean, mean, mcse)
    got_sd = draws.std(("chain", "draw"), ddof=1).values
    assert (np.abs(got_sd - sd) < 0.1 * sd).all(), (got_sd, sd)


def test_the_route_and_its_reason_are_recorded():
    y = torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64)

    def normal_mean(y=None):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
        pyro.sample("y", dist.Normal(w, 1.0).expand([y.shape[0]]).to_event(1), obs=y)

    post = pyro_mle.posterior(normal_mean, y, num_samples=50, warmup=50, chains=1, jit=False, diagnose=False)
    assert post.info["route"] == "interpreted" and post.info["jit"] is False
    assert post.info["route_reason"] == "compile=False" and "fallback" not in post.info

"""pyro_mle.fit and pyro_mle.handlers against independent references.

Every numerical claim is checked against an answer computed without pyro_mle or Pyro:
numpy's lstsq, scipy (linprog, closed-form densities), scikit-learn and statsmodels. Data
are float64 and simulated with fixed seeds; fits use their default seed.
"""

import dataclasses
import math
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import statsmodels.api as sm
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.nn import PyroModule, PyroParam
from scipy import optimize, stats
from sklearn.linear_model import LogisticRegression, Ridge

from pyro_mle import ConvergenceWarning, Fit, FitDivergedError, Prediction, fit, load
from pyro_mle import likelihoods as L
from pyro_mle.handlers import likelihood_only

F64 = torch.float64


# ----------------------------------------------------------------------------- data and models
def regression(n=300, d=3, noise=0.3, seed=0):
    """X (n, d), y = X w + 0.7 + noise·ε with ε standard normal."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + 0.7 + noise * rng.normal(size=n)
    return X, y


def with_intercept(X):
    return np.c_[X, np.ones(len(X))]


def lstsq(X, y):
    return np.linalg.lstsq(with_intercept(X), y, rcond=None)[0]


def tensors(*arrays):
    return tuple(torch.as_tensor(a) for a in arrays)


def linear(x, num_outputs=None):
    """x @ w + b with pyro.param weights, zeros to start, in the data's dtype."""
    shape = (x.shape[-1],) if num_outputs is None else (x.shape[-1], num_outputs)
    w = pyro.param("w", torch.zeros(shape, dtype=x.dtype))
    b = pyro.param("b", torch.zeros(shape[1:], dtype=x.dtype))
    return x @ w + b


def coefficients(result):
    return np.r_[result.params["w"].numpy(), result.params["b"].numpy()]


def least_squares_model(x, y=None):
    L.Normal(scale=0.3)("y", linear(x), obs=y)


@pytest.fixture
def data():
    return regression()


# ----------------------------------------------------------------------------- handlers
def test_likelihood_only_masks_priors_and_keeps_observed_sites(data):
    X, y = data
    x, yt = tensors(X, y)
    w0 = np.array([0.5, -1.0, 2.0])

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=F64), 2.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(x @ w, 0.3), obs=y)

    def point(x, y):
        pyro.sample("w", dist.Delta(torch.as_tensor(w0)).to_event(1))

    at_w0 = poutine.trace(point).get_trace(x, yt)
    log_lik = stats.norm(X @ w0, 0.3).logpdf(y).sum()
    log_prior = stats.norm(0, 2.0).logpdf(w0).sum()
    joint = poutine.trace(poutine.replay(model, at_w0)).get_trace(x, yt).log_prob_sum()
    assert float(joint) == pytest.approx(log_lik + log_prior, rel=1e-12)
    masked = poutine.trace(poutine.replay(likelihood_only(model), at_w0)).get_trace(x, yt)
    assert float(masked.log_prob_sum()) == pytest.approx(log_lik, rel=1e-12)
    with likelihood_only():  # as a context manager
        tr = poutine.trace(poutine.replay(model, at_w0)).get_trace(x, yt)
    assert float(tr.log_prob_sum()) == pytest.approx(log_lik, rel=1e-12)
    assert tr.nodes["w"]["mask"] is False and tr.nodes["y"]["mask"] is None


def test_likelihood_only_with_pyro_svi_gives_minus_log_likelihood(data):
    """The building blocks by hand: Pyro's own Trace_ELBO with AutoDelta is exactly −log p(y | θ)."""
    X, y = data
    x, yt = tensors(X, y)

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=F64), 0.01).to_event(1))
        L.Normal(scale=0.3)("y", x @ w, obs=y)

    pyro.clear_param_store()
    guide = AutoDelta(model)
    loss = Trace_ELBO().loss(likelihood_only(model), guide, x, yt)
    w_hat = guide.median(x, yt)["w"].numpy()
    assert loss == pytest.approx(-stats.norm(X @ w_hat, 0.3).logpdf(y).sum(), rel=1e-12)
    svi = SVI(likelihood_only(model), guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert math.isfinite(svi.step(x, yt))
    pyro.clear_param_store()


# ----------------------------------------------------------------------------- the classical losses
def test_normal_fixed_scale_is_least_squares(data):
    X, y = data
    result = fit(least_squares_model, *tensors(X, y))
    assert result.converged and result.method == "mle" and result.optimizer == "lbfgs"
    coef = lstsq(X, y)
    np.testing.assert_allclose(coefficients(result), coef, rtol=0, atol=1e-5)
    # the SVI loss at the optimum is least squares with its constant
    rss = np.sum((y - with_intercept(X) @ coef) ** 2)
    n = len(y)
    least_squares = rss / (2 * 0.3**2) + n * math.log(0.3 * math.sqrt(2 * math.pi))
    assert result.loss == pytest.approx(least_squares, rel=1e-6)
    assert result.nll == pytest.approx(least_squares, rel=1e-6)
    assert result.losses[0] > result.losses[-1] and len(result.losses) == result.num_steps + 1


def test_normal_learned_scale_is_root_mean_squared_residual(data):
    """σ is a latent site with a prior: MLE ignores the prior, so σ̂ = sqrt(RSS/N)."""
    X, y = data

    def model(x, y=None):
        scale = pyro.sample("scale", dist.HalfCauchy(torch.tensor(1.0, dtype=F64)))
        L.Normal(scale=scale)("y", linear(x), obs=y)

    result = fit(model, *tensors(X, y))
    coef = lstsq(X, y)
    rss = np.sum((y - with_intercept(X) @ coef) ** 2)
    assert result.converged and result.latent == ("scale",)
    np.testing.assert_allclose(coefficients(result), coef, rtol=0, atol=1e-5)
    assert float(result.params["scale"]) == pytest.approx(math.sqrt(rss / len(y)), rel=1e-6)


def test_laplace_is_least_absolute_deviations():
    """L1 regression by linear programming: min Σ(u+v) s.t. Aβ + u − v = y, u, v ≥ 0.

    The L1 loss is not differentiable at its optimum (a vertex where D+1 residuals vanish),
    where gradient methods stall; fit solves it by majorise–minimise with an exact active-set
    finish (pyro_mle.nonsmooth), so the estimate is the LP's vertex.
    """
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.7 + 0.5 * rng.laplace(size=300)
    n, k = with_intercept(X).shape
    lp = optimize.linprog(
        np.r_[np.zeros(k), np.ones(2 * n)],
        A_eq=np.c_[with_intercept(X), np.eye(n), -np.eye(n)],
        b_eq=y,
        bounds=[(None, None)] * k + [(0, None)] * (2 * n),
        method="highs",
    )
    assert lp.status == 0

    def model(x, y=None):
        L.Laplace(scale=1.0)("y", linear(x), obs=y)

    result = fit(model, *tensors(X, y))
    assert result.converged, result.message
    np.testing.assert_allclose(coefficients(result), lp.x[:k], rtol=1e-6, atol=1e-9)
    assert result.nll == pytest.approx(lp.fun + n * math.log(2.0), rel=1e-10)


def test_bernoulli_is_unpenalised_logistic_regression():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 4))
    y = (rng.uniform(size=500) < 1 / (1 + np.exp(-(X @ rng.normal(size=4) + 0.3)))).astype(float)

    def model(x, y=None):
        L.Bernoulli()("y", linear(x), obs=y)

    result = fit(model, *tensors(X, y))
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)
    assert result.converged
    np.testing.assert_allclose(coefficients(result), np.r_[reference.coef_[0], reference.intercept_], atol=1e-4)
    p = reference.predict_proba(X)[:, 1]
    cross_entropy = -np.sum(y * np.log(p) + (1 - y) * np.log1p(-p))
    assert result.nll == pytest.approx(cross_entropy, rel=1e-8)


def test_categorical_probabilities_are_multinomial_logistic_regression():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 4))
    logits = X @ rng.normal(size=(4, 3))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in probs], dtype=float)

    def model(x, y=None):
        L.Categorical()("y", linear(x, 3), obs=y)

    result = fit(model, *tensors(X, y))
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)
    assert result.converged
    predicted = result.predict(torch.as_tensor(X), num_samples=1).distributions["y"].probs
    np.testing.assert_allclose(predicted.numpy(), reference.predict_proba(X), atol=1e-4)


def test_poisson_is_glm_poisson():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 3))
    y = rng.poisson(np.exp(X @ np.array([0.3, -0.2, 0.1]) + 0.5)).astype(float)

    def model(x, y=None):
        L.Poisson()("y", linear(x), obs=y)

    result = fit(model, *tensors(X, y))
    glm = sm.GLM(y, with_intercept(X), family=sm.families.Poisson()).fit(tol=1e-12)
    assert result.converged
    np.testing.assert_allclose(coefficients(result), glm.params, rtol=0, atol=1e-5)
    assert result.nll == pytest.approx(-glm.llf, rel=1e-8)


def test_map_with_normal_prior_is_ridge(data):
    """w ~ Normal(0, τ), y ~ Normal(Xw + b, σ), b a flat pyro.param: ridge with α = σ²/τ²."""
    X, y = data
    scale, prior_scale = 0.3, 0.05

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), prior_scale).to_event(1))
        b = pyro.param("b", torch.zeros((), dtype=x.dtype))
        L.Normal(scale=scale)("y", x @ w + b, obs=y)

    result = fit(model, *tensors(X, y), method="map")
    ridge = Ridge(alpha=scale**2 / prior_scale**2, tol=1e-12).fit(X, y)
    assert result.converged and result.method == "map"
    np.testing.assert_allclose(coefficients(result), np.r_[ridge.coef_, ridge.intercept_], rtol=0, atol=1e-5)
    # the same program read by MLE drops the prior: least squares again
    mle = fit(model, *tensors(X, y), method="mle")
    np.testing.assert_allclose(coefficients(mle), lstsq(X, y), rtol=0, atol=1e-5)
    # MAP's loss adds −log p(w) to the NLL
    w = result.params["w"].numpy()
    assert result.loss == pytest.approx(result.nll - stats.norm(0, prior_scale).logpdf(w).sum(), rel=1e-10)


def test_mix_of_sample_param_module_and_pyromodule_is_least_squares():
    """One coefficient from each way Pyro declares a parameter."""
    X, y = regression(d=4, seed=5)
    torch.manual_seed(0)
    plain = torch.nn.Linear(1, 1, bias=False).double()
    net = PyroModule[torch.nn.Linear](1, 1).double()
    net.bias = PyroParam(torch.zeros(1, dtype=F64))

    def model(x, y=None):
        a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        b = pyro.param("b", torch.tensor(0.0, dtype=F64))
        module = pyro.module("plain", plain)
        mean = a * x[:, 0] + b * x[:, 1] + module(x[:, 2:3]).squeeze(-1) + net(x[:, 3:4]).squeeze(-1)
        L.Normal(scale=1.0)("y", mean, obs=y)

    result = fit(model, *tensors(X, y))
    coef = lstsq(X, y)
    assert result.converged
    assert set(result.params) == {"a", "b", "plain$$$weight", "weight", "bias"}  # a top-level PyroModule has no prefix
    estimate = [float(result.params[k].reshape(())) for k in ("a", "b", "plain$$$weight", "weight", "bias")]
    np.testing.assert_allclose(estimate, coef, rtol=0, atol=1e-5)
    # modules are trained in place
    assert plain.weight.detach().item() == pytest.approx(coef[2], abs=1e-5)
    assert net.weight.detach().item() == pytest.approx(coef[3], abs=1e-5)


def test_heteroscedastic_mlp_recovers_the_noise_function():
    """A network with a mean head and a scale head, y = sin(3x) + (0.1 + 0.3x²)·ε, 2000 points.

    Stated accuracy: the fitted scale within 20% of the true one everywhere on [-0.9, 0.9]
    (the worst points are at the edges of the data) and within 6% on average; the mean within
    0.06 of sin(3x).
    """
    rng = np.random.default_rng(6)
    X = rng.uniform(-1, 1, size=(2000, 1))

    def noise(x):
        return 0.1 + 0.3 * x**2

    y = np.sin(3 * X[:, 0]) + noise(X[:, 0]) * rng.normal(size=2000)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
    ).double()

    def model(x, y=None):
        pyro.module("net", net)
        L.Normal()("y", net(x), obs=y)  # net outputs (N, 2): mean and raw scale (softplus link)

    # a network never meets a tight gradient tolerance; what is tested is the function
    result = fit(model, *tensors(X, y), num_steps=500, rtol=1e-6, gtol=1e-2)
    assert result.converged
    grid = np.linspace(-0.9, 0.9, 19)
    d = result.predict(torch.as_tensor(grid[:, None]), num_samples=1).distributions["y"]
    relative_error = np.abs(d.scale.numpy() / noise(grid) - 1)
    assert relative_error.max() < 0.2 and relative_error.mean() < 0.06
    np.testing.assert_allclose(d.loc.numpy(), np.sin(3 * grid), atol=0.06)


def test_minibatch_adam_reaches_the_full_batch_answer():
    """10⁵ rows in minibatches of 1000. Stated tolerance: 3e-3, about one standard error
    of the coefficients (1/√N ≈ 3.2e-3), against the exact full-batch least squares."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(100_000, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.7 + rng.normal(size=100_000)

    def model(x, y=None, batch_size=None):
        mean_fn = linear
        with pyro.plate("data", len(x), subsample_size=batch_size) as idx:
            L.Normal(scale=1.0)("y", mean_fn(x[idx]), obs=None if y is None else y[idx])

    result = fit(model, *tensors(X, y), batch_size=1000, lr=0.05, num_steps=2000)
    coef = lstsq(X, y)
    assert result.optimizer == "adam" and result.converged and result.num_steps < 2000
    np.testing.assert_allclose(coefficients(result), coef, rtol=0, atol=3e-3)
    # nll is the exact full-data value at the estimate, not a minibatch estimate
    residual = y - with_intercept(X) @ coefficients(result)
    assert result.nll == pytest.approx(-stats.norm(0, 1).logpdf(residual).sum(), rel=1e-10)


def test_subsampled_nll_counts_every_row_once():
    """1003 rows in minibatches of 100: the last chunk overlaps the one before it."""
    X, y = regression(n=1003, seed=8)

    def model(x, y=None, batch_size=None):
        scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", len(x), subsample_size=batch_size) as idx:
            L.Normal(scale=scale)("y", linear(x[idx]), obs=None if y is None else y[idx])

    with pytest.warns(ConvergenceWarning):
        result = fit(model, *tensors(X, y), batch_size=100, num_steps=20)
    residual = y - with_intercept(X) @ coefficients(result)
    expected = -stats.norm(0, float(result.params["scale"])).logpdf(residual).sum()
    assert result.nll == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------- Fit: predict, save, load
def test_predict_draws_from_the_likelihood_at_the_estimate(data):
    X, y = data
    result = fit(least_squares_model, *tensors(X, y))
    prediction = result.predict(torch.as_tensor(X), num_samples=500, seed=1)
    assert isinstance(prediction, Prediction) and set(prediction.draws) == {"y"}
    draws = prediction.draws["y"].numpy()
    assert draws.shape == (500, len(y))
    mean = with_intercept(X) @ lstsq(X, y)
    np.testing.assert_allclose(prediction.mean["y"].numpy(), mean, rtol=0, atol=1e-5)
    z = (draws - mean) / 0.3  # standard normal: 150 000 draws, standard error of the sd ≈ 0.002
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_save_and_load_round_trip(tmp_path, data):
    X, y = data
    x, yt = tensors(X, y)
    result = fit(least_squares_model, x, yt)
    path = tmp_path / "fit.pt"
    result.save(path)
    loaded = load(path)
    for name in (
        "losses",
        "converged",
        "nll",
        "method",
        "optimizer",
        "num_steps",
        "grad_norm",
        "message",
        "latent",
        "observed",
        "seed",
    ):
        assert getattr(loaded, name) == getattr(result, name), name
    assert set(loaded.params) == set(result.params)
    for name, value in result.params.items():
        assert torch.equal(loaded.params[name], value)
    assert loaded.model is None
    with pytest.raises(ValueError, match="model=model"):
        loaded.predict(x)
    before = result.predict(x, num_samples=3, seed=2).draws["y"]
    after = loaded.predict(x, num_samples=3, seed=2, model=least_squares_model).draws["y"]
    assert torch.equal(before, after)
    assert torch.equal(load(path, model=least_squares_model).predict(x, num_samples=3, seed=2).draws["y"], before)
    torch.save({"something": 1}, tmp_path / "other.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    for other in ("other.pt", "empty.pt"):
        with pytest.raises(ValueError, match="not a pyro_mle fit file"):
            load(tmp_path / other)


def test_fit_is_immutable(data):
    result = fit(least_squares_model, *tensors(*data))
    assert isinstance(result, Fit)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.converged = False
    with pytest.raises(TypeError):
        result.params["w"] = torch.zeros(3)
    assert "converged=True" in repr(result)


def test_global_param_store_is_left_alone(data):
    pyro.clear_param_store()
    outside = pyro.param("w", torch.tensor([42.0]))
    fit(least_squares_model, *tensors(*data))
    assert list(pyro.get_param_store().keys()) == ["w"]
    assert pyro.param("w") is not None and torch.equal(pyro.param("w").detach(), outside.detach())
    pyro.clear_param_store()


def test_same_seed_same_fit(data):
    """The start no longer depends on the seed (zero in the unconstrained space, not a prior
    draw), so the seed shows in what is random: the minibatches of a subsampled fit."""

    def model(x, y=None):
        scale = pyro.sample("scale", dist.HalfCauchy(torch.tensor(1.0, dtype=F64)))
        with pyro.plate("data", len(x), subsample_size=50) as idx:
            L.Normal(scale=scale)("y", linear(x[idx]), obs=None if y is None else y[idx])

    runs = []
    for seed in (5, 5, 6):
        with pytest.warns(ConvergenceWarning):
            runs.append(fit(model, *tensors(*data), num_steps=30, seed=seed))
    assert runs[0].losses == runs[1].losses and runs[0].seed == 5
    assert runs[0].losses[1:] != runs[2].losses[1:]


def test_progress_bar_shows_the_loss(capsys, data):
    fit(least_squares_model, *tensors(*data), progress=True)
    assert "loss=" in capsys.readouterr().err


# ----------------------------------------------------------------------------- failure modes
def test_model_without_observed_site_is_refused(data):
    X, _ = data
    calls = []

    def model(x, y=None):
        calls.append(1)
        L.Normal(scale=0.3)("y", linear(x), obs=y)

    with pytest.raises(ValueError, match=r"no observed site.*\['y'\].*fit\(model, x, y\)"):
        fit(model, torch.as_tensor(X))  # y forgotten
    assert len(calls) == 1  # refused after one trace, before any optimisation


@pytest.mark.parametrize(
    ("reshape_y", "reshape_mean", "text"),
    [
        (lambda y: y[:, None], lambda m: m, r"\(300, 1\).*\(300,\).*\(300, 300\).*y\.squeeze\(-1\)"),
        (lambda y: y, lambda m: m[:, None], r"\(300,\).*\(300, 1\).*\(300, 300\).*unsqueeze"),
    ],
    ids=["data (N,1) against (N,)", "data (N,) against mean (N,1)"],
)
def test_observed_shape_mismatch_is_refused_before_optimisation(data, reshape_y, reshape_mean, text):
    X, y = data
    calls = []

    def model(x, y=None):
        calls.append(1)
        pyro.sample("y", dist.Normal(reshape_mean(linear(x)), 0.3), obs=y)

    with pytest.raises(ValueError, match=r"observed site 'y'.*" + text):
        fit(model, torch.as_tensor(X), reshape_y(torch.as_tensor(y)))
    assert len(calls) == 1


def test_likelihood_head_shape_error_comes_before_optimisation(data):
    X, y = data
    with pytest.raises(ValueError, match=r"Normal likelihood 'y'.*squeeze"):
        fit(least_squares_model, torch.as_tensor(X), torch.as_tensor(y)[:, None])


def test_non_finite_data_are_refused(data):
    X, y = data
    y = y.copy()
    y[[3, 17]] = np.nan

    def model(x, y=None):
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(linear(x), 0.3), obs=y)

    with pytest.raises(ValueError, match=r"observed site 'y'.*nan at rows \[3, 17\]"):
        fit(model, *tensors(X, y))


def test_discrete_latent_site_is_refused(data):
    def model(x, y=None):
        k = pyro.sample("k", dist.Bernoulli(torch.tensor(0.5, dtype=F64)))
        L.Normal(scale=0.3)("y", linear(x) + k, obs=y)

    with pytest.raises(ValueError, match=r"latent site 'k' is discrete"):
        fit(model, *tensors(*data))


def test_nothing_to_fit_is_refused(data):
    def model(x, y=None):
        L.Normal(scale=0.3)("y", x.sum(-1), obs=y)

    with pytest.raises(ValueError, match="nothing to fit"):
        fit(model, *tensors(*data))


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"method": "ml"}, r"method must be one of \['mle', 'map'\]; got 'ml'"),
        ({"optimizer": "sgd"}, r"optimizer must be one of \['lbfgs', 'adam'\]"),
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
    ],
)
def test_bad_options_are_refused(data, options, text):
    with pytest.raises(ValueError, match=text):
        fit(least_squares_model, *tensors(*data), **options)


def test_lbfgs_refuses_a_subsampled_model(data):
    def model(x, y=None):
        with pyro.plate("data", len(x), subsample_size=50) as idx:
            L.Normal(scale=0.3)("y", linear(x[idx]), obs=y[idx])

    with pytest.raises(ValueError, match=r"plate 'data' \(50 of 300\) subsamples.*optimizer='adam'"):
        fit(model, *tensors(*data), optimizer="lbfgs")


def test_diverging_loss_names_the_step_and_site_and_keeps_the_last_finite_fit(data):
    """An unconstrained scale pushed below zero by large Adam steps: log(scale) is NaN."""
    X, y = data

    def model(x, y=None):
        scale = pyro.param("scale", torch.tensor(1.0, dtype=F64))  # no positivity constraint: the bug
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(linear(x), scale), obs=y)

    with pytest.raises(FitDivergedError) as err:
        fit(model, *tensors(X, y), optimizer="adam", lr=2.0)
    e = err.value
    assert isinstance(e, FloatingPointError) and e.step > 0 and e.sites == ("y",)
    assert re.search(rf"became nan at step {e.step} of adam .*last finite loss .* at step {e.step - 1}", str(e))
    assert re.search(r"site 'y' \(nan at all 300 elements\).*GreaterThan", str(e))  # validation names the cause
    last = e.fit
    assert not last.converged and len(last.losses) == e.step and all(map(math.isfinite, last.losses))
    assert float(last.params["scale"]) > 0 and math.isfinite(last.nll)
    # the losses are the model's: the first is −log N(y | 0, 1) at the zero initial weights
    assert last.losses[0] == pytest.approx(-stats.norm(0, 1).logpdf(y).sum(), rel=1e-12)
    # and err.fit is the estimate at the last finite step: its nll is that of the data there
    w, b, scale = last.params["w"].numpy(), float(last.params["b"]), float(last.params["scale"])
    assert last.nll == pytest.approx(-stats.norm(X @ w + b, scale).logpdf(y).sum(), rel=1e-10)


def test_non_finite_loss_at_the_initial_parameters_is_step_0(data):
    X, y = data

    def model(x, y=None):
        w = pyro.param("w", torch.ones(3, dtype=F64))
        with pyro.plate("data", len(x)):  # torch accepts loc = inf, so only the loss shows it
            pyro.sample("y", dist.Normal(torch.exp(1000.0 * (x @ w)), 1.0), obs=y)

    with pytest.raises(FitDivergedError, match=r"became inf at the initial parameters \(step 0\)") as err:
        fit(model, *tensors(X, y))
    assert err.value.step == 0 and err.value.sites == ("y",) and err.value.fit.losses == ()
    assert math.isnan(err.value.fit.loss) and "converged=False" in repr(err.value.fit)
    assert "err.fit holds the initial parameters" in str(err.value)


def test_lbfgs_backs_off_from_non_finite_trial_points(data):
    """The same unconstrained scale under L-BFGS: a NaN at a line-search trial point is a step too
    long, not a divergence. The search backs off and still reaches σ̂ = sqrt(RSS/N)."""
    X, y = data

    def model(x, y=None):
        scale = pyro.param("scale", torch.tensor(1.0, dtype=F64))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(linear(x), scale), obs=y)

    result = fit(model, *tensors(X, y), lr=100.0)  # long first trial steps cross scale = 0
    rss = np.sum((y - with_intercept(X) @ lstsq(X, y)) ** 2)
    assert result.converged and "non-finite loss and were treated as too long a step" in result.message
    assert float(result.params["scale"]) == pytest.approx(math.sqrt(rss / len(y)), rel=1e-6)


def test_non_convergence_warns_and_is_recorded(data):
    with pytest.warns(ConvergenceWarning, match=r"not converged after 2 L-BFGS steps"):
        result = fit(least_squares_model, *tensors(*data), num_steps=2)
    assert not result.converged and result.num_steps == 2 and "not converged" in result.message


def test_non_convergence_of_adam_warns(data):
    with pytest.warns(ConvergenceWarning, match=r"not converged after 5 Adam steps"):
        result = fit(least_squares_model, *tensors(*data), optimizer="adam", num_steps=5)
    assert not result.converged


def test_float32_fit_stops_at_its_precision_without_warning():
    """In float32 the summed loss carries ~1e-7 relative rounding: the fit stops there, converged,
    and agrees with the float64 reference to float32 accuracy."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(5000, 4))
    y = rng.poisson(np.exp(0.3 * (X @ rng.normal(size=4) + 0.3))).astype(float)

    def model(x, y=None):
        L.Poisson()("y", linear(x), obs=y)

    result = fit(model, torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
    glm = sm.GLM(y, with_intercept(X), family=sm.families.Poisson()).fit(tol=1e-12)
    assert result.converged and result.params["w"].dtype == torch.float32
    np.testing.assert_allclose(coefficients(result), glm.params, rtol=0, atol=1e-3)

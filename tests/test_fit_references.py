"""Issue 9: ``pyro_mle.fit`` never reports ``converged=True`` on a wrong answer.

Every fit here is checked against an answer computed without pyro_mle or Pyro, on data sets
shipped with statsmodels and scikit-learn (no downloads): numpy's ``lstsq``, the
least-absolute-deviations linear programme (scipy ``linprog``, cross-checked with statsmodels
``QuantReg``), scikit-learn's ``Lasso`` (cross-checked with its optimality conditions),
statsmodels GLMs (cross-checked with scipy on the same negative log-likelihood in
``test_references_agree``). Where no optimum exists (separable data, an unbounded density)
the fit must say so: ``converged=False`` and :class:`pyro_mle.NoOptimumWarning`.

Only the public API is used. Data are float64 unless a test says otherwise.
"""

import math
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import statsmodels.api as sm
import torch
from pyro.infer.autoguide.initialization import init_to_value
from scipy import optimize, stats
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import Lasso, LogisticRegression
from statsmodels.tools.sm_exceptions import ConvergenceWarning as StatsmodelsConvergenceWarning
from statsmodels.tools.sm_exceptions import DomainWarning, PerfectSeparationWarning

import pyro_mle
from pyro_mle.likelihoods import Bernoulli, Categorical, Laplace, Normal, Poisson

F64 = torch.float64
README = Path(__file__).resolve().parents[1] / "README.md"


def api(name):
    """A public name that issue 9 adds to pyro_mle: a clear failure while it is missing."""
    if not hasattr(pyro_mle, name):
        pytest.fail(f"pyro_mle.{name} does not exist (issue 9 adds it)")
    return getattr(pyro_mle, name)


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# ----------------------------------------------------------------------------- data
def longley():
    """NIST's ill-conditioned regression: 16 rows, constant + 6 unscaled columns, cond(X'X) ~ 2e19."""
    data = sm.datasets.longley.load_pandas()
    return sm.add_constant(data.exog.values), data.endog.values


def engel():
    """Household income against food expenditure (Koenker's median-regression example)."""
    data = sm.datasets.engel.load_pandas().data
    return sm.add_constant(data.income.values), data.foodexp.values


def cpunish():
    """As in statsmodels' GLM tests: log of VC100k96 (column 3), constant first."""
    data = sm.datasets.cpunish.load_pandas()
    X = data.exog.values.astype(float).copy()
    X[:, 3] = np.log(X[:, 3])
    return sm.add_constant(X), data.endog.values.astype(float)


def scotland():
    data = sm.datasets.scotland.load_pandas()
    return sm.add_constant(data.exog.values.astype(float)), data.endog.values.astype(float)


def randhie():
    """As in statsmodels' docs: the 9 columns and a constant last; 20,190 rows."""
    data = sm.datasets.randhie.load_pandas()
    return sm.add_constant(data.exog.values, prepend=False), data.endog.values


EIGHT_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
EIGHT_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


# ----------------------------------------------------------------------------- references
def lad_lp(X, y):
    """Least absolute deviations as a linear programme (HiGHS):
    min 1'(u + v) subject to X b + u - v = y, u, v >= 0. Returns (b, sum of |residuals|)."""
    n, p = X.shape
    c = np.r_[np.zeros(p), np.ones(2 * n)]
    bounds = [(None, None)] * p + [(0, None)] * (2 * n)
    r = optimize.linprog(c, A_eq=np.c_[X, np.eye(n), -np.eye(n)], b_eq=y, bounds=bounds, method="highs")
    assert r.status == 0, r.message
    return r.x[:p], r.fun


def glm(y, X, family, **kwargs):
    with warnings.catch_warnings():
        # statsmodels notes that the Gamma family's default inverse link can leave its domain
        warnings.simplefilter("ignore", DomainWarning)
        return sm.GLM(y, X, family=family).fit(tol=1e-13, maxiter=1000, **kwargs)


def lasso_kkt_violation(X, y, coef, intercept, alpha):
    """Largest violation of the optimality conditions of (1/2n)|y - Xw - c|^2 + alpha |w|_1."""
    g = X.T @ (y - X @ coef - intercept) / len(y)
    nz = coef != 0
    return max(
        np.abs(g[nz] - alpha * np.sign(coef[nz])).max(initial=0.0),
        np.maximum(np.abs(g[~nz]) - alpha, 0.0).max(initial=0.0),
        abs(np.mean(y - X @ coef - intercept)),
    )


def multinomial_reference(X, y):
    """scikit-learn's unpenalised multinomial logistic regression (C=inf), solved tightly."""
    return LogisticRegression(C=np.inf, tol=1e-12, max_iter=100_000).fit(X, y)


def warnings_of(call):
    """Run ``call``; return its result and the warnings it raised, as ``(category, message)``
    (the suite turns warnings into errors, so a test that allows a warning records it here and
    checks its class)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = call()
    return result, [(w.category, str(w.message)) for w in rec]


def assert_no_optimum(result, warned):
    """``converged=False`` and a :class:`pyro_mle.NoOptimumWarning` saying so, nothing else."""
    assert not result.converged, f"converged=True where no optimum exists: {result.message}"
    assert all(issubclass(c, pyro_mle.ConvergenceWarning) for c, _ in warned), warned
    no_optimum = api("NoOptimumWarning")
    assert issubclass(no_optimum, pyro_mle.ConvergenceWarning)
    assert any(issubclass(c, no_optimum) and "does not exist" in m for c, m in warned), warned


def test_references_agree():
    """The references of this file, each checked by an independent method."""
    # lstsq against NIST's certified Longley coefficients (StRD, 15 significant digits)
    X, y = longley()
    nist = [-3482258.63459582, 15.0618722713733, -0.358191792925910e-1, -2.02022980381683,
            -1.03322686717359, -0.511041056535807e-1, 1829.15146461355]  # fmt: skip
    np.testing.assert_allclose(np.linalg.lstsq(X, y, rcond=None)[0], nist, rtol=1e-7)
    # LAD: QuantReg's interior-point answer is the linear programme's vertex
    X, y = engel()
    lp, _ = lad_lp(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QuantReg reports a "convergence cycle" at p_tol=1e-12
        qr = sm.QuantReg(y, X).fit(q=0.5, p_tol=1e-12, max_iter=100_000).params
    np.testing.assert_allclose(qr, lp, rtol=1e-7)
    np.testing.assert_allclose(lp, [81.48224742, 0.5601805512], rtol=1e-8)
    # Lasso: coordinate descent satisfies the optimality conditions
    X, y = load_diabetes(return_X_y=True)
    lasso = Lasso(alpha=0.1, tol=1e-12, max_iter=10**6).fit(X, y)
    assert lasso_kkt_violation(X, y, lasso.coef_, lasso.intercept_, 0.1) < 1e-8
    assert (lasso.coef_ == 0).sum() == 3
    # GLMs: IRLS against scipy's trust-region Newton on the same negative log-likelihood
    X, y = cpunish()

    def poisson_nll(w):
        eta = X @ w
        return np.sum(np.exp(eta) - y * eta), X.T @ (np.exp(eta) - y)

    ref = glm(y, X, sm.families.Poisson()).params
    sci = optimize.minimize(
        poisson_nll,
        ref * 0.9,
        jac=True,
        method="trust-exact",
        hess=lambda w: X.T @ (np.exp(X @ w)[:, None] * X),
        options={"gtol": 1e-10},
    )
    np.testing.assert_allclose(sci.x, ref, rtol=1e-7)
    X, y = scotland()

    def gamma_nll(w):  # shape 1 (the coefficients' MLE does not depend on it); mean = 1 / (X w)
        eta = X @ w
        return np.sum(y * eta - np.log(eta)), X.T @ (y - 1 / eta)

    ref = glm(y, X, sm.families.Gamma()).params
    sci = optimize.minimize(
        gamma_nll,
        ref * 1.01,
        jac=True,
        method="trust-exact",
        hess=lambda w: X.T @ ((1 / (X @ w) ** 2)[:, None] * X),
        options={"gtol": 1e-14},
    )
    np.testing.assert_allclose(sci.x, ref, rtol=1e-7)
    X, y = randhie()

    def poisson_mean_nll(w):  # per row, so that the tolerances read as for a well-scaled problem
        eta = X @ w
        return np.mean(np.exp(eta) - y * eta), X.T @ (np.exp(eta) - y) / len(y)

    ref = glm(y, X, sm.families.Poisson()).params
    sci = optimize.minimize(
        poisson_mean_nll,
        np.zeros(X.shape[1]),
        jac=True,
        method="trust-exact",
        hess=lambda w: X.T @ (np.exp(X @ w)[:, None] * X) / len(y),
        options={"gtol": 1e-12},
    )
    np.testing.assert_allclose(sci.x, ref, rtol=1e-6, atol=1e-9)
    # Multinomial on iris sepal length: the MLE exists (statsmodels' Newton converges without a
    # separation warning) and scikit-learn finds it
    iris = load_iris()
    x1 = iris.data[:, :1]
    mn = sm.MNLogit(iris.target, sm.add_constant(x1)).fit(disp=0, method="newton", maxiter=100)
    assert mn.mle_retvals["converged"]
    np.testing.assert_allclose(
        multinomial_reference(x1, iris.target).predict_proba(x1), mn.predict(sm.add_constant(x1)), atol=1e-8
    )


# ----------------------------------------------------------------------------- 1. least squares
def ols_param(x, y=None):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
    Normal(scale=1.0)("y", x @ w, obs=y)


def ols_latent_scale(x, y=None):
    """The README's regression, in float64, with the scale a latent site too."""
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1] - 1, dtype=x.dtype), 10.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    s = pyro.sample("s", dist.HalfCauchy(torch.tensor(1000.0, dtype=x.dtype)))
    Normal(scale=s)("y", x[:, 1:] @ w + b, obs=y)


@pytest.mark.parametrize("model", [ols_param, ols_latent_scale], ids=["param_scale_1", "latent_w_b_scale"])
def test_longley_least_squares_equals_lstsq(model):
    X, y = longley()
    ref = np.linalg.lstsq(X, y, rcond=None)[0]
    result = pyro_mle.fit(model, torch.tensor(X), torch.tensor(y), seed=0)
    assert result.converged, result.message
    p = result.params
    est = p["w"].numpy() if "b" not in p else np.r_[p["b"].numpy(), p["w"].numpy()]
    np.testing.assert_allclose(est, ref, rtol=1e-6)
    if "s" in p:  # the MLE of a Normal scale is the root mean square residual
        rss = np.sum((y - X @ ref) ** 2)
        np.testing.assert_allclose(float(p["s"]), math.sqrt(rss / len(y)), rtol=1e-6)


# ----------------------------------------------------------------------------- 2-3. non-smooth
def test_median_regression_engel_equals_least_absolute_deviations():
    X, y = engel()
    ref, ref_sum = lad_lp(X, y)

    def median_regression(x, y=None):
        w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
        Laplace(scale=1.0)("y", x @ w, obs=y)

    result = pyro_mle.fit(median_regression, torch.tensor(X), torch.tensor(y), seed=0)
    assert result.converged, result.message
    w = result.params["w"].numpy()
    np.testing.assert_allclose(w, ref, rtol=1e-4)
    assert np.abs(y - X @ w).sum() <= ref_sum * (1 + 1e-8)


def test_laplace_prior_map_equals_lasso():
    """Normal(σ) likelihood, Laplace(0, b) prior, MAP: Σr²/2σ² + Σ|w|/b, which is n/σ² times
    scikit-learn's Σr²/2n + α|w|₁ with α = σ²/(n b). α = 0.1 zeroes 3 of 10 coefficients."""
    X, y = load_diabetes(return_X_y=True)
    n, alpha, sigma = len(y), 0.1, 50.0
    b = sigma**2 / (n * alpha)
    ref = Lasso(alpha=alpha, tol=1e-12, max_iter=10**6).fit(X, y)
    assert (ref.coef_ == 0).sum() == 3

    def lasso(x, y=None):
        w = pyro.sample("w", dist.Laplace(torch.zeros(x.shape[1], dtype=x.dtype), b).to_event(1))
        c = pyro.param("c", torch.zeros((), dtype=x.dtype))  # intercept: no prior, as in Lasso
        Normal(scale=sigma)("y", x @ w + c, obs=y)

    result = pyro_mle.fit(lasso, torch.tensor(X), torch.tensor(y), method="map", seed=0)
    assert result.converged, result.message
    w = result.params["w"].numpy()
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-5, atol=1e-5 * scale)  # zeros within 1e-5 · max|w|
    np.testing.assert_allclose(float(result.params["c"]), ref.intercept_, rtol=1e-5)


# ----------------------------------------------------------------------------- 4-5. no optimum
def test_separable_logistic_data_has_no_mle():
    iris = load_iris()
    X = sm.add_constant(iris.data[:, 2])  # petal length separates setosa from the rest
    y = (iris.target == 0).astype(float)
    with pytest.warns(PerfectSeparationWarning):  # the data really are separable
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StatsmodelsConvergenceWarning)
            sm.Logit(y, X).fit(disp=0, maxiter=100)

    def logistic(x, y=None):
        w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
        Bernoulli()("y", x @ w, obs=y)

    assert_no_optimum(*warnings_of(lambda: pyro_mle.fit(logistic, torch.tensor(X), torch.tensor(y), seed=0)))


def test_centred_eight_schools_has_no_map():
    """log p(θ | μ, τ) → +∞ as τ → 0 with every θ_j = μ: the MAP density is unbounded."""
    y, sigma = torch.tensor(EIGHT_Y, dtype=F64), torch.tensor(EIGHT_SIGMA, dtype=F64)

    def schools(sigma, y=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=F64)))
        with pyro.plate("school", len(sigma)):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    def log_joint(tau, mu=5.0):  # at theta_j = mu, with scipy: grows like -8 log tau
        return (
            stats.norm(0, 5).logpdf(mu)
            + stats.halfcauchy(scale=5).logpdf(tau)
            + stats.norm(mu, tau).logpdf(np.full(8, mu)).sum()
            + stats.norm(mu, EIGHT_SIGMA).logpdf(EIGHT_Y).sum()
        )

    assert log_joint(1e-2) < log_joint(1e-8) < log_joint(1e-16)  # no maximum: sup is +inf
    assert_no_optimum(*warnings_of(lambda: pyro_mle.fit(schools, sigma, y, method="map", seed=0)))


# ----------------------------------------------------------------------------- 6. randomness
def _engel_ols_data():
    X, y = engel()
    return torch.tensor(X), torch.tensor(y)


def _seed_everything(seed):
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def _draws():
    return np.random.rand(), random.random(), torch.rand(3).tolist()


def _call_fit(x, y):
    return pyro_mle.fit(ols_param, x, y, seed=0)


def _call_to_datatree(x, y):
    result = pyro_mle.fit(ols_param, x, y, seed=0)
    _seed_everything(123)  # only to_datatree between the seeding and the draws
    return pyro_mle.to_datatree(result)


def _call_laplace_posterior(x, y):
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1000.0).to_event(1))
        Normal(scale=100.0)("y", x @ w, obs=y)

    return pyro_mle.posterior(model, x, y, method="laplace", num_samples=50, seed=0, progress=False)


@pytest.mark.parametrize(
    "call", [_call_fit, _call_to_datatree, _call_laplace_posterior], ids=["fit", "to_datatree", "posterior_laplace"]
)
def test_calls_leave_the_global_generators_alone(call):
    x, y = _engel_ols_data()
    _seed_everything(123)
    expected = _draws()
    _seed_everything(123)
    call(x, y)
    assert _draws() == expected


def test_bootstrap_loop_gives_different_estimates():
    x, y = _engel_ols_data()
    np.random.seed(1)
    estimates = set()
    for _ in range(5):
        rows = torch.as_tensor(np.random.randint(0, len(y), len(y)))
        estimates.add(tuple(pyro_mle.fit(ols_param, x[rows], y[rows], seed=0).params["w"].tolist()))
    assert len(estimates) == 5


def test_chain_streams_of_different_seeds_differ():
    """Chain 1 of seed 0 must not be chain 0 of seed 1 (``seed + c`` streams overlap)."""
    y, sigma = torch.tensor(EIGHT_Y, dtype=F64), torch.tensor(EIGHT_SIGMA, dtype=F64)

    def pooled(sigma, y=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 5.0))
        with pyro.plate("school", len(sigma)):
            pyro.sample("y", dist.Normal(mu, sigma), obs=y)

    def chains(seed, n):
        post = pyro_mle.posterior(
            pooled,
            sigma,
            y,
            method="nuts",
            num_samples=20,
            warmup=20,
            chains=n,
            seed=seed,
            progress=False,
            jit=False,
            diagnose=False,
        )
        return post.samples["mu"]

    assert not torch.equal(chains(0, 2)[1], chains(1, 1)[0])


# ----------------------------------------------------------------------------- 7. GLMs
def test_poisson_mle_cpunish_ignores_the_prior():
    X, y = cpunish()
    ref = glm(y, X, sm.families.Poisson()).params

    def poisson(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1000.0).to_event(1))
        Poisson()("y", x @ w, obs=y)

    result = pyro_mle.fit(poisson, torch.tensor(X), torch.tensor(y), seed=0)
    assert result.converged, result.message
    np.testing.assert_allclose(result.params["w"].numpy(), ref, rtol=1e-5)


def test_gamma_glm_scotland_inverse_link_with_wide_priors():
    """statsmodels' Gamma GLM with its default inverse-power link: mean = 1/(X w), so
    rate = shape / mean = shape · X w. The start (least squares of 1/y on X) has X w > 0."""
    X, y = scotland()
    ref = glm(y, X, sm.families.Gamma()).params

    def gamma(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1000.0).to_event(1))
        shape = pyro.sample("shape", dist.HalfCauchy(torch.tensor(1000.0, dtype=x.dtype)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Gamma(shape, shape * (x @ w)), obs=y)

    w0 = np.linalg.lstsq(X, 1 / y, rcond=None)[0]
    assert (X @ w0 > 0).all()
    init = init_to_value(values={"w": torch.tensor(w0), "shape": torch.tensor(1.0, dtype=F64)})
    result = pyro_mle.fit(gamma, torch.tensor(X), torch.tensor(y), init_loc_fn=init, seed=0)
    assert result.converged, result.message
    np.testing.assert_allclose(result.params["w"].numpy(), ref, rtol=1e-4)


# ----------------------------------------------------------------------------- 8. same call twice
def test_same_call_twice_gives_identical_estimates():
    """A network built once outside the model, trained in place by the first call. The L2
    term (a factor, so MLE keeps it) makes the optimum exist: iris setosa is separable, and
    without it the weights run off. 50 L-BFGS steps bound the cost: the claim is that both
    calls give the same answer, converged or not (a ConvergenceWarning is allowed)."""
    iris = load_iris()
    x, y = torch.tensor(iris.data, dtype=F64), torch.tensor(iris.target)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(F64)

    def mlp(x, y=None):
        f = pyro.module("mlp", net)
        pyro.factor("l2", -0.05 * sum((p**2).sum() for p in net.parameters()))
        Categorical()("y", f(x), obs=y)

    first, warned_first = warnings_of(lambda: pyro_mle.fit(mlp, x, y, seed=0, num_steps=50))
    second, warned_second = warnings_of(lambda: pyro_mle.fit(mlp, x, y, seed=0, num_steps=50))
    assert first.params.keys() == second.params.keys()
    for name in first.params:
        assert torch.equal(first.params[name], second.params[name]), name
    assert all(issubclass(c, pyro_mle.ConvergenceWarning) for c, _ in warned_first + warned_second)
    assert [c for c, _ in warned_first] == [c for c, _ in warned_second]


# ----------------------------------------------------------------------------- 9. minibatch Adam
def test_minibatch_adam_randhie_poisson_is_close_or_says_not_converged():
    X, y = randhie()
    ref = glm(y, X, sm.families.Poisson())
    x, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    N = len(yt)

    def poisson(x, y=None):
        w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
        with pyro.plate("data", N, subsample_size=256) as idx:
            Poisson()("y", x[idx] @ w, obs=None if y is None else y[idx])

    result, warned = warnings_of(lambda: pyro_mle.fit(poisson, x, yt, seed=0, num_steps=5000))
    assert all(issubclass(c, pyro_mle.ConvergenceWarning) for c, _ in warned), warned
    if result.converged:
        assert not warned
        z = np.abs(result.params["w"].double().numpy() - ref.params) / ref.bse
        assert z.max() <= 0.1, f"converged=True but {z.max():.2f} GLM standard errors from the MLE: {z.round(2)}"
    else:
        assert warned, "converged=False without a ConvergenceWarning"


# ----------------------------------------------------------------------------- 10. interrupt
def test_interrupt_keeps_the_last_estimate():
    x, y = _engel_ols_data()
    x = x / x.abs().max(0).values  # well scaled, so Adam moves every coefficient
    calls = {"n": 0}

    def ols(x, y=None):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a fit
        w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
        Normal(scale=1.0)("y", x @ w, obs=y)

    interrupted = api("FitInterrupted")
    try:  # a bare KeyboardInterrupt must not escape into pytest, which would stop the session
        pyro_mle.fit(ols, x, y, optimizer="adam", num_steps=1000, jit=False, seed=0)
    except KeyboardInterrupt as e:
        err = e
    else:
        pytest.fail("the model raised KeyboardInterrupt but fit returned")
    assert isinstance(err, interrupted), f"{type(err).__name__} propagated bare"
    assert isinstance(err.fit, pyro_mle.Fit)
    assert not err.fit.converged
    assert err.fit.message
    w = err.fit.params["w"]
    assert torch.isfinite(w).all() and (w != 0).all()


# ----------------------------------------------------------------------------- 11. unused parameters
def _iris_float32():
    iris = load_iris()
    return torch.tensor(iris.data, dtype=torch.float32), torch.tensor(iris.target)


def test_module_built_inside_the_model_is_named():
    """The README's old quickstart: a fresh Linear on every call, so the loss never depends on
    the parameters that pyro.module registered."""
    x, y = _iris_float32()

    def classifier(x, y=None):
        net = pyro.module("net", torch.nn.Linear(x.shape[1], 3))
        Categorical()("y", net(x), obs=y)

    unused = api("UnusedParameterError")
    assert issubclass(unused, ValueError)
    with pytest.raises(unused, match="net"):
        pyro_mle.fit(classifier, x, y, seed=0)


def test_latent_only_in_a_masked_prior_is_named():
    """Under MLE the prior of theta is masked, so tau (only its scale) has no path to the loss."""
    y, sigma = torch.tensor(EIGHT_Y, dtype=F64), torch.tensor(EIGHT_SIGMA, dtype=F64)

    def model(sigma, y=None):
        tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=F64)))
        with pyro.plate("school", len(sigma)):
            theta = pyro.sample("theta", dist.Normal(torch.tensor(0.0, dtype=F64), tau))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    with pytest.raises(api("UnusedParameterError"), match="tau"):
        pyro_mle.fit(model, sigma, y, method="mle", seed=0)


# ----------------------------------------------------------------------------- 12. README quickstart
def readme_quickstart():
    """The first ```python block under the README's "## Quickstart" heading, verbatim."""
    text = README.read_text(encoding="utf-8")
    heading = re.search(r"^## Quickstart.*$", text, flags=re.MULTILINE)
    assert heading, "README.md has no '## Quickstart' section"
    block = re.search(r"^```python\n(.*?)^```", text[heading.end() :], flags=re.MULTILINE | re.DOTALL)
    assert block, "README.md's Quickstart section has no ```python block"
    return block.group(1)


@pytest.fixture(scope="module")
def quickstart():
    """The namespace the README quickstart leaves behind, run once as a script. Its classifier
    MLE must say that the estimate does not exist (iris's setosa is linearly separable), and
    nothing else may warn."""
    namespace = {"__name__": "readme_quickstart"}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        exec(compile(readme_quickstart(), f"{README}:Quickstart", "exec"), namespace)
    pyro.clear_param_store()
    namespace["_warnings"] = [(w.category, str(w.message)) for w in rec]
    return namespace


def test_readme_quickstart_runs_verbatim(quickstart):
    warned = quickstart["_warnings"]
    assert [c for c, _ in warned] == [pyro_mle.NoOptimumWarning], warned
    assert "does not exist" in warned[0][1] and "separated" in warned[0][1]
    fits = {k: v for k, v in quickstart.items() if isinstance(v, pyro_mle.Fit)}
    assert not fits.pop("clf").converged
    assert all(f.converged for f in fits.values()), [f.message for f in fits.values() if not f.converged]


def test_readme_quickstart_regression_is_least_squares_and_ridge(quickstart):
    X, Y = load_diabetes(return_X_y=True)
    y = (Y - Y.mean()) / Y.std()
    design = np.c_[X, np.ones(len(X))]
    ols = np.linalg.lstsq(design, y, rcond=None)[0]
    got = np.r_[quickstart["fit"].params["w"].numpy(), quickstart["fit"].params["b"].numpy()]
    np.testing.assert_allclose(got, ols, rtol=1e-6, atol=1e-9)
    # MAP with N(0, 10) priors on w and b and scale 0.7: ridge with alpha = 0.7²/10² on every column
    alpha = 0.7**2 / 10.0**2
    ridge = np.linalg.solve(design.T @ design + alpha * np.eye(design.shape[1]), design.T @ y)
    got = np.r_[quickstart["ridge"].params["w"].numpy(), quickstart["ridge"].params["b"].numpy()]
    np.testing.assert_allclose(got, ridge, rtol=1e-6, atol=1e-9)


def test_readme_quickstart_classifiers_against_scikit_learn(quickstart):
    """The MLE (weights running off: setosa is separable) classifies as scikit-learn's
    unpenalised multinomial model does; the MAP with Normal(0, 1) weight priors is scikit-learn's
    L2-penalised LogisticRegression(C=1.0) (intercepts unpenalised in both): probabilities
    within 1e-4 (float32)."""
    iris = load_iris()
    x = torch.tensor(iris.data, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning_sklearn())
        unpenalised = multinomial_reference(iris.data, iris.target)
    accuracy = float((quickstart["net"](x).argmax(-1).numpy() == iris.target).mean())
    assert accuracy == pytest.approx(unpenalised.score(iris.data, iris.target), abs=1 / 150)
    ridge = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(iris.data, iris.target)
    probs = quickstart["map_clf"].predict(x, num_samples=1).distributions["y"].probs.double().numpy()
    np.testing.assert_allclose(probs, ridge.predict_proba(iris.data), atol=1e-4)


def ConvergenceWarning_sklearn():  # noqa: N802 - a class, looked up lazily
    from sklearn.exceptions import ConvergenceWarning

    return ConvergenceWarning

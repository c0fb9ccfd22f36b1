"""The ``models/`` collection: every file follows the model-file convention and fits.

Each ``models/<name>.py`` is loaded by path, as the ``pyro-mle`` command loads it, and must
provide a docstring naming its likelihood and loss, ``model(x, y=None)`` and
``load_data(n, seed)``. Generic tests run over every file: the data, the MLE fit, a short
NUTS run, predictions. Where a model has an answer computed without pyro_mle or Pyro
(numpy's lstsq, scipy's densities and optimizers, scikit-learn, statsmodels, linear
programming), a test checks the maximum-likelihood fit against it on the model's default
data, cast to float64 (the models follow the dtype of x).
"""

import functools
import importlib.util
import math
import warnings
from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import optimize, special, stats
from sklearn.linear_model import LogisticRegression

import pyro_mle
from pyro_mle.likelihoods import Likelihood, names

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL_NAMES = sorted(p.stem for p in MODELS_DIR.glob("*.py"))

#: Rows for the data-shape and NUTS tests; fits use each model's default data.
SMALL_N = 40

#: Models whose maximum-likelihood fit may stop short of fit()'s convergence test, and why.
#: A ConvergenceWarning from any other model fails its test (pytest runs with
#: filterwarnings=error).
MAY_NOT_CONVERGE = {
    # ReLU units make the least-squares loss non-smooth in the joints and slopes (a kink
    # wherever a joint crosses a data point), so the line search can stall on one.
    "shallow_network": "non-smooth ReLU network",
    # Small tanh networks fitted in float32: the line search stalls where the loss's rounding
    # (about 1e-7 of it) hides the remaining slope, before the relative-gradient test holds;
    # fit() says so and advises float64. The tests below judge them by their NLL.
    "heteroscedastic": "float32 network, stalls at the loss's rounding",
    "mixture_density": "float32 network, stalls at the loss's rounding",
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The models are tiny (a few hundred rows, at most a few dozen parameters): intra-op
    threads only add synchronisation, and on a busy 2-core machine they made this file
    3-5 times slower. Restored afterwards for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_models_directory_is_not_a_package_and_holds_the_collection():
    assert not (MODELS_DIR / "__init__.py").exists()
    assert len(MODEL_NAMES) >= 18, MODEL_NAMES


@functools.cache
def load(name: str) -> ModuleType:
    """A model file loaded by path, as the CLI loads it."""
    spec = importlib.util.spec_from_file_location(f"pyro_mle_model_{name}", MODELS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mle(name: str, x: torch.Tensor, y: torch.Tensor) -> pyro_mle.Fit:
    with warnings.catch_warnings():
        if name in MAY_NOT_CONVERGE:
            warnings.simplefilter("ignore", pyro_mle.ConvergenceWarning)
        return pyro_mle.fit(load(name).model, x, y, method="mle")


@functools.cache
def default_fit(name: str) -> pyro_mle.Fit:
    """The MLE on the model's default data, as the CLI runs it (float32)."""
    return mle(name, *load(name).load_data())


@functools.cache
def float64_fit(name: str) -> tuple[pyro_mle.Fit, np.ndarray, np.ndarray]:
    """The MLE on the default data cast to float64, with that data as numpy arrays."""
    x, y = (t.double() for t in load(name).load_data())
    return mle(name, x, y), x.numpy(), y.numpy()


def sites(name: str, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict]:
    """(latent site → value shape, observed site → value shape) from one Pyro trace."""
    trace = poutine.trace(load(name).model).get_trace(x, y)
    latent, observed = {}, {}
    for site_name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        (observed if site["is_observed"] else latent)[site_name] = tuple(site["value"].shape)
    return latent, observed


def heads_used(name: str, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, Likelihood]]:
    """(site, head) for every likelihood head the model calls."""
    used = []
    call = Likelihood.__call__

    def recording(self, site, outputs, obs=None):
        used.append((site, self))
        return call(self, site, outputs, obs)

    with mock.patch.object(Likelihood, "__call__", recording):
        load(name).model(x, y)
    return used


def param(fit: pyro_mle.Fit, name: str) -> np.ndarray:
    return np.atleast_1d(fit.params[name].detach().numpy())


def scipy_mle(nll, x0) -> optimize.OptimizeResult:
    """Minimise a numpy NLL with scipy's BFGS from x0 (an independent optimizer)."""
    result = optimize.minimize(nll, np.asarray(x0, dtype=float), method="BFGS", options={"gtol": 1e-8})
    assert result.success or "precision loss" in result.message, result.message
    return result


# ----------------------------------------------------------------------------- the convention
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_docstring_names_the_likelihood_and_the_loss(name):
    module = load(name)
    doc = module.__doc__ or ""
    lines = doc.strip().splitlines()
    assert lines and lines[0].strip(), "the docstring's first line is a one-line title"
    assert len(lines) == 1 or not lines[1].strip(), "the title is one line, then a blank line"
    assert "Likelihood" in doc and "→" in doc and "Data" in doc
    heads = heads_used(name, *module.load_data(n=SMALL_N))
    assert heads
    assert module.LIKELIHOOD in names()
    assert module.LIKELIHOOD in {type(head).name for _, head in heads}
    for _, head in heads:
        assert type(head).__name__ + "(" in doc, f"the docstring names {type(head).__name__}"
        assert head.loss_name in doc, f"the docstring names the loss {head.loss_name!r}"
        assert head.loss_name in module.LOSS


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_load_data_gives_matching_float_tensors(name):
    module = load(name)
    x, y = module.load_data(n=SMALL_N, seed=0)
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
    assert x.is_floating_point() and y.is_floating_point() and x.dtype == y.dtype
    assert x.shape[0] == y.shape[0] == SMALL_N
    assert x.shape[1:] == (() if len(module.X_COLUMNS) == 1 else (len(module.X_COLUMNS),))
    assert y.shape[1:] == (() if len(module.Y_COLUMNS) == 1 else (len(module.Y_COLUMNS),))
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    x2, y2 = module.load_data(n=SMALL_N, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2), "load_data is deterministic for a seed"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_is_a_latent_site_and_follows_the_dtype_of_x(name):
    x, y = (t.double() for t in load(name).load_data(n=SMALL_N))
    trace = poutine.trace(load(name).model).get_trace(x, y)
    assert not [n for n, s in trace.nodes.items() if s["type"] == "param"], "parameters need priors"
    samples = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
    assert any(not s["is_observed"] for s in samples.values())
    for site_name, site in samples.items():
        assert site["value"].dtype == torch.float64, site_name
        assert torch.isfinite(site["fn"].log_prob(site["value"])).all(), site_name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_observed_sites_are_named_by_the_collection_rule(name):
    """Generic tools (the CLI, the examples) rely on it: a model with one observed site
    names it ``"y"``; a model with several names them after its ``Y_COLUMNS``."""
    _, observed = sites(name, *load(name).load_data(n=SMALL_N))
    assert tuple(observed) == (("y",) if len(observed) == 1 else load(name).Y_COLUMNS)


# ----------------------------------------------------------------------------- fit, NUTS, predict
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_mle_fit_finishes_with_a_finite_nll(name):
    fit = default_fit(name)
    assert math.isfinite(fit.nll)
    assert fit.converged or name in MAY_NOT_CONVERGE, fit.message
    _, observed = sites(name, *load(name).load_data())
    assert set(fit.observed) == set(observed)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_nuts_draws_every_latent_site(name):
    x, y = load(name).load_data(n=SMALL_N, seed=0)
    # a shallow tree bounds the cost of the few warm-up steps, whose step size is still crude
    post = pyro_mle.posterior(
        load(name).model,
        x,
        y,
        method="nuts",
        num_samples=5,
        warmup=5,
        chains=1,
        diagnose=False,
        max_tree_depth=5,
    )
    latent, _ = sites(name, x, y)
    assert set(post.samples) == set(latent)
    for site_name, shape in latent.items():
        draws = post.samples[site_name]
        assert draws.shape == (1, 5) + shape, site_name
        assert torch.isfinite(draws).all(), site_name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predict_draws_every_observed_site_from_x_alone(name):
    x, y = load(name).load_data()
    _, observed = sites(name, x, y)
    prediction = default_fit(name).predict(x, num_samples=3, seed=0)  # the model runs with y=None
    assert set(prediction.draws) == set(observed)
    for site_name, shape in observed.items():
        draws = prediction.draws[site_name]
        assert draws.shape == (3,) + shape, site_name
        assert torch.isfinite(draws.double()).all(), site_name


# ----------------------------------------------------------------------------- closed forms
def with_intercept(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1)
    return np.c_[x, np.ones(len(x))]


def test_linear_regression_is_least_squares():
    fit, x, y = float64_fit("linear_regression")
    coef = np.linalg.lstsq(with_intercept(x), y, rcond=None)[0]
    np.testing.assert_allclose(np.r_[param(fit, "w"), param(fit, "b")], coef, atol=1e-6)
    sigma = load("linear_regression").NOISE_SCALE
    rss = np.sum((y - with_intercept(x) @ coef) ** 2)
    assert fit.nll == pytest.approx(rss / (2 * sigma**2) + len(y) * math.log(sigma * math.sqrt(2 * math.pi)), rel=1e-9)


def test_diabetes_regression_is_least_squares_with_the_rms_residual_as_scale():
    fit, x, y = float64_fit("diabetes_regression")
    assert x.shape == (442, 10)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-6)  # standardised in float32
    coef = np.linalg.lstsq(with_intercept(x), y, rcond=None)[0]
    np.testing.assert_allclose(np.r_[param(fit, "w"), param(fit, "b")], coef, atol=1e-6)
    sigma = np.sqrt(np.mean((y - with_intercept(x) @ coef) ** 2))
    assert param(fit, "sigma")[0] == pytest.approx(sigma, rel=1e-6)
    assert fit.nll == pytest.approx(-stats.norm(with_intercept(x) @ coef, sigma).logpdf(y).sum(), rel=1e-9)


def test_height_weight_is_least_squares_per_output_with_its_own_scale():
    fit, age, hw = float64_fit("height_weight")
    coef = np.linalg.lstsq(with_intercept(age), hw, rcond=None)[0]  # (2, 2): one column per output
    np.testing.assert_allclose(param(fit, "slope"), coef[0], rtol=1e-5)
    np.testing.assert_allclose(param(fit, "intercept"), coef[1], rtol=1e-5)
    residuals = hw - with_intercept(age) @ coef
    scales = np.sqrt(np.mean(residuals**2, axis=0))
    np.testing.assert_allclose(param(fit, "scales"), scales, rtol=1e-5)
    assert scales[1] / scales[0] > 50, "the outputs live on very different scales"
    assert fit.nll == pytest.approx(-stats.norm(0, scales).logpdf(residuals).sum(), rel=1e-9)


@pytest.mark.parametrize("name", ["binary_classification", "breast_cancer_classification"])
def test_bernoulli_models_are_unpenalised_logistic_regression(name):
    fit, x, y = float64_fit(name)
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(param(fit, "w"), reference.coef_[0], atol=1e-4)
    assert param(fit, "b")[0] == pytest.approx(reference.intercept_[0], abs=1e-4)
    p = reference.predict_proba(x)[:, 1]
    assert fit.nll == pytest.approx(-np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)), rel=1e-8)


def test_multiclass_classification_is_multinomial_logistic_regression():
    fit, x, y = float64_fit("multiclass_classification")
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x, y)
    # weights are identified only up to a common shift; the probabilities are unique
    probs = special.softmax(x @ param(fit, "W").reshape(2, 3) + param(fit, "b"), axis=1)
    np.testing.assert_allclose(probs, reference.predict_proba(x), atol=1e-5)
    p_observed = reference.predict_proba(x)[np.arange(len(y)), y.astype(int)]
    assert fit.nll == pytest.approx(-np.log(p_observed).sum(), rel=1e-8)


def test_poisson_counts_is_the_poisson_glm():
    fit, x, y = float64_fit("poisson_counts")
    glm = sm.GLM(y, with_intercept(x), family=sm.families.Poisson()).fit(tol=1e-12)
    np.testing.assert_allclose(np.r_[param(fit, "w"), param(fit, "b")], glm.params, atol=1e-6)
    assert fit.nll == pytest.approx(-glm.llf, rel=1e-9)


def test_negative_binomial_counts_is_statsmodels_nb2():
    fit, x, y = float64_fit("negative_binomial_counts")
    nb2 = sm.NegativeBinomial(y, with_intercept(x), loglike_method="nb2").fit(method="newton", tol=1e-12, disp=0)
    assert nb2.mle_retvals["converged"]
    slope, const, alpha = nb2.params  # statsmodels' dispersion alpha is 1/r
    np.testing.assert_allclose(np.r_[param(fit, "a"), param(fit, "b")], [const, slope], atol=1e-5)
    assert param(fit, "r")[0] == pytest.approx(1 / alpha, rel=1e-4)
    assert fit.nll == pytest.approx(-nb2.llf, rel=1e-9)
    poisson = sm.GLM(y, with_intercept(x), family=sm.families.Poisson()).fit()
    assert -nb2.llf < -poisson.llf - 50, "the counts are over-dispersed: NB2 fits far better than Poisson"


# ----------------------------------------------------------------------------- robust regression
def test_robust_laplace_is_least_absolute_deviations_and_resists_the_outliers():
    """LAD by linear programming: min Σ(u + v) s.t. Aβ + u − v = y, u, v ≥ 0.

    fit solves the L1 loss exactly (majorise–minimise, then an active-set finish at the LAD
    vertex), so the line is the LP's and the scale its mean absolute residual.
    """
    fit, x, y = float64_fit("robust_laplace")
    A = with_intercept(x)
    n, k = A.shape
    lp = optimize.linprog(
        np.r_[np.zeros(k), np.ones(2 * n)],
        A_eq=np.c_[A, np.eye(n), -np.eye(n)],
        b_eq=y,
        bounds=[(None, None)] * k + [(0, None)] * (2 * n),
        method="highs",
    )
    assert lp.status == 0
    slope, intercept = lp.x[:k]
    assert fit.converged, fit.message
    np.testing.assert_allclose([param(fit, "slope")[0], param(fit, "intercept")[0]], [slope, intercept], rtol=1e-6)
    b = lp.fun / n  # the MLE of the Laplace scale is the mean absolute residual
    assert param(fit, "b")[0] == pytest.approx(b, rel=1e-8)
    assert fit.nll == pytest.approx(-stats.laplace(A @ lp.x[:k], b).logpdf(y).sum(), rel=1e-10)
    least_squares_slope = np.linalg.lstsq(A, y, rcond=None)[0][0]
    assert abs(slope - 2.0) < 0.2 < abs(least_squares_slope - 2.0)


def test_robust_student_t_matches_scipy_and_resists_the_outliers():
    fit, x, y = float64_fit("robust_student_t")
    df = load("robust_student_t").DF

    def nll(theta):
        intercept, slope, log_sigma = theta
        return -stats.t(df, intercept + slope * x, np.exp(log_sigma)).logpdf(y).sum()

    ref = scipy_mle(nll, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(
        [param(fit, "intercept")[0], param(fit, "slope")[0], np.log(param(fit, "sigma")[0])], ref.x, atol=1e-4
    )
    assert fit.nll == pytest.approx(ref.fun, rel=1e-8)
    least_squares_slope = np.linalg.lstsq(with_intercept(x), y, rcond=None)[0][0]
    assert abs(param(fit, "slope")[0] - 2.0) < 0.2 < abs(least_squares_slope - 2.0)


# ----------------------------------------------------------------------------- other families, against scipy
def softplus(f):
    return np.logaddexp(0.0, f)


def von_mises_nll(x, direction, a, b, log_kappa):
    return -stats.vonmises(np.exp(log_kappa), loc=2 * np.arctan(a + b * x)).logpdf(direction).sum()


def gamma_nll(x, y, a, b, log_alpha):
    return -stats.gamma(np.exp(log_alpha), scale=1 / softplus(a + b * x)).logpdf(y).sum()


def test_wind_direction_matches_scipy_von_mises():
    fit, x, y = float64_fit("wind_direction")
    ref = scipy_mle(lambda t: von_mises_nll(x, y, *t), [0.0, 0.0, 0.0])
    got = [param(fit, "a")[0], param(fit, "b")[0], np.log(param(fit, "kappa")[0])]
    np.testing.assert_allclose(got, ref.x, atol=1e-4)
    assert fit.nll == pytest.approx(ref.fun, rel=1e-8)


def test_wind_direction_and_speed_adds_a_von_mises_and_a_gamma_nll():
    fit, x, y = float64_fit("wind_direction_and_speed")
    direction = scipy_mle(lambda t: von_mises_nll(x, y[:, 0], *t), [0.0, 0.0, 0.0])
    speed = scipy_mle(lambda t: gamma_nll(x, y[:, 1], *t), [0.0, 0.0, 0.0])
    got = [param(fit, k)[0] for k in ("a", "b", "kappa", "c", "d", "alpha")]
    got[2], got[5] = np.log(got[2]), np.log(got[5])
    np.testing.assert_allclose(got, np.r_[direction.x, speed.x], atol=1e-4)
    assert fit.nll == pytest.approx(direction.fun + speed.fun, rel=1e-8)


def test_gamma_magnitudes_matches_scipy_gamma():
    fit, x, y = float64_fit("gamma_magnitudes")
    ref = scipy_mle(lambda t: gamma_nll(x, y, *t), [0.0, 0.0, 0.0])
    got = [param(fit, "a")[0], param(fit, "b")[0], np.log(param(fit, "alpha")[0])]
    np.testing.assert_allclose(got, ref.x, atol=1e-4)
    assert fit.nll == pytest.approx(ref.fun, rel=1e-8)


def test_beta_proportions_matches_scipy_beta():
    fit, x, y = float64_fit("beta_proportions")

    def nll(theta):
        a1, a0, b1, b0 = theta
        return -stats.beta(softplus(a1 + b1 * x), softplus(a0 + b0 * x)).logpdf(y).sum()

    ref = scipy_mle(nll, [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(np.r_[param(fit, "intercept"), param(fit, "slope")], ref.x, atol=1e-4)
    assert fit.nll == pytest.approx(ref.fun, rel=1e-8)


def test_rankings_match_an_independent_plackett_luce_likelihood():
    fit, x, y = float64_fit("rankings")
    features = load("rankings").ITEM_FEATURES.double().numpy()
    order = y.astype(int)

    def nll(theta):
        scores = (theta[:2] + x[:, None] * theta[2:]) @ features.T
        s = np.take_along_axis(scores, order, axis=1)  # scores in ranked order, best first
        remaining = np.logaddexp.accumulate(s[:, ::-1], axis=1)[:, ::-1]  # log Σ_{m ≥ j} exp s_m
        return -(s - remaining).sum()

    ref = scipy_mle(nll, np.zeros(4))
    np.testing.assert_allclose(np.r_[param(fit, "taste"), param(fit, "income_effect")], ref.x, atol=1e-4)
    assert fit.nll == pytest.approx(ref.fun, rel=1e-8)


# ----------------------------------------------------------------------------- networks: no closed form
def test_shallow_network_bends_where_a_line_cannot():
    """The 1-3-1 network's least-squares fit is multimodal, so no closed form; but its
    optimum must beat the best straight line by far and come near the simulating network."""
    module = load("shallow_network")
    x, y = (t.double().numpy() for t in module.load_data())
    sigma = module.NOISE_SCALE
    line = with_intercept(x) @ np.linalg.lstsq(with_intercept(x), y, rcond=None)[0]
    line_nll = -stats.norm(line, sigma).logpdf(y).sum()
    truth = -0.3 + 2.0 * np.maximum(0.3 - x, 0) - np.maximum(2 * x - 1, 0) + 7.0 * np.maximum(0.65 * x - 0.5, 0)
    truth_nll = -stats.norm(truth, sigma).logpdf(y).sum()
    # multimodal: restart from three seeds (the start of a network's symmetric weights is random)
    # and keep the best, as one would by hand
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyro_mle.ConvergenceWarning)
        x32, y32 = module.load_data()
        nll = min(pyro_mle.fit(module.model, x32, y32, seed=seed).nll for seed in range(3))
    assert nll < line_nll - 100
    assert nll < truth_nll + 15


def test_heteroscedastic_beats_any_constant_scale_and_widens_with_x():
    module = load("heteroscedastic")
    x, y = module.load_data()
    fit = default_fit("heteroscedastic")
    # even given the true mean, a single scale fits worse than the predicted ones
    residuals = (y - torch.sin(3 * x)).double().numpy()
    constant_nll = -stats.norm(0, np.sqrt(np.mean(residuals**2))).logpdf(residuals).sum()
    assert fit.nll < constant_nll - 50
    scale = fit.predict(torch.tensor([0.2, 1.8]), num_samples=1).distributions["y"].scale
    assert scale[1] > 3 * scale[0]


def test_mixture_density_network_beats_a_single_normal():
    module = load("mixture_density")
    x, y = (t.double().numpy() for t in module.load_data())
    fit = default_fit("mixture_density")
    # the best single Normal around the true band centre sin(3x) sits in the empty gap
    centre = y - np.sin(3 * x)
    single_nll = -stats.norm(centre.mean(), centre.std()).logpdf(centre).sum()
    upper = special.expit(2 * x)
    truth_nll = -np.log(
        upper * stats.norm(np.sin(3 * x) + 0.8, 0.1).pdf(y) + (1 - upper) * stats.norm(np.sin(3 * x) - 0.8, 0.1).pdf(y)
    ).sum()
    assert fit.nll < single_nll - 200
    assert fit.nll < truth_nll + 20
    assert np.allclose(param(fit, "scales"), 0.1, rtol=0.2), "each component is one band's noise"

"""Cross-validation by refitting (pyro_mle.reloo, pyro_mle.kfold) against the closed-form
leave-out predictive densities of a conjugate Normal model with known scale (scipy)."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import pyro_mle
from pyro_mle._approx_loo import posterior_loo

PRIOR_SCALE, SCALE = 2.0, 1.0
Y = torch.tensor([0.3, -0.5, 1.1, 0.2, -0.9, 0.4, 0.0, 6.0], dtype=torch.float64)  # row 7: an outlier


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), PRIOR_SCALE))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, SCALE), obs=y)


def exact_elpd(train, test):
    """log p(y_test | y_train), each row on its own: the posterior of mu given the training rows is
    Normal(m, 1/precision), the predictive of a new row Normal(m, 1/precision + SCALE²)."""
    y = Y.numpy()
    precision = 1 / PRIOR_SCALE**2 + len(train) / SCALE**2
    m = y[train].sum() / SCALE**2 / precision
    return stats.norm(m, np.sqrt(1 / precision + SCALE**2)).logpdf(y[test])


@pytest.fixture(scope="module")
def post():
    # Laplace is exact for this linear-Gaussian model: its draws are posterior draws
    # seed 0: Pareto k 0.83 at the outlier (k is itself an estimate; 0.36 to 0.83 over seeds 0-3)
    return pyro_mle.posterior(model, Y, method="laplace", num_samples=2000, chains=2, seed=0)


def test_reloo_refits_the_outlier_and_keeps_the_rest(post):
    dt = pyro_mle.to_datatree(post, predictive=False)
    # reloo starts from the library's PSIS-LOO of Laplace draws (loo_approximate_posterior)
    psis = posterior_loo(post, dt)
    assert psis.pareto_k.values[7] > 0.7 and (psis.pareto_k.values[:7] < 0.5).all()
    # 20000 draws per refit chain: the Monte Carlo error of log mean p(y_7 | mu_s) is about 0.06
    result = pyro_mle.reloo(post, dt, num_samples=20000)
    k = result.pareto_k.values
    assert k[7] == 0 and (k[:7] == psis.pareto_k.values[:7]).all()
    np.testing.assert_allclose(result.elpd_i.values[7], exact_elpd(np.arange(7), [7])[0], atol=0.2)
    np.testing.assert_array_equal(result.elpd_i.values[:7], psis.elpd_i.values[:7])
    assert result.elpd == pytest.approx(result.elpd_i.values.sum())


def test_reloo_every_row_is_exact_leave_one_out(post):
    result = pyro_mle.reloo(post, k_threshold=-np.inf, num_samples=20000, rows=None)
    exact = [exact_elpd(np.setdiff1d(np.arange(8), [i]), [i])[0] for i in range(8)]
    np.testing.assert_allclose(result.elpd_i.values[:7], exact[:7], atol=0.02)
    np.testing.assert_allclose(result.elpd_i.values[7], exact[7], atol=0.2)


def test_kfold_equals_leave_fold_out_predictive_densities(post):
    folds = [1, 1, 2, 2, 3, 3, 4, 4]
    cv = pyro_mle.kfold(post, folds=folds, num_samples=20000, save_fits=True)
    exact = np.concatenate(
        [exact_elpd(np.setdiff1d(np.arange(8), [2 * f, 2 * f + 1]), [2 * f, 2 * f + 1]) for f in range(4)]
    )
    np.testing.assert_allclose(cv.elpd_i.values[:7], exact[:7], atol=0.02)
    np.testing.assert_allclose(cv.elpd_i.values[7], exact[7], atol=0.2)
    assert cv.n_folds == 4 and cv.elpd == pytest.approx(cv.elpd_i.values.sum())
    # each fold's refit saw the other six rows: its posterior mean is the conjugate one
    fit = cv.fold_fits[1]["fit"]
    train = np.arange(2, 8)
    precision = 1 / PRIOR_SCALE**2 + len(train)
    assert float(fit.samples["mu"].mean()) == pytest.approx(Y.numpy()[train].sum() / precision, abs=0.01)


def dict_model(data):
    """The data inside a dict: rows cannot be cut automatically."""
    model(data["y"])


def test_rows_function_cuts_what_automatic_slicing_cannot():
    post = pyro_mle.posterior(dict_model, {"y": Y}, method="laplace", num_samples=500, chains=2, seed=1)
    with pytest.raises(ValueError, match="rows=lambda idx"):
        pyro_mle.kfold(post, k=2)
    cv = pyro_mle.kfold(post, folds=[1, 1, 2, 2, 3, 3, 4, 4], rows=lambda idx: (({"y": Y[idx]},), {}))
    auto = pyro_mle.kfold(
        pyro_mle.posterior(model, Y, method="laplace", num_samples=500, chains=2, seed=1),
        folds=[1, 1, 2, 2, 3, 3, 4, 4],
    )
    np.testing.assert_allclose(cv.elpd_i.values, auto.elpd_i.values, rtol=1e-12)


def numpy_model(y):
    """The program takes a NumPy array and converts it itself."""
    model(torch.as_tensor(y))


def test_kfold_cuts_numpy_array_arguments():
    post = pyro_mle.posterior(numpy_model, Y.numpy(), method="laplace", num_samples=500, chains=2, seed=1)
    cv = pyro_mle.kfold(post, folds=[1, 1, 2, 2, 3, 3, 4, 4], num_samples=20000)
    exact = np.concatenate(
        [exact_elpd(np.setdiff1d(np.arange(8), [2 * f, 2 * f + 1]), [2 * f, 2 * f + 1]) for f in range(4)]
    )
    np.testing.assert_allclose(cv.elpd_i.values[:7], exact[:7], atol=0.02)
    np.testing.assert_allclose(cv.elpd_i.values[7], exact[7], atol=0.2)


def test_high_pareto_k_advice_names_reloo(post):
    dt = pyro_mle.to_datatree(post, predictive=False)
    from pyro_mle.diagnostics import loo, pareto_k_messages

    (message,) = pareto_k_messages(loo(dt))
    assert "pyro_mle.reloo" in message and "pyro_mle.kfold" in message and "rows [7]" in message


def test_reloo_refuses_a_point_fit_and_names_kfold():
    fit = pyro_mle.fit(model, Y, method="map", progress=False)
    with pytest.raises(TypeError, match=r"pyro_mle.kfold\(fit"):
        pyro_mle.reloo(fit)


def test_kfold_of_a_map_fit_scores_the_estimate_without_the_fold():
    """MAP of the conjugate model is the posterior mean: sum(y_train) / (1/PRIOR_SCALE² + n)."""
    fit = pyro_mle.fit(model, Y, method="map", progress=False)
    cv = pyro_mle.kfold(fit, folds=[1, 1, 2, 2, 3, 3, 4, 4])
    y = Y.numpy()
    expected = []
    for f in range(4):
        test = [2 * f, 2 * f + 1]
        train = np.setdiff1d(np.arange(8), test)
        mode = y[train].sum() / (1 / PRIOR_SCALE**2 + len(train))
        expected.extend(stats.norm(mode, SCALE).logpdf(y[test]))
    np.testing.assert_allclose(cv.elpd_i.values, expected, rtol=1e-6)


def mle_with_param(y):
    """A pyro.param scale: its fitted value must be the refit's, not the full fit's."""
    scale = pyro.param("scale", torch.tensor(1.0, dtype=y.dtype), constraint=dist.constraints.positive)
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), PRIOR_SCALE))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, scale), obs=y)


def test_kfold_of_an_mle_fit_refits_its_params():
    y7 = Y[:7]
    fit = pyro_mle.fit(mle_with_param, y7, method="mle", progress=False)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    cv = pyro_mle.kfold(fit, k=7)  # one row per fold: leave-one-out
    y = y7.numpy()
    expected = [
        stats.norm(np.delete(y, i).mean(), np.delete(y, i).std()).logpdf(y[i])  # MLE: mean, sd with ddof=0
        for i in range(7)
    ]
    np.testing.assert_allclose(cv.elpd_i.values, expected, rtol=1e-5)
    after = dict(pyro.get_param_store().items())
    assert after.keys() == before.keys()  # the refits left the store alone
    for k, v in before.items():
        assert torch.equal(after[k].detach(), v), k


Z = torch.tensor([0.9, -1.1, 1.6, 0.0, -1.5, 0.2], dtype=torch.float64)  # moves with y: the rows matter
Z_SCALE = 1.0


def two_sites(y, z):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), PRIOR_SCALE))
    with pyro.plate("rows", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, SCALE), obs=y)
        pyro.sample("z", dist.Normal(mu, Z_SCALE), obs=z)


def test_a_row_of_two_observed_sites_is_left_out_whole():
    """kfold with one fold per row is exact leave-one-row-out: log p(y_i, z_i | other rows),
    a bivariate Normal (both share mu), not the sum of two marginal predictives."""
    y6 = Y[:6]
    post = pyro_mle.posterior(two_sites, y6, Z, method="laplace", num_samples=20000, chains=2, seed=0)
    cv = pyro_mle.kfold(post, folds=np.arange(6) + 1)
    y, z = y6.numpy(), Z.numpy()
    exact = []
    for i in range(6):
        rest = np.setdiff1d(np.arange(6), [i])
        precision = 1 / PRIOR_SCALE**2 + len(rest) * (1 / SCALE**2 + 1 / Z_SCALE**2)
        m = (y[rest].sum() / SCALE**2 + z[rest].sum() / Z_SCALE**2) / precision
        v = 1 / precision
        cov = [[v + SCALE**2, v], [v, v + Z_SCALE**2]]
        exact.append(stats.multivariate_normal([m, m], cov).logpdf([y[i], z[i]]))
    np.testing.assert_allclose(cv.elpd_i.values, exact, atol=0.02)
    # scoring the sites apart (log mean p(y_i) + log mean p(z_i)) ignores their shared mu
    apart = list(_apart(y, z))
    assert np.abs(cv.elpd_i.values - apart).max() > 0.1


def _apart(y, z):
    for i in range(6):
        rest = np.setdiff1d(np.arange(6), [i])
        precision = 1 / PRIOR_SCALE**2 + len(rest) * (1 / SCALE**2 + 1 / Z_SCALE**2)
        m = (y[rest].sum() / SCALE**2 + z[rest].sum() / Z_SCALE**2) / precision
        v = 1 / precision
        yield stats.norm(m, np.sqrt(v + SCALE**2)).logpdf(y[i]) + stats.norm(m, np.sqrt(v + Z_SCALE**2)).logpdf(z[i])

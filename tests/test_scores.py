"""Predictive intervals and scores (issue 13): CRPS against scoringrules, coverage of the 90 %
interval on well-specified simulated data, PIT values, the log score."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scoringrules as sr
import torch
from scipy import stats

import pyro_mle
from pyro_mle import scores
from pyro_mle.likelihoods import Normal, Poisson
from pyro_mle.results import Prediction

F64 = torch.float64


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def prediction(d, num_samples=4000, seed=0):
    torch.manual_seed(seed)
    draws = d.sample((num_samples,))
    return Prediction({"y": draws}, {"y": d.mean}, {"y": d})


def test_crps_normal_closed_form_equals_scoringrules():
    rng = np.random.default_rng(0)
    loc, scale, y = rng.normal(size=50), rng.uniform(0.2, 3.0, 50), rng.normal(size=50) * 2
    pred = prediction(dist.Normal(torch.tensor(loc), torch.tensor(scale)))
    got = scores.crps(pred, y).numpy()
    np.testing.assert_allclose(got, sr.crps_normal(y, loc, scale), rtol=1e-10)


def test_crps_laplace_closed_form_equals_scoringrules():
    rng = np.random.default_rng(1)
    loc, scale, y = rng.normal(size=50), rng.uniform(0.2, 3.0, 50), rng.normal(size=50) * 2
    got = scores.crps(prediction(dist.Laplace(torch.tensor(loc), torch.tensor(scale))), y).numpy()
    np.testing.assert_allclose(got, sr.crps_laplace(y, loc, scale), rtol=1e-10)


def test_crps_from_draws_equals_scoringrules_ensemble():
    rng = np.random.default_rng(2)
    draws, y = rng.gamma(2.0, size=(300, 20)), rng.gamma(2.0, size=20)
    got = scores.crps_draws(torch.tensor(y), torch.tensor(draws)).numpy()
    np.testing.assert_allclose(got, sr.crps_ensemble(y, draws, m_axis=0, estimator="nrg"), rtol=1e-10)


def test_crps_from_draws_approaches_the_closed_form():
    d = dist.Normal(torch.zeros(5, dtype=F64), torch.ones(5, dtype=F64))
    y = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=F64)
    np.testing.assert_allclose(
        scores.crps_draws(y, d.sample((200000,))).numpy(), sr.crps_normal(y.numpy(), 0.0, 1.0), atol=5e-3
    )


def test_interval_from_icdf_and_from_draws():
    d = dist.Normal(torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([1.0, 2.0], dtype=F64))
    iv = prediction(d).interval(0.9)
    assert iv.method == "icdf"
    np.testing.assert_allclose(iv.lower.numpy(), stats.norm([0, 1], [1, 2]).ppf(0.05), rtol=1e-10)
    np.testing.assert_allclose(iv.upper.numpy(), stats.norm([0, 1], [1, 2]).ppf(0.95), rtol=1e-10)
    counts = prediction(dist.Poisson(torch.tensor([3.0, 30.0], dtype=F64)), num_samples=20000).interval(0.9)
    assert counts.method == "draws"
    np.testing.assert_allclose(counts.lower.numpy(), stats.poisson([3, 30]).ppf(0.05), atol=1)
    np.testing.assert_allclose(counts.upper.numpy(), stats.poisson([3, 30]).ppf(0.95), atol=1)
    with pytest.raises(ValueError, match=r"prob must be a number in \(0, 1\)"):
        prediction(d).interval(90)


def test_ninety_percent_interval_covers_ninety_percent_of_new_data():
    """Well specified: heteroscedastic Normal data, fitted; new data from the same law."""
    n = 2000
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, generator=g, dtype=F64) * 4 - 2
    y = 1.0 + 0.5 * x + 0.3 * torch.exp(0.4 * x) * torch.randn(n, generator=g, dtype=F64)
    y_new = 1.0 + 0.5 * x + 0.3 * torch.exp(0.4 * x) * torch.randn(n, generator=g, dtype=F64)

    def model(x, y=None):
        a, b = pyro.param("a", x.new_tensor(0.0)), pyro.param("b", x.new_tensor(0.0))
        c, d = pyro.param("c", x.new_tensor(0.0)), pyro.param("d", x.new_tensor(0.0))
        return Normal(links={"scale": "exp"})("y", torch.stack([a + b * x, c + d * x], -1), obs=y)

    fit = pyro_mle.fit(model, x, y)
    pred = fit.predict(x, seed=0)
    cov = scores.coverage(pred, y_new, 0.9)
    assert abs(cov - 0.9) <= 3 * np.sqrt(0.9 * 0.1 / n), cov  # within binomial error
    # PIT values of new data are uniform (Kolmogorov–Smirnov against U(0, 1))
    assert stats.kstest(scores.pit(pred, y_new).numpy(), "uniform").pvalue > 0.01
    summary = scores.score(pred, y_new)
    assert summary.site == "y" and summary.coverage == cov
    np.testing.assert_allclose(
        summary.log_score, -stats.norm(pred.distributions["y"].loc, pred.distributions["y"].scale).logpdf(y_new).mean()
    )


def test_randomised_pit_of_counts_is_uniform():
    rate = torch.full((3000,), 2.5, dtype=F64)
    y = dist.Poisson(rate).sample()
    pred = prediction(dist.Poisson(rate), num_samples=2000)
    assert stats.kstest(scores.pit(pred, y).numpy(), "uniform").pvalue > 0.01


def test_scores_check_the_shape_of_y():
    pred = prediction(dist.Normal(torch.zeros(4), torch.ones(4)))
    with pytest.raises(ValueError, match=r"observed values for site 'y' have shape \(4, 1\)"):
        scores.crps(pred, torch.zeros(4, 1))


def test_a_poisson_head_scores_through_fit_predict():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, generator=g, dtype=F64)
    y = torch.poisson(torch.exp(0.3 + 0.5 * x), generator=g)

    def model(x, y=None):
        a, b = pyro.param("a", x.new_tensor(0.0)), pyro.param("b", x.new_tensor(0.0))
        return Poisson()("y", a + b * x, obs=y)

    pred = pyro_mle.fit(model, x, y).predict(x, seed=0)
    s = scores.score(pred, y)
    assert s.crps > 0 and np.isfinite(s.log_score)
    # counts have no closed form here: CRPS from the draws equals scoringrules' ensemble CRPS
    np.testing.assert_allclose(
        scores.crps(pred, y).numpy(),
        sr.crps_ensemble(y.numpy(), pred.draws["y"].numpy(), m_axis=0, estimator="nrg"),
        rtol=1e-10,
    )


def test_pyro_mle_fit_prints_and_writes_in_sample_scores(tmp_path, capsys):
    """The CLI's fit output carries the scores of the fitted predictive distribution."""
    import json

    from pyro_mle import cli

    assert cli.main(["fit", "linear_regression", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "scores of 'y' on these rows: CRPS" in out and "90% interval coverage" in out
    summary = json.loads((tmp_path / "linear_regression_mle.json").read_text())
    scores = summary["scores"]["y"]
    assert scores["crps"] > 0 and 0.0 <= scores["coverage_0.9"] <= 1.0
    assert scores["log_score"] == pytest.approx(summary["nll"] / 200, rel=1e-6)  # mean −log p at the MLE

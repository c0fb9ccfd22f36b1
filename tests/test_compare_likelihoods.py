"""Which loss fits the data best: PSIS-LOO picks the likelihood that generated the noise."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
from pyro_mle.diagnostics import DiagnosticWarning
from pyro_mle.likelihoods import Normal, StudentT

N = 120
X = torch.linspace(-2, 2, N, dtype=torch.float64)
RUN = dict(num_samples=250, warmup=250, chains=2)


def _line():
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(2.0, dtype=torch.float64)))
    return a, b, s


def normal_model(x, y=None):
    a, b, s = _line()
    Normal(scale=s)("y", a + b * x, obs=y)


def student_model(x, y=None):
    a, b, s = _line()
    StudentT(scale=s, df=3.0)("y", a + b * x, obs=y)


MODELS = {"normal": normal_model, "student_t": student_model}


def _data(noise: torch.Tensor) -> torch.Tensor:
    return 1.0 + 2.0 * X + 0.5 * noise


def _compare(y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiagnosticWarning)  # short chains: r-hat may sit near 1.01
        return pyro_mle.compare_likelihoods(MODELS, X, y, **RUN)


def test_heavy_tailed_noise_prefers_student_t():
    g = torch.Generator().manual_seed(1)
    noise = _student_noise(g, 1.5)
    res = _compare(_data(noise))
    assert res.best == "student_t"
    assert res.table.loc["normal", "elpd_diff"] < -2 * res.table.loc["normal", "dse"]


def test_gaussian_noise_prefers_normal():
    g = torch.Generator().manual_seed(2)
    res = _compare(_data(torch.randn(N, generator=g, dtype=torch.float64)))
    assert res.best == "normal"
    assert set(res.loo) == {"normal", "student_t"}


def test_an_outlier_surfaces_a_pareto_k_warning():
    g = torch.Generator().manual_seed(3)
    y = _data(torch.randn(N, generator=g, dtype=torch.float64))
    y[7] = 40.0
    with pytest.warns(DiagnosticWarning) as record:
        res = pyro_mle.compare_likelihoods(MODELS, X, y, **RUN)
    pareto = [str(w.message) for w in record if "Pareto k" in str(w.message)]
    assert pareto and "for normal" in pareto[0] and "rows [7]" in pareto[0]
    assert any("Pareto k" in m for m in res.warnings)


def test_needs_two_models():
    with pytest.raises(ValueError, match="at least two models"):
        pyro_mle.compare_likelihoods({"normal": normal_model}, X, X)


def _student_noise(g: torch.Generator, df: float) -> torch.Tensor:
    # t = z / sqrt(chi2_df / df), drawn from the seeded generator
    z = torch.randn(N, generator=g, dtype=torch.float64)
    chi2 = torch.distributions.Chi2(torch.tensor(df, dtype=torch.float64))
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    return z / torch.sqrt(chi2.sample((N,)) / df)

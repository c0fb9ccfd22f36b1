"""LOO of Laplace and VI draws by arviz_stats.loo_approximate_posterior, with log p and
log q checked against scipy."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import pyro_mle
from pyro_mle._approx_loo import approximation_log_densities, posterior_loo

F64 = torch.float64
N = 25


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(N, 2, generator=g, dtype=F64)
    y = X @ torch.tensor([0.7, -1.2], dtype=F64) + 0.5 * torch.randn(N, generator=g, dtype=F64)
    return X, y


def regression(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, s), obs=y)


@pytest.mark.filterwarnings("ignore::pyro_mle.ConvergenceWarning")  # 300 VI steps: the densities are the subject
@pytest.mark.parametrize("method", ["laplace", "vi"])
def test_log_p_and_log_q_against_scipy(data, method):
    X, y = data
    post = pyro_mle.posterior(regression, X, y, method=method, num_samples=30, chains=2, vi_steps=300)
    log_p, log_q = approximation_log_densities(post)
    assert log_p.dims == ("chain", "draw") and log_p.shape == (2, 30)
    w = post.samples["w"].numpy()
    s = post.samples["s"].numpy()
    # the log joint in the unconstrained space (u = log s): Jacobian d s / d u = s
    ref_p = (
        stats.norm(0, 1).logpdf(w).sum(-1)
        + stats.halfnorm(scale=1).logpdf(s)
        + stats.norm(w @ X.numpy().T, s[..., None]).logpdf(y.numpy()).sum(-1)
        + np.log(s)
    )
    np.testing.assert_allclose(log_p.values, ref_p, rtol=1e-10)
    u = np.concatenate([w, np.log(s)[..., None]], axis=-1)
    info = post.info
    ref_q = stats.multivariate_normal(info["loc"].numpy(), info["covariance"].numpy()).logpdf(u)
    np.testing.assert_allclose(log_q.values, ref_q, rtol=1e-10)


def branching_regression(X, y=None):
    """``regression`` with a Python branch on a latent's value: runs one draw at a time only."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
    if bool(s.detach() > 0):  # always true: vmap cannot batch it, the loop runs
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, s), obs=y)


@pytest.mark.parametrize("program", [regression, branching_regression], ids=["vmap", "loop"])
def test_log_p_batched_or_looped_against_scipy(data, program, monkeypatch, request):
    """log p of 400 Laplace draws, batched with vmap where the program allows it and one draw at
    a time where it does not: both equal to scipy's log joint."""
    import pyro_mle._approx_loo as approx

    ran, batched = [], approx._log_p_vmapped

    def spy(*args):
        try:
            out = batched(*args)
        except Exception:
            ran.append("loop")
            raise
        ran.append("vmap")
        return out

    monkeypatch.setattr(approx, "_log_p_vmapped", spy)
    X, y = data
    post = pyro_mle.posterior(program, X, y, method="laplace", num_samples=200, chains=2, progress=False)
    log_p, _ = approximation_log_densities(post)
    assert ran == [request.node.callspec.id]
    w, s = post.samples["w"].numpy(), post.samples["s"].numpy()
    ref_p = (
        stats.norm(0, 1).logpdf(w).sum(-1)
        + stats.halfnorm(scale=1).logpdf(s)
        + stats.norm(w @ X.numpy().T, s[..., None]).logpdf(y.numpy()).sum(-1)
        + np.log(s)
    )
    np.testing.assert_allclose(log_p.values, ref_p, rtol=1e-10)


# 100 draws: a row's Pareto k may cross the threshold by the seed; the warning is not the subject
@pytest.mark.filterwarnings("ignore::pyro_mle.diagnostics.DiagnosticWarning")
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
@pytest.mark.filterwarnings("ignore::pyro_mle.ConvergenceWarning")  # 300 VI steps: the LOO is the subject
def test_compare_uses_the_corrected_loo_for_vi_and_laplace(data):
    import arviz_stats as azs

    X, y = data
    cmp = pyro_mle.compare(
        regression, X, y, methods=("laplace", "vi"), posterior_options={"num_samples": 100, "vi_steps": 300}
    )
    for method in ("laplace", "vi"):
        post, tree = cmp.results[method], cmp.datatrees[method]
        log_p, log_q = approximation_log_densities(post)
        ref = azs.loo_approximate_posterior(tree, log_p, log_q)
        plain = azs.loo(tree)
        assert cmp.methods.loc[method, "elpd_loo"] == pytest.approx(float(ref.elpd), rel=1e-12)
        # the correction is not a no-op: the plain PSIS-LOO of q's draws differs
        assert float(ref.elpd) != pytest.approx(float(plain.elpd), rel=1e-9)


def test_nuts_draws_keep_plain_psis_loo(data):
    X, y = data
    g = torch.Generator().manual_seed(0)
    draws = {
        "w": torch.tensor([0.7, -1.2], dtype=F64) + 0.1 * torch.randn(1, 100, 2, generator=g, dtype=F64),
        "s": 0.5 + 0.05 * torch.rand(1, 100, generator=g, dtype=F64),
    }
    fake = pyro_mle.Posterior("nuts", draws, {}, {}, regression, (X, y), {})
    with pytest.raises(ValueError, match="only Laplace and VI draws"):
        approximation_log_densities(fake)
    tree = pyro_mle.to_datatree(fake, predictive=False)
    assert np.isfinite(posterior_loo(fake, tree).elpd)

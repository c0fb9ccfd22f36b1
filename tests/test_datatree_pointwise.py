"""The pointwise log-likelihood tiers: ``torch.func.vmap`` over the draws for programs that
do not broadcast (``X @ w``), equal to the loop over draws and to scipy, and the loop when a
program cannot run batched."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_mle import _replay
from pyro_mle.likelihoods import Normal

N, D, S = 60, 3, 40


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(11)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) + 0.4 * torch.randn(N, generator=g, dtype=torch.float64)
    draws = {
        "w": torch.randn(S, D, generator=g, dtype=torch.float64),
        "scale": 0.2 + torch.rand(S, generator=g, dtype=torch.float64),
    }
    return X, y, draws


def matmul_plate(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(1.0, dtype=X.dtype)))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, scale), obs=y)


def matmul_head(X, y=None):
    """A likelihood head, whose input checks branch on values (switched off under vmap)."""
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(1.0, dtype=X.dtype)))
    Normal(scale=scale)("y", X @ w, obs=y)


def branchy(X, y=None):
    """A Python branch on a latent's value: vmap cannot batch it."""
    w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(1.0, dtype=X.dtype)))
    if scale > 0.7:
        scale = scale * 2
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, scale), obs=y)


def _scipy(X, y, draws, double_above=None):
    w, scale = draws["w"].numpy(), draws["scale"].numpy()
    if double_above is not None:
        scale = np.where(scale > double_above, 2 * scale, scale)
    return stats.norm(w @ X.numpy().T, scale[:, None]).logpdf(y.numpy())


@pytest.mark.parametrize("model", [matmul_plate, matmul_head])
def test_vmap_tier_equals_the_loop_and_scipy(model, problem):
    X, y, draws = problem
    vm, how = _replay.pointwise_log_likelihood(model, draws, (X, y))
    assert how == "vmap"  # X @ w does not broadcast over an extra plate, vmap runs it as it is
    loop, how_loop = _replay.pointwise_log_likelihood(model, draws, (X, y), tiers=())
    assert how_loop == "loop"
    assert vm["y"].shape == (S, N)
    np.testing.assert_allclose(vm["y"].numpy(), loop["y"].numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(vm["y"].numpy(), _scipy(X, y, draws), rtol=1e-10)


def test_vmap_tier_chunks_give_the_same_values(problem, monkeypatch):
    X, y, draws = problem
    whole, _ = _replay.pointwise_log_likelihood(matmul_plate, draws, (X, y), tiers=("vmap",))
    monkeypatch.setattr(_replay, "VMAP_CHUNK_ELEMENTS", 7 * N)  # a few draws per chunk, a ragged last one
    chunked, how = _replay.pointwise_log_likelihood(matmul_plate, draws, (X, y), tiers=("vmap",))
    assert how == "vmap"
    np.testing.assert_allclose(chunked["y"].numpy(), whole["y"].numpy(), rtol=1e-13, atol=0)


def test_data_dependent_branch_falls_back_to_the_loop(problem):
    X, y, draws = problem
    with pytest.raises(RuntimeError, match="data-dependent control flow"):
        torch.func.vmap(lambda s: s * 2 if s > 0.7 else s)(draws["scale"])  # the failure the tier meets
    ll, how = _replay.pointwise_log_likelihood(branchy, draws, (X, y))
    assert how == "loop"
    np.testing.assert_allclose(ll["y"].numpy(), _scipy(X, y, draws, double_above=0.7), rtol=1e-10)


def test_broadcasting_program_keeps_the_broadcast_tier(problem):
    X, y, draws = problem

    def broadcasting(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(D, dtype=X.dtype), 1.0).to_event(1))
        scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(1.0, dtype=X.dtype)))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal((X * w).sum(-1), scale), obs=y)

    ll, how = _replay.pointwise_log_likelihood(broadcasting, draws, (X, y))
    assert how == "vectorised"
    np.testing.assert_allclose(ll["y"].numpy(), _scipy(X, y, draws), rtol=1e-10)


X4 = torch.tensor([0.2, 0.2, 0.2, 1.5], dtype=torch.float64)
Y4 = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)


def bernoulli_matmul(x, y, logits=False):
    """``x @ w`` does not broadcast: the vmap tier runs it; probs = x w, valid for w < 1/1.5."""
    w = pyro.sample("w", dist.Uniform(torch.tensor(0.0, dtype=torch.float64), 1.0).expand([1]).to_event(1))
    p = x[:, None] @ w
    with pyro.plate("data", x.shape[0]):
        d = dist.Bernoulli(logits=torch.logit(p)) if logits else dist.Bernoulli(probs=p)
        pyro.sample("y", d, obs=y)


@pytest.mark.parametrize("logits", [False, True])
def test_vmap_tier_checks_parameters_and_values_of_valid_draws(logits):
    pyro.set_rng_seed(1)  # the program's first run draws w = 0.06 from its prior: valid probs
    w = torch.linspace(0.1, 0.6, 5, dtype=torch.float64)[:, None]
    ll, how = _replay.pointwise_log_likelihood(bernoulli_matmul, {"w": w}, (X4, Y4), {"logits": logits})
    assert how == "vmap"
    ref = stats.bernoulli(X4.numpy()[None] * w.numpy()).logpmf(Y4.numpy()[None])
    np.testing.assert_allclose(ll["y"].numpy(), ref, rtol=1e-10)


def test_vmap_tier_sends_an_invalid_parameter_to_the_loop_and_its_error():
    """A middle draw making probs 1.35 > 1: Pyro's own check names it (it was clamped to a
    finite log-likelihood with the checks off)."""
    pyro.set_rng_seed(1)
    w = torch.full((5, 1), 0.5, dtype=torch.float64)
    w[2] = 0.9
    with pytest.raises(ValueError, match=r"Expected parameter probs .* Interval\(lower_bound=0.0, upper_bound=1.0\)"):
        _replay.pointwise_log_likelihood(bernoulli_matmul, {"w": w}, (X4, Y4))


def test_vmap_tier_sends_a_draw_outside_its_support_to_the_loop():
    """w = 1.2 is outside Uniform(0, 1): the batched run says so and the loop replays every
    draw (probs stay valid at x = X4 / 2, so the loop's values are scipy's)."""
    pyro.set_rng_seed(1)
    w = torch.full((5, 1), 0.5, dtype=torch.float64)
    w[2] = 1.2
    ll, how = _replay.pointwise_log_likelihood(bernoulli_matmul, {"w": w}, (X4 / 2, Y4))
    assert how == "loop"
    ref = stats.bernoulli(X4.numpy()[None] / 2 * w.numpy()).logpmf(Y4.numpy()[None])
    np.testing.assert_allclose(ll["y"].numpy(), ref, rtol=1e-10)

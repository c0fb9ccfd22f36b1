"""Randomness belongs to the call: seeded functions draw from their own seed and leave the
caller's global generators (``random``, NumPy, torch) where they were, so a bootstrap loop
around them does not repeat itself."""

import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
from pyro_mle._rng import rng_scope, spawn_seeds

N = 8
X = torch.linspace(-1.0, 1.0, N, dtype=torch.float64)
Y = 0.5 + 2.0 * X + 0.3 * torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def line(x, y=None):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 2.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(a + b * x, 0.3), obs=y)


FAST = {
    "nuts": dict(method="nuts", num_samples=20, warmup=20, chains=1, jit=False),
    "laplace": dict(method="laplace", num_samples=20, chains=1),
    "vi": dict(method="vi", num_samples=20, chains=1, vi_steps=20),
}


def run_posterior(method, seed):
    if method == "vi":  # 20 steps are far from converged; the warning says so, and is not the subject here
        with pytest.warns(pyro_mle.ConvergenceWarning):
            return pyro_mle.posterior(line, X, Y, seed=seed, progress=False, diagnose=False, **FAST[method])
    return pyro_mle.posterior(line, X, Y, seed=seed, progress=False, diagnose=False, **FAST[method])


@pytest.fixture(scope="module")
def laplace_post():
    return run_posterior("laplace", 0)


def caller_draws():
    return np.random.rand(), random.random(), torch.rand(3)


def assert_same_draws(got, expected):
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def assert_caller_untouched(call):
    """What the caller draws after ``call()`` is what it would have drawn without it."""
    pyro.set_rng_seed(123)
    expected = caller_draws()
    pyro.set_rng_seed(123)
    call()
    assert_same_draws(caller_draws(), expected)


# --------------------------------------------------------------------------- the building blocks


def test_rng_scope_restores_the_callers_generators_and_seeds_the_body():
    pyro.set_rng_seed(7)
    expected = caller_draws()
    pyro.set_rng_seed(7)
    with rng_scope(0):
        inside = caller_draws()
    assert_same_draws(caller_draws(), expected)
    with rng_scope(0):
        assert_same_draws(caller_draws(), inside)
    with rng_scope(None):
        fresh = caller_draws()
    with rng_scope(None):
        assert not torch.equal(caller_draws()[2], fresh[2])


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_rng_scope_restores_state_when_the_body_raises(error):
    pyro.set_rng_seed(7)
    expected = caller_draws()
    pyro.set_rng_seed(7)
    with pytest.raises(error), rng_scope(0):
        caller_draws()
        raise error("interrupted")
    assert_same_draws(caller_draws(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rng_scope_restores_initialised_cuda_generators():
    torch.cuda.init()
    torch.cuda.manual_seed_all(7)
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed_all(7)
    with rng_scope(0):
        inside = torch.rand(3, device="cuda")
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    with rng_scope(0):
        assert torch.equal(torch.rand(3, device="cuda"), inside)


def test_spawn_seeds_never_shifts_one_seeds_chains_onto_anothers():
    s0, s1 = spawn_seeds(0, 3), spawn_seeds(1, 3)
    assert len(set(s0 + s1)) == 6
    # with seed + c, chain 1 of seed 0 and chain 0 of seed 1 would be the same stream
    assert s0[1] != s1[0]
    assert spawn_seeds(0, 3) == s0  # reproducible
    assert spawn_seeds(0, 2) == s0[:2]  # more chains leave the first ones as they were
    assert spawn_seeds(None, 2) != spawn_seeds(None, 2)
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in s0)


# --------------------------------------------------------------------------- posterior


@pytest.mark.parametrize("method", sorted(FAST))
def test_posterior_leaves_the_callers_generators_alone(method):
    assert_caller_untouched(lambda: run_posterior(method, 0))


@pytest.mark.parametrize("method", sorted(FAST))
def test_posterior_draws_are_the_seeds(method):
    a, b = run_posterior(method, 3), run_posterior(method, 3)
    assert all(torch.equal(a.samples[k], b.samples[k]) for k in ("a", "b"))
    c, d = run_posterior(method, None), run_posterior(method, None)
    assert not torch.equal(c.samples["b"], d.samples["b"])


def test_nuts_chains_get_independent_streams():
    options = dict(FAST["nuts"], chains=2)
    p0 = pyro_mle.posterior(line, X, Y, seed=0, progress=False, diagnose=False, **options)
    p1 = pyro_mle.posterior(line, X, Y, seed=1, progress=False, diagnose=False, **options)
    b0, b1 = p0.samples["b"], p1.samples["b"]
    assert not torch.equal(b0[0], b0[1])
    assert not torch.equal(b0, b1)
    assert not torch.equal(b1[0], b0[1])  # the old seed + c scheme made these one stream


# --------------------------------------------------------------------------- to_datatree


def test_to_datatree_leaves_the_callers_generators_alone(laplace_post):
    assert_caller_untouched(lambda: pyro_mle.to_datatree(laplace_post, log_likelihood=False, seed=0))


def test_to_datatree_predictive_draws_are_the_seeds(laplace_post):
    def predictive(seed):
        dt = pyro_mle.to_datatree(laplace_post, log_likelihood=False, seed=seed)
        return dt["posterior_predictive"]["y"].values

    np.testing.assert_array_equal(predictive(5), predictive(5))
    assert not np.array_equal(predictive(None), predictive(None))


@pytest.mark.filterwarnings("ignore::pyro_mle.DiagnosticWarning")  # 8 rows: influential points
def test_compare_leaves_the_callers_generators_alone():
    options = dict(num_samples=200, chains=2)
    assert_caller_untouched(
        lambda: pyro_mle.compare(line, X, Y, methods=("mle", "laplace"), posterior_options=options, progress=False)
    )

"""The trace cache for repeated fits (pyro_mle.compile.TraceCache) and the thread count of a
fit (pyro_mle._threads): reuse only where it reproduces the program, new data of the same
shapes reused, nothing of the caller's changed."""

from __future__ import annotations

import importlib

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
from pyro_mle.likelihoods import Bernoulli, Normal

compiling = importlib.import_module("pyro_mle.compile")
threads = importlib.import_module("pyro_mle._threads")
F64 = torch.float64


def linear(x, y=None):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    Normal(scale=1.0)("y", x @ w + b, obs=y)


def logistic(x, y=None):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
    Bernoulli()("y", x @ w, obs=y)


def data(seed: int, n: int = 300, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = x @ torch.arange(1.0, d + 1, dtype=F64) + 0.5 + torch.randn(n, generator=g, dtype=F64)
    return x, y


def lstsq(x, y):
    design = np.c_[x.numpy(), np.ones(len(x))]
    return np.linalg.lstsq(design, y.numpy(), rcond=None)[0]


def estimate(fit):
    return np.r_[fit.params["w"].numpy(), fit.params["b"].numpy()]


@pytest.fixture(autouse=True)
def empty_cache():
    pyro_mle.clear_trace_cache()
    yield
    pyro_mle.clear_trace_cache()


def test_second_fit_traces_and_later_fits_reuse_on_new_data():
    """Bootstrap-style refits on new data of the same shapes: the first fit runs interpreted,
    the second traces, the later ones reuse the trace, and every answer is that data's own."""
    cache = pyro_mle.TRACE_CACHE
    answers = []
    for seed in range(4):
        x, y = data(seed)
        fit = pyro_mle.fit(linear, x, y)
        assert fit.converged, fit.message
        np.testing.assert_allclose(estimate(fit), lstsq(x, y), rtol=1e-9, atol=1e-10)
        answers.append(estimate(fit))
        assert len(cache) == (0 if seed == 0 else 1)
    assert cache.hits == 2  # fits 3 and 4 reused the trace of fit 2
    assert not np.allclose(answers[0], answers[1])  # the data, not a baked-in copy, was fitted


def test_reused_trace_gives_the_interpreted_estimate_bit_for_bit():
    x, y = data(0)
    first = pyro_mle.fit(linear, x, y)  # interpreted
    for _ in range(2):
        again = pyro_mle.fit(linear, x, y)  # traced, then reused
        np.testing.assert_array_equal(estimate(again), estimate(first))
        assert again.losses == first.losses
        assert again.nll == pytest.approx(first.nll, rel=1e-14)  # from the trace, not a sweep


def test_a_closure_over_changed_data_is_caught_at_the_start():
    """A program that reads data from a closure, not its arguments: the trace keeps that data
    as constants, so a reuse after the data changed must be refused by the check at the start."""
    x, y = data(0)
    holder = {"y": y}

    def model(x):
        w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
        b = pyro.param("b", torch.zeros((), dtype=x.dtype))
        Normal(scale=1.0)("y", x @ w + b, obs=holder["y"])

    pyro_mle.fit(model, x)
    pyro_mle.fit(model, x)  # traced with the first y inside
    assert len(pyro_mle.TRACE_CACHE) == 1
    _, y2 = data(1)
    holder["y"] = y2
    fit = pyro_mle.fit(model, x)
    np.testing.assert_allclose(estimate(fit), lstsq(x, y2), rtol=1e-9, atol=1e-10)


def test_a_different_program_or_shape_is_a_different_key():
    x, y = data(0)
    pyro_mle.fit(linear, x, y)
    pyro_mle.fit(linear, x[:200], y[:200])  # other shapes: first sighting
    assert len(pyro_mle.TRACE_CACHE) == 0
    yb = (y > y.median()).to(F64)
    pyro_mle.fit(logistic, x, yb)
    assert len(pyro_mle.TRACE_CACHE) == 0
    pyro_mle.fit(logistic, x, yb)
    assert len(pyro_mle.TRACE_CACHE) == 1


def test_jit_false_never_traces_and_the_cache_is_bounded():
    x, y = data(0)
    for _ in range(3):
        pyro_mle.fit(linear, x, y, jit=False)
    assert len(pyro_mle.TRACE_CACHE) == 0
    cache = compiling.TraceCache(maxsize=2)
    for i in range(5):
        cache.put(("k", i), linear, lambda *a: None)
    assert len(cache) == 2 and cache.get(("k", 4), linear) is not None and cache.get(("k", 0), linear) is None
    cache.clear()
    assert len(cache) == 0


def test_unhashable_or_aliased_arguments_are_not_cached():
    x, y = data(0)

    def model(x, y=None, options=None):
        linear(x, y)

    for _ in range(2):
        pyro_mle.fit(model, x, y, options={"a": [1, 2]})  # a list inside a dict: hashable description
    assert len(pyro_mle.TRACE_CACHE) == 1
    assert compiling.data_tensors((x, x), {}) is None  # one tensor twice


def test_small_fits_run_on_one_thread_and_restore_the_callers_setting():
    seen = []

    def model(x, y=None):
        seen.append(torch.get_num_threads())
        linear(x, y)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = data(0)
        pyro_mle.fit(model, x, y)
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_work_elements_counts_arrays_and_subsampled_share():
    x = torch.zeros(1000, 20)
    assert threads.work_elements((x, torch.zeros(1000)), {}) == (21_000, False)
    assert threads.work_elements((x,), {"extra": [np.zeros((10, 10))]}, fraction=0.5) == (10_050, False)
    assert threads.work_elements(("text", 3, None), {}) == (0, False)


def test_an_empty_plate_is_named():
    def model(x, y=None):
        w = pyro.param("w", torch.zeros((), dtype=x.dtype))
        with pyro.plate("rows", len(x)):
            pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)

    with pytest.raises(ValueError, match="no data rows"):
        pyro_mle.fit(model, torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64))

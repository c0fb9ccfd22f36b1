"""Large data and the fast paths of pyro_mle.fit.

* pyro_mle.data.MemoryMappedRows against the array NumPy wrote, and a fit streamed from a
  memory-mapped file against numpy's lstsq and the exact full-data NLL.
* Minibatches in O(B): a subsampling plate's indices, drawn without Pyro's randperm.
* The fused least-squares sum and the TorchScript-traced objective against the interpreted,
  elementwise ones (the reference is Pyro's own log_prob and the program run by Python).
"""

import importlib
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import stats

import pyro_mle
from pyro_mle import likelihoods as L
from pyro_mle.data import MemoryMappedRows

fit_module = importlib.import_module("pyro_mle.objective")  # the module, not the function pyro_mle.objective
F64 = torch.float64


def regression(n, d=3, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ np.array([1.0, -2.0, 0.5])[:d] + 0.7 + noise * rng.normal(size=n)
    return X, y


def lstsq(X, y):
    return np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)[0]


def coefficients(result):
    return np.r_[result.params["w"].numpy(), result.params["b"].numpy()]


def linear(x):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    return x @ w + b


def minibatch_model(x, y=None, batch_size=None):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    with pyro.plate("data", len(x), subsample_size=batch_size) as idx:
        L.Normal(scale=0.3)("y", x[idx] @ w + b, obs=None if y is None else y[idx])


# ----------------------------------------------------------------------------- MemoryMappedRows
def test_rows_read_what_numpy_wrote(tmp_path):
    array = np.arange(30, dtype=np.float64).reshape(10, 3)
    np.save(tmp_path / "a.npy", array)
    rows = MemoryMappedRows(tmp_path / "a.npy")
    assert len(rows) == 10 and rows.shape == (10, 3) and rows.dtype == F64
    for index in ([4, 1, 7], [2, 3, 4, 5], [0]):
        got = rows[torch.tensor(index)]
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), array[index])
    np.testing.assert_array_equal(rows[2:5].numpy(), array[2:5])
    np.testing.assert_array_equal(rows[3].numpy(), array[3])
    np.testing.assert_array_equal(rows[np.array([9, 0])].numpy(), array[[9, 0]])
    chunk = rows[2:5]
    chunk += 1.0  # a copy: the file is untouched
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    as_float32 = MemoryMappedRows(tmp_path / "a.npy", dtype=torch.float32)
    assert as_float32[torch.tensor([1])].dtype == torch.float32


def test_bad_files_and_indices_are_refused(tmp_path):
    (tmp_path / "not.npy").write_text("hello")
    with pytest.raises(ValueError, match=r"cannot memory-map it as a \.npy file.*numpy\.save"):
        MemoryMappedRows(tmp_path / "not.npy")
    np.save(tmp_path / "scalar.npy", np.float64(1.0))
    with pytest.raises(ValueError, match="scalar; it needs rows"):
        MemoryMappedRows(tmp_path / "scalar.npy")
    np.save(tmp_path / "a.npy", np.zeros((4, 2)))
    with pytest.raises(TypeError, match="integer row indices"):
        MemoryMappedRows(tmp_path / "a.npy")[torch.tensor([True, False, True, False])]


def test_fit_streamed_from_memory_mapped_files_is_least_squares(tmp_path, monkeypatch):
    """20 000 rows on disk in minibatches of 200. Stated tolerance: 3e-3, about one standard
    error of the coefficients (0.3/√N ≈ 2e-3), against the exact full-batch least squares; the
    NLL is the exact full-data value at the estimate. Pyro's O(N) randperm is never called."""
    X, y = regression(20_000, seed=1)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    x_rows, y_rows = MemoryMappedRows(tmp_path / "x.npy"), MemoryMappedRows(tmp_path / "y.npy")

    def no_randperm(*args, **kwargs):
        raise AssertionError("torch.randperm called: the minibatch was drawn in O(N)")

    monkeypatch.setattr(torch, "randperm", no_randperm)
    result = pyro_mle.fit(minibatch_model, x_rows, y_rows, batch_size=200, lr=0.05, num_steps=3000)
    assert result.optimizer == "adam" and result.converged
    np.testing.assert_allclose(coefficients(result), lstsq(X, y), rtol=0, atol=3e-3)
    residual = y - np.c_[X, np.ones(len(X))] @ coefficients(result)
    assert result.nll == pytest.approx(-stats.norm(0, 0.3).logpdf(residual).sum(), rel=1e-10)


# ----------------------------------------------------------------------------- minibatches in O(B)
def test_minibatch_indices_are_sorted_uniform_draws_with_the_plate_scale():
    size, batch = 1000, 10
    x, y = (torch.as_tensor(a) for a in regression(size))
    objective = fit_module._Objective(minibatch_model, None, (x, y), {"batch_size": batch})
    counts = np.zeros(size)
    for _ in range(2000):
        trace = objective.trace()
        idx = trace.nodes["data"]["value"]
        assert idx.shape == (batch,) and bool((idx[1:] >= idx[:-1]).all())
        assert trace.nodes["y"]["scale"] == pytest.approx(size / batch)
        counts += np.bincount(idx.numpy(), minlength=size)
    # 20 000 draws over 1000 rows: counts are Poisson(20) when uniform; chi-square test at 1e-4
    chi2 = ((counts - 20.0) ** 2 / 20.0).sum()
    assert stats.chi2(size - 1).sf(chi2) > 1e-4


def test_plates_that_do_not_subsample_reuse_their_indices():
    x, y = (torch.as_tensor(a) for a in regression(50))
    objective = fit_module._Objective(minibatch_model, None, (x, y), {})
    first, second = (objective.trace().nodes["data"]["value"] for _ in range(2))
    assert first is second and torch.equal(first, torch.arange(50))


# ----------------------------------------------------------------------------- the fused least-squares sum
def _terms(model, *args):
    trace = poutine.trace(model).get_trace(*args)
    fused = fit_module._log_prob_terms(trace)
    elementwise = {k: v.sum() for k, v in fit_module._log_prob_terms(trace, elementwise=True).items()}
    return fused, elementwise


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_normal_sum_equals_pyro_log_prob(dtype):
    X, y = regression(500)
    x, yt = torch.as_tensor(X, dtype=dtype), torch.as_tensor(y, dtype=dtype)

    def fixed(x, y):
        with pyro.plate("data", len(x), subsample_size=100) as idx:  # scale N/B = 5
            pyro.sample("y", dist.Normal(linear(x[idx]), 0.3), obs=y[idx])

    def latent_scale(x, y):
        scale = pyro.param("scale", torch.tensor(0.7, dtype=dtype), constraint=dist.constraints.positive)
        L.Normal(scale=scale)("y", linear(x), obs=y)

    rtol = 1e-12 if dtype == F64 else 1e-5
    for model in (fixed, latent_scale):
        with pyro.get_param_store().scope():
            pyro.set_rng_seed(0)
            fused, elementwise = _terms(model, x, yt)
            params = [p for _, p in pyro.get_param_store().named_parameters()]
            params[0].data += 0.1  # away from zero, so every gradient is non-trivial
            pyro.set_rng_seed(1)
            fused, _ = _terms(model, x, yt)
            pyro.set_rng_seed(1)
            _, elementwise = _terms(model, x, yt)
            assert float(fused["y"].detach()) == pytest.approx(float(elementwise["y"].detach()), rel=rtol)
            for a, b in zip(torch.autograd.grad(fused["y"], params), torch.autograd.grad(elementwise["y"], params)):
                torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def test_masked_and_other_sites_take_the_elementwise_path():
    x, y = (torch.as_tensor(a) for a in regression(20))
    mask = torch.arange(20) % 2 == 0

    def model(x, y):
        with pyro.plate("data", 20), poutine.mask(mask=mask):
            pyro.sample("y", dist.Normal(linear(x), torch.full((20,), 0.3, dtype=F64)), obs=y)

    with pyro.get_param_store().scope():
        trace = poutine.trace(model).get_trace(x, y)
        assert fit_module._fused_sum_log_prob(trace.nodes["y"]) is None  # masked, scale per element
        lp = fit_module._log_prob_terms(trace)["y"]
        expected = stats.norm(0, 0.3).logpdf(y.numpy())[mask.numpy()].sum()
        assert float(lp.detach()) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- the traced objective
def test_traced_adam_fit_equals_the_interpreted_one():
    """The trace runs the same kernels in the same order: the same 300 steps, to rounding."""
    x, y = (torch.as_tensor(a) for a in regression(2000))

    def model(x, y=None):
        scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0))
        L.Normal(scale=scale)("y", linear(x), obs=y)

    with pytest.warns(pyro_mle.ConvergenceWarning):
        traced = pyro_mle.fit(model, x, y, optimizer="adam", num_steps=300, lr=0.02, jit=True)
    with pytest.warns(pyro_mle.ConvergenceWarning):
        interpreted = pyro_mle.fit(model, x, y, optimizer="adam", num_steps=300, lr=0.02, jit=False)
    np.testing.assert_allclose(traced.losses, interpreted.losses, rtol=1e-12)
    for k, v in interpreted.params.items():
        torch.testing.assert_close(traced.params[k], v, rtol=1e-12, atol=1e-12)


def test_traced_minibatch_fit_draws_the_same_minibatches():
    x, y = (torch.as_tensor(a) for a in regression(5000))
    results = [
        pyro_mle.fit(minibatch_model, x, y, batch_size=50, lr=0.05, num_steps=1000, jit=jit) for jit in (True, False)
    ]
    assert results[0].num_steps == results[1].num_steps
    np.testing.assert_allclose(results[0].losses, results[1].losses, rtol=1e-10)
    np.testing.assert_allclose(coefficients(results[0]), coefficients(results[1]), rtol=0, atol=1e-10)


def test_a_program_whose_python_depends_on_parameter_values_is_refitted_interpreted():
    """``float(w[0])`` decides a branch: the trace freezes the branch taken at the start
    (no penalty), while the program adds a penalty once w[0] passes 0.5. The check at the
    estimate sees the difference and the fit runs again interpreted, with its answer."""
    x, y = (torch.as_tensor(a) for a in regression(500))

    def model(x, y=None):
        mean = linear(x)
        w = pyro.param("w")
        if float(w[0].detach()) > 0.5:
            pyro.factor("penalty", -1e4 * (w[0] - 0.5) ** 2)
        L.Normal(scale=0.3)("y", mean, obs=y)

    traced = pyro_mle.fit(model, x, y, optimizer="adam", lr=0.05, num_steps=2000, jit=True)
    interpreted = pyro_mle.fit(model, x, y, optimizer="adam", lr=0.05, num_steps=2000, jit=False)
    assert traced.losses == interpreted.losses
    np.testing.assert_array_equal(coefficients(traced), coefficients(interpreted))
    assert math.isfinite(traced.nll) and float(traced.params["w"][0]) < 0.8  # the penalty acted (unpenalised: 1.0)


def test_data_read_through_numpy_is_not_frozen_into_a_trace(tmp_path):
    """A minibatch gathered with NumPy would be a constant of the trace: the check under a
    second random state refuses the trace, and the fit matches the interpreted one."""
    X, y = regression(10_000, seed=2)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    x_rows, y_rows = MemoryMappedRows(tmp_path / "x.npy"), MemoryMappedRows(tmp_path / "y.npy")
    results = [
        pyro_mle.fit(minibatch_model, x_rows, y_rows, batch_size=100, lr=0.05, num_steps=500, jit=jit)
        for jit in (True, False)
    ]
    assert results[0].losses == results[1].losses

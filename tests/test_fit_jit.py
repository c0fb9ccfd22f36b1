"""The traced (TorchScript) objective in float64: fit(jit=True) really runs it, and it computes
the interpreted loss to rounding.

Guards a bug where, under torch.jit.trace, the element count N of a Normal site became a traced
int64 tensor and the constant N·log(σ√2π) was computed in float32: the trace then disagreed
with the program at 1e-8 relative, failed its own check, and every float64 fit silently ran
interpreted.
"""

import importlib
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
from pyro_mle.likelihoods import Normal

compiling = importlib.import_module("pyro_mle.compile")

F64 = torch.float64
SCALE = 0.3


def regression(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = X @ np.array([1.0, -0.5]) + 0.2 + SCALE * rng.normal(size=n)
    return X, y


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 10.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    Normal(scale=SCALE)("y", x @ w + b, obs=y)


@pytest.fixture()
def data():
    X, y = regression()
    return X, y, torch.tensor(X), torch.tensor(y)


def test_fit_with_jit_runs_the_compiled_objective(data, monkeypatch):
    X, y, x, yt = data
    traced, agreed, calls = [], [], []
    trace_objective, agrees = compiling.trace_objective, compiling.agrees

    def recording_trace(objective, params, data=(), exact=False):
        compiled, why = trace_objective(objective, params, data, exact)
        traced.append((compiled, why))
        if compiled is None:
            return compiled, why

        def counted(*values):
            calls.append(1)
            return compiled(*values)

        return counted, why

    def recording_agrees(objective, compiled, params, grads=False, exact=False):
        result = agrees(objective, compiled, params, grads, exact)
        with torch.no_grad():  # compiling.agrees allows 1e-9; rounding is 1e-12 here
            interpreted, traced_value = float(objective()), float(compiled(*params))
        agreed.append(result and traced_value == pytest.approx(interpreted, rel=1e-12))
        return result

    monkeypatch.setattr(compiling, "trace_objective", recording_trace)
    monkeypatch.setattr(compiling, "agrees", recording_agrees)
    pyro_mle.clear_trace_cache()  # a trace kept by another test would be reused, not made
    fit = pyro_mle.fit(model, x, yt, jit=True, optimizer="adam", num_steps=300, lr=0.05, gtol=1e-5)

    assert len(traced) == 1
    compiled, why = traced[0]
    assert compiled is not None, why
    assert why == ""
    assert agreed and all(agreed)  # the trace still agrees at the estimate: no interpreted rerun
    assert len(calls) >= 300  # every Adam step evaluated the compiled objective
    assert fit.converged, fit.message
    estimate = np.r_[fit.params["w"].numpy(), fit.params["b"].numpy()]
    np.testing.assert_allclose(estimate, np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)[0], atol=1e-6)


def test_traced_loss_equals_the_interpreted_loss_in_float64(data):
    X, y, x, yt = data
    with pyro.get_param_store().scope():
        obj = pyro_mle.objective(model, x, yt)
        compiled, why = compiling.trace_objective(lambda: obj()[0], obj.params)
        assert compiled is not None, why
        assert why == ""

        rng = np.random.default_rng(1)
        for flat in (obj.flat(), torch.tensor(rng.normal(size=3)), torch.tensor([1.0, -0.5, 0.2])):
            obj.set_flat(flat)
            expected = float(obj()[0].detach())
            got = compiled(*obj.params).detach()
            assert got.dtype == F64
            assert float(got) == pytest.approx(expected, rel=1e-12)
            # and both equal the hand-written NLL: Σ(y − Xw − b)²/2σ² + N log(σ√2π)
            w, b = flat[:2].numpy(), float(flat[2])
            r = y - X @ w - b
            nll = r @ r / (2 * SCALE**2) + len(y) * math.log(SCALE * math.sqrt(2 * math.pi))
            assert float(got) == pytest.approx(nll, rel=1e-12)

            grad_expected = torch.autograd.grad(obj()[0], obj.params)
            grad_got = torch.autograd.grad(compiled(*obj.params), obj.params)
            for a, b_ in zip(grad_expected, grad_got):
                torch.testing.assert_close(b_, a, rtol=1e-12, atol=1e-12)

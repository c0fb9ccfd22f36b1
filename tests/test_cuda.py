"""CUDA: fit, posterior (NUTS, Laplace, VI), to_datatree and fit_distributed over NCCL on CUDA
tensors and models. Every test runs where a CUDA device is present and is skipped, with the
reason shown in pytest's summary (``-ra``), where it is not. The answers are checked against
the same call on the CPU (or against ``numpy.linalg.lstsq``), never against themselves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
from pyro_mle import likelihoods as L

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False here)"
)
F64 = torch.float64


def data(n: int = 2000, d: int = 5, device: str = "cpu", dtype: torch.dtype = F64):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, d))
    y = X @ np.linspace(-1.0, 1.0, d) + 0.3 + 0.5 * rng.normal(size=n)
    return torch.as_tensor(X, dtype=dtype, device=device), torch.as_tensor(y, dtype=dtype, device=device)


def linear(x, y=None):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype, device=x.device))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype, device=x.device))
    L.Normal(scale=0.5)("y", x @ w + b, obs=y)


def bayesian_linear(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype, device=x.device), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.zeros((), dtype=x.dtype, device=x.device), 1.0))
    L.Normal(scale=0.5)("y", x @ w + b, obs=y)


def estimate(fit):
    return np.r_[fit.params["w"].cpu().numpy(), fit.params["b"].cpu().numpy()]


def test_lbfgs_fit_on_cuda_equals_lstsq_and_stays_on_the_device():
    x, y = data(device="cuda")
    fit = pyro_mle.fit(linear, x, y)
    assert fit.converged, fit.message
    assert fit.params["w"].device.type == "cuda"
    design = np.c_[x.cpu().numpy(), np.ones(len(x))]
    np.testing.assert_allclose(estimate(fit), np.linalg.lstsq(design, y.cpu().numpy(), rcond=None)[0], rtol=1e-8)
    prediction = fit.predict(x[:5], num_samples=10)
    assert prediction.mean["y"].device.type == "cuda"


def test_adam_fit_on_cuda_with_a_trace_matches_the_cpu_fit():
    x, y = data(dtype=torch.float32)
    options = {"optimizer": "adam", "num_steps": 300, "lr": 0.05, "jit": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyro_mle.ConvergenceWarning)
        cpu = pyro_mle.fit(linear, x, y, **options)
        gpu = pyro_mle.fit(linear, x.cuda(), y.cuda(), **options)
    np.testing.assert_allclose(estimate(gpu), estimate(cpu), atol=1e-3)


@pytest.mark.filterwarnings("ignore::pyro_mle.ConvergenceWarning")  # VI capped at 1500 steps to stay short
def test_posterior_samplers_and_datatree_on_cuda():
    x, y = data(n=300, d=3, device="cuda")
    design = np.c_[x.cpu().numpy(), np.ones(len(x))]
    answer = np.linalg.lstsq(design, y.cpu().numpy(), rcond=None)[0]
    for method, options in (
        ("nuts", {"num_samples": 200, "warmup": 200, "chains": 1}),
        ("laplace", {"num_samples": 500}),
        ("vi", {"num_samples": 500, "vi_steps": 1500}),
    ):
        post = pyro_mle.posterior(bayesian_linear, x, y, method=method, progress=False, **options)
        draws = post.samples["w"].reshape(-1, x.shape[1])  # (chain, draw, 3) → (chain·draw, 3)
        mean = np.r_[draws.mean(0).cpu().numpy(), float(post.samples["b"].mean())]
        # 300 rows, scale 0.5: the posterior sits within a few standard errors (≈ 0.03) of least squares
        np.testing.assert_allclose(mean, answer, atol=0.1, err_msg=method)
        tree = pyro_mle.to_datatree(post)
        assert "posterior" in tree.children and "log_likelihood" in tree.children


def test_fit_datatree_on_cuda():
    x, y = data(device="cuda")
    tree = pyro_mle.to_datatree(pyro_mle.fit(linear, x, y), num_draws=20)
    assert "posterior" in tree.children


# ----------------------------------------------------------------------------- NCCL
def worker(out_dir: str) -> None:
    from pyro_mle import distributed as pmd

    pmd.init_process_group(backend="nccl", timeout_s=120)
    rank = torch.distributed.get_rank()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    x, y = data(device="cuda")
    xs, ys = pmd.shard(x, y)
    fit = pmd.fit_distributed(linear, xs, ys)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"estimate": estimate(fit).tolist(), "nll": fit.nll}))
    torch.distributed.destroy_process_group()


def test_fit_distributed_over_nccl_equals_the_one_process_fit(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nproc = max(torch.cuda.device_count(), 1)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        __file__,
        "--worker",
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    x, y = data(device="cuda")
    one = pyro_mle.fit(linear, x, y)
    for rank in range(nproc):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        np.testing.assert_allclose(got["estimate"], estimate(one), rtol=1e-8)
        assert got["nll"] == pytest.approx(one.nll, rel=1e-9)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2])

"""pyro_mle.distributed: a 2-process fit equals the 1-process fit on the same data.

The test launches this file as a script under torchrun (``python -m torch.distributed.run``):
two processes on this machine, talking over gloo on the loopback interface only (127.0.0.1),
each holding a block of the rows (501 and 500: unequal shards). Every process writes its
estimates; the test checks that both processes hold the same estimate and that it is the
1-process estimate of :func:`pyro_mle.fit` on all the rows, for MLE and MAP (the prior counted
once, not once per process) by L-BFGS, and for full-batch Adam (the same trajectory).
"""

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
from pyro_mle import ConvergenceWarning
from pyro_mle import distributed as pmd
from pyro_mle import likelihoods as L

F64 = torch.float64
NUM_ROWS = 1001


def data():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(NUM_ROWS, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.7 + 0.4 * rng.normal(size=NUM_ROWS)
    labels = (rng.uniform(size=NUM_ROWS) < 1 / (1 + np.exp(-(X @ np.array([0.8, -0.5, 0.3]))))).astype(float)
    return torch.as_tensor(X), torch.as_tensor(y), torch.as_tensor(labels)


def linear(x):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=x.dtype))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    return x @ w + b


def least_squares(x, y=None):
    L.Normal(scale=0.4)("y", linear(x), obs=y)


def ridge_with_learned_scale(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 0.03).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=x.dtype), 1.0))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    L.Normal(scale=scale)("y", x @ w + b, obs=y)


def logistic(x, y=None):
    L.Bernoulli()("y", linear(x), obs=y)


# name → (model, target column, fit options)
CASES = {
    "mle_lbfgs": (least_squares, "y", {}),
    "map_lbfgs": (ridge_with_learned_scale, "y", {"method": "map"}),
    "bernoulli_lbfgs": (logistic, "labels", {}),
    "mle_adam": (least_squares, "y", {"optimizer": "adam", "num_steps": 300, "lr": 0.02}),
}


def run_case(fit_fn, name, x, y, labels):
    model, target, options = CASES[name]
    with warnings.catch_warnings():
        # the Adam case is a fixed trajectory of 300 steps, stopped before convergence on purpose
        warnings.filterwarnings("ignore", ".*not converged after 300 Adam steps", ConvergenceWarning)
        result = fit_fn(model, x, {"y": y, "labels": labels}[target], **options)
    return {
        "params": {k: v.reshape(-1).tolist() for k, v in result.params.items()},
        "nll": result.nll,
        "loss": result.loss,
        "num_steps": result.num_steps,
        "converged": result.converged,
    }


def worker(out_dir):
    """Run by each process that torchrun starts."""
    pmd.init_process_group(backend="gloo", timeout_s=60)
    rank = torch.distributed.get_rank()
    x, y, labels = data()
    shards = pmd.shard(x, y, labels)
    results = {"rows": len(shards[0])}
    for name in CASES:
        results[name] = run_case(pmd.fit_distributed, name, *shards)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        __file__,
        "--worker",
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        causes = [line for line in output.splitlines() if "Error" in line or "terminate" in line or "what()" in line]
        pytest.fail(f"torchrun failed ({done.returncode}):\n" + "\n".join(causes[:40]) + "\n...\n" + output[-6000:])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def one_process():
    x, y, labels = data()
    return {name: run_case(pyro_mle.fit, name, x, y, labels) for name in CASES}


def test_each_process_holds_its_own_rows(two_processes):
    assert [r["rows"] for r in two_processes] == [501, 500]


@pytest.mark.parametrize("name", list(CASES))
def test_both_processes_return_the_same_fit(two_processes, name):
    first, second = (r[name] for r in two_processes)
    assert first == second  # bitwise: every step was taken on the same averaged values


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("mle_lbfgs", 1e-7), ("map_lbfgs", 1e-7), ("bernoulli_lbfgs", 1e-6), ("mle_adam", 1e-9)],
)
def test_two_process_fit_equals_one_process_fit(two_processes, one_process, name, tolerance):
    """Stated tolerance: L-BFGS stops at gtol 1e-7 per data point, so two runs whose sums are
    rounded differently agree to about that; full-batch Adam takes the same 300 steps, whose
    gradients differ only by rounding."""
    got, expected = two_processes[0][name], one_process[name]
    assert got["converged"] == expected["converged"]
    assert set(got["params"]) == set(expected["params"])
    for k, v in expected["params"].items():
        np.testing.assert_allclose(got["params"][k], v, rtol=0, atol=tolerance, err_msg=k)
    assert got["nll"] == pytest.approx(expected["nll"], rel=1e-9)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-9)  # MAP: the prior counted once
    if name == "mle_adam":
        assert got["num_steps"] == expected["num_steps"]


def test_map_estimate_differs_from_mle(one_process):
    """A guard on the MAP case: its prior is strong enough that counting it twice would show."""
    w_map = np.array(one_process["map_lbfgs"]["params"]["w"])
    w_mle = np.array(one_process["mle_lbfgs"]["params"]["w"])
    assert np.abs(w_map - w_mle).max() > 0.05


def test_shard_splits_rows_like_array_split():
    rows = np.arange(10)
    blocks = [pmd.shard(rows, rank=r, world_size=3)[0] for r in range(3)]
    for got, expected in zip(blocks, np.array_split(rows, 3)):
        np.testing.assert_array_equal(got, expected)
    assert [pmd.shard_range(10, r, 3) for r in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]
    with pytest.raises(ValueError, match="different numbers of rows"):
        pmd.shard(rows, rows[:5], rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        pmd.shard_range(10, 2, 2)


def test_without_a_process_group_the_error_says_how_to_launch(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert not torch.distributed.is_initialized()
    x, y, _ = data()
    with pytest.raises(RuntimeError, match="torchrun --standalone --nproc-per-node=2"):
        pmd.fit_distributed(least_squares, x, y)
    with pytest.raises(RuntimeError, match="pass rank= and world_size="):
        pmd.shard(x)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    worker(sys.argv[2])

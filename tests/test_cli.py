"""The pyro-mle command, run as a user would: in a subprocess."""

import json
import subprocess
import sys

import pytest
from scipy import stats

from pyro_mle import likelihoods as L
from pyro_mle.certificates import certify


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pyro_mle.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_list_names_every_family():
    r = run("list")
    assert r.returncode == 0, r.stderr
    for name in ("Normal(scale=0.3)", "least squares", "binary cross-entropy", "PlackettLuce()", "VonMises"):
        assert name in r.stdout


def test_demo_writes_the_certificate_table(tmp_path):
    r = run("demo", "--n", "200", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "certificates.json").read_text())
    heads = {row["head"] for row in rows}
    assert {"Normal(scale=0.3)", "Bernoulli()", "Categorical()"} <= heads
    assert max(row["max_rel_diff"] for row in rows) < 1e-10
    assert "least squares" in r.stdout and "multiclass cross-entropy" in r.stdout


@pytest.mark.parametrize("args", [("certificates", "--n", "0"), ("fit-everything",), ()])
def test_usage_errors_exit_non_zero_without_traceback(args):
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "usage: pyro-mle" in r.stderr


def test_certificate_of_least_squares_against_scipy():
    # the certificate's mean NLL is the mean of scipy's Normal logpdf with the same draws
    import pyro
    import torch

    head = L.Normal(scale=0.3)
    c = certify(head, n=500, seed=3)
    g = torch.Generator().manual_seed(3)
    outputs = torch.randn(500, 1, generator=g, dtype=torch.float64)
    pyro.set_rng_seed(3)
    y = head.distribution(outputs).sample()
    ref = -stats.norm(outputs[:, 0].numpy(), 0.3).logpdf(y.numpy()).mean()
    assert c.mean_nll == pytest.approx(ref, rel=1e-12)
    assert c.max_abs_diff < 1e-12

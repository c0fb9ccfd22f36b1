"""Ctrl-C in the pyro-mle command: exit status 130, one line on stderr, no traceback, and a
fit interrupted mid-way keeps (and with --out writes) its last estimate.

The interrupt is a KeyboardInterrupt raised by the user's model file itself, on a given call,
so the tests are deterministic and run in-process through pyro_mle.cli.main.
"""

import json
import math
import sys

import pytest
import torch

import pyro_mle
from pyro_mle import cli

# A curve fit that takes about thirty L-BFGS evaluations from the zero start, so its 20th model
# call (the first four build and check the objective) falls inside the optimiser's loop.
MODEL_FILE = '''"""Exponential decay, interrupted on its {interrupt_at}th call.

Likelihood: Normal(scale=0.1) -> least squares.
"""
import pyro, pyro.distributions as dist, torch
from pyro_mle.likelihoods import Normal

LIKELIHOOD = "normal"
LOSS = "least squares"

CALLS = [0]
SEEN = []  # the parameter values of every call


def model(x, y=None):
    CALLS[0] += 1
    if CALLS[0] == {interrupt_at}:
        raise KeyboardInterrupt
    zero = torch.tensor(0.0, dtype=x.dtype)
    a = pyro.sample("a", dist.Normal(zero, 10.0))
    k = pyro.sample("k", dist.Normal(zero, 10.0))
    c = pyro.sample("c", dist.Normal(zero, 10.0))
    SEEN.append([float(a.detach()), float(k.detach()), float(c.detach())])
    Normal(scale=0.1)("y", a * torch.exp(-k * x) + c, obs=y)


def load_data(n=100, seed=0):
    {load_data_body}
    g = torch.Generator().manual_seed(seed)
    x = 5.0 * torch.rand(n, generator=g, dtype=torch.float64)
    return x, 3.0 * torch.exp(-1.5 * x) + 0.5 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
'''


def write_model(tmp_path, name, interrupt_at=0, load_data_body="pass"):
    path = tmp_path / f"{name}.py"
    path.write_text(MODEL_FILE.format(interrupt_at=interrupt_at, load_data_body=load_data_body))
    return path


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("PYRO_MLE_DEBUG", raising=False)


def test_the_model_file_fits_without_an_interrupt(tmp_path, capsys):
    # the control: the same file with no interrupt converges, after more than 20 calls
    path = write_model(tmp_path, "decay_control")
    assert cli.main(["fit", str(path), "--out", str(tmp_path / "out")]) == 0
    module = sys.modules["pyro_mle_model_decay_control"]
    assert module.CALLS[0] > 25
    summary = json.loads((tmp_path / "out" / "decay_control_mle.json").read_text())
    assert summary["converged"] is True
    assert summary["params"]["a"] == pytest.approx(3.0, abs=0.2)


def test_interrupted_fit_exits_130_and_writes_the_last_estimate(tmp_path, capsys):
    path = write_model(tmp_path, "decay_interrupted", interrupt_at=20)
    out = tmp_path / "out"

    status = cli.main(["fit", str(path), "--out", str(out)])
    captured = capsys.readouterr()

    assert status == 130
    assert "interrupted" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "KeyboardInterrupt" not in captured.err + captured.out

    summary = json.loads((out / "decay_interrupted_mle.json").read_text())
    assert summary["converged"] is False
    assert "interrupted" in summary["message"]
    assert set(summary["params"]) == {"a", "k", "c"}

    # the estimate is a point the model was evaluated at before the interrupt, past the start
    module = sys.modules["pyro_mle_model_decay_interrupted"]
    estimate = [summary["params"][k] for k in ("a", "k", "c")]
    before_interrupt = module.SEEN[:19]
    assert estimate in before_interrupt
    assert estimate != [0.0, 0.0, 0.0]
    # and the NLL reported is that of the estimate: Σ(y − a·exp(−kx) − c)²/2σ² + N log(σ√2π)
    x, y = module.load_data()
    a, k, c = estimate
    r = y - a * torch.exp(-k * x) - c
    nll = float((r**2).sum()) / (2 * 0.1**2) + len(y) * math.log(0.1 * math.sqrt(2 * math.pi))
    assert summary["nll"] == pytest.approx(nll, rel=1e-12)

    saved = pyro_mle.load(out / "decay_interrupted_mle.pt")
    assert saved.converged is False
    for name, value in summary["params"].items():
        assert torch.equal(saved.params[name], torch.tensor(value, dtype=saved.params[name].dtype))


def test_interrupted_fit_without_out_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_model(tmp_path, "decay_no_out", interrupt_at=20)
    assert cli.main(["fit", str(path)]) == 130
    captured = capsys.readouterr()
    assert "interrupted" in captured.err
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decay_no_out.py"]


def test_interrupt_outside_the_fit_is_one_line(tmp_path, capsys):
    path = write_model(tmp_path, "decay_load", load_data_body="raise KeyboardInterrupt")

    status = cli.main(["fit", str(path), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()

    assert status == 130
    assert captured.err.splitlines() == ["pyro-mle: interrupted"]
    assert captured.out == ""
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

"""The pyro-mle command, run as a user would: in a subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_mle import cli
from pyro_mle import likelihoods as L
from pyro_mle.certificates import certify
from pyro_mle.model_files import load_model_file, read_csv

MODEL_FILE = '''"""A user's model: a straight line with Normal noise.

Likelihood: Normal(scale=0.5) -> least squares.
"""
import pyro, pyro.distributions as dist, torch
from pyro_mle.likelihoods import Normal

X_COLUMNS = ("a",)
Y_COLUMNS = ("target",)


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0), 10.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0), 10.0))
    Normal(scale=0.5)("y", b + w * x, obs=y)


def load_data(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g)
    return x, 1.0 + 2.0 * x + 0.5 * torch.randn(n, generator=g)
'''


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pyro_mle.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.fixture()
def user_model(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    g = np.random.default_rng(0)
    a = g.uniform(size=40)
    target = 3.0 - 1.5 * a + 0.1 * g.normal(size=40)
    rows = ["a,other,target"] + [f"{ai},{i},{ti}" for i, (ai, ti) in enumerate(zip(a, target))]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    return path, tmp_path / "data.csv", a, target


def test_list_names_models_and_heads():
    r = run("list")
    assert r.returncode == 0, r.stderr
    for name in ("linear_regression", "Normal(scale=0.3)", "least squares", "binary cross-entropy", "PlackettLuce()"):
        assert name in r.stdout


def test_fit_a_users_model_file_on_a_csv_matches_lstsq(user_model, tmp_path):
    path, csv_path, a, target = user_model
    r = run("fit", str(path), "--data", str(csv_path), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "my_model_mle.json").read_text())
    ref = np.linalg.lstsq(np.stack([np.ones_like(a), a], 1), target, rcond=None)[0]
    assert summary["params"]["b"] == pytest.approx(ref[0], abs=1e-4)
    assert summary["params"]["w"] == pytest.approx(ref[1], abs=1e-4)
    assert (tmp_path / "out" / "my_model_mle.pt").is_file()


def test_fit_builtin_model_with_map(tmp_path):
    r = run("fit", "linear_regression", "--method", "map", "--n", "60", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "MAP fit of 60 rows" in r.stdout
    assert (tmp_path / "linear_regression_map.json").is_file()


def test_compare_writes_table_figure_and_datatree(user_model, tmp_path):
    path, _, _, _ = user_model
    out = tmp_path / "cmp"
    r = run(
        "compare", str(path), "--methods", "mle,map,nuts", "--num-samples", "100", "--warmup", "100", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert "elpd_loo" in r.stdout
    for name in ("my_model_compare.png", "my_model_compare_table.csv", "my_model_nuts.nc"):
        assert (out / name).is_file(), name


def test_demo_runs_the_chapter(tmp_path):
    r = run("demo", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MLE = least squares: yes" in r.stdout
    assert "MLE = cross-entropy minimum: yes" in r.stdout
    for name in (
        "certificates.json",
        "likelihood_profile.png",
        "classification.png",
        "mle_map_posterior.png",
        "posterior_nuts.nc",
        "demo.json",
    ):
        assert (tmp_path / name).is_file(), name
    rows = json.loads((tmp_path / "certificates.json").read_text())
    assert max(row["max_rel_diff"] for row in rows) < 1e-10


@pytest.mark.parametrize(
    "args, message",
    [
        (("fit", "no_such_model"), "unknown model 'no_such_model'"),
        (("fit", "missing.py"), "model file 'missing.py' does not exist"),
        (("fit", "linear_regression", "--data", "nope.csv"), "data file 'nope.csv' does not exist"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(list(args)) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_input_in_a_subprocess_exits_1_without_traceback(tmp_path):
    r = run("fit", "no_such_model", cwd=tmp_path)
    assert r.returncode == 1 and "unknown model" in r.stderr and "Traceback" not in r.stderr


def test_bad_column_and_bad_cell_name_file_column_and_line(user_model, tmp_path, capsys):
    path, csv_path, _, _ = user_model
    assert cli.main(["fit", str(path), "--data", str(csv_path), "--y", "nope"]) == 1
    err = capsys.readouterr().err
    assert "has no column 'nope'" in err and "'target'" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,target\n0.1,1.0\n0.2,oops\n0.3,nan\n")
    assert cli.main(["fit", str(path), "--data", str(bad)]) == 1
    assert "line 3, column 'target': 'oops' is not a number" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"line 4, column 'target': 'nan' is not finite"):
        read_csv(_replace_line(bad, 3, "0.25,2.0"), ("a",), ("target",))


def _replace_line(path, line_no, text):
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("certificates", "--n", "0"),
        ("fit-everything",),
        (),
        ("compare", "linear_regression", "--methods", "hmc"),
        ("fit", "linear_regression", "--method", "bayes"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(list(args))
    assert e.value.code == 2
    assert "usage: pyro-mle" in capsys.readouterr().err


def test_model_file_without_load_data_is_refused(tmp_path):
    path = tmp_path / "half.py"
    path.write_text("def model(x, y=None):\n    pass\n")
    with pytest.raises(ValueError, match="defines no function 'load_data'"):
        load_model_file(path)


def test_certificate_of_least_squares_against_scipy():
    import pyro

    head = L.Normal(scale=0.3)
    c = certify(head, n=500, seed=3)
    g = torch.Generator().manual_seed(3)
    outputs = torch.randn(500, 1, generator=g, dtype=torch.float64)
    pyro.set_rng_seed(3)
    y = head.distribution(outputs).sample()
    ref = -stats.norm(outputs[:, 0].numpy(), 0.3).logpdf(y.numpy()).mean()
    assert c.mean_nll == pytest.approx(ref, rel=1e-12)
    assert c.max_abs_diff < 1e-12


def test_a_model_file_may_define_dataclasses(tmp_path):
    path = tmp_path / "dc.py"
    path.write_text(
        "from __future__ import annotations\nfrom dataclasses import dataclass\n\n@dataclass\nclass Config:\n"
        "    scale: float = 0.5\n\ndef model(x, y=None):\n    pass\n\ndef load_data(n=3, seed=0):\n"
        "    import torch\n    return torch.zeros(n), torch.zeros(n)\n"
    )
    assert load_model_file(path).module.Config().scale == 0.5

"""Every example runs with tiny settings and writes its figure, so an example can never rot."""

import argparse
import importlib.util
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = {
    "least_squares_likelihood": {"n": 30},
    "regression_bands": {"n": 60},
    "class_probabilities": {"n": 80},
    "mixture_and_circular": {"n": 80, "draws": 5},
    "mle_map_posterior": {"n": 12, "draws": 60, "model": "linear_regression"},
    "loss_certificates": {"n": 50},
    "predictive_calibration": {"n": 80},
}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_tiny_settings():
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_runs_and_writes_its_figure(name, tmp_path):
    import pyro_mle

    args = argparse.Namespace(seed=0, out=str(tmp_path), **TINY[name])
    with warnings.catch_warnings():
        # tiny settings: short chains and small data may not converge; the figure is what is tested
        warnings.simplefilter("ignore", pyro_mle.DiagnosticWarning)
        warnings.simplefilter("ignore", pyro_mle.ConvergenceWarning)
        path = _load(name).main(args)
    assert Path(path).is_file() and Path(path).suffix == ".png"
    assert Path(path).stat().st_size > 5000

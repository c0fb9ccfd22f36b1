"""The pyro-mle command at its edges: a bad --out refused before any work, every error of the
user's input or model file as one line (file, line and site for the latter), --debug for the
traceback, Ctrl-C and closed pipes, load_data called with what it takes and only without
--data, progress lines in logs and --quiet, and the one table printer.

Exit codes and pipes are checked in subprocesses, as a user runs the command; the rest runs
in-process through pyro_mle.cli.main, which is the same code without the interpreter start.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyro_mle
from pyro_mle import cli, progress
from pyro_mle.certificates import Certificate
from pyro_mle.certificates import format_table as certificate_table_text
from pyro_mle.tables import format_table

ROOT = Path(__file__).resolve().parent.parent

# A straight line; {head} runs at import, {model_body} at the start of every model call and
# {load_data} is the whole load_data definition.
MODEL = '''"""A straight line with Normal noise."""
import pathlib, time
import pyro, pyro.distributions as dist, torch
from pyro_mle.likelihoods import Normal
{head}
X_COLUMNS = ("a",)
Y_COLUMNS = ("t",)
CALLS = [0]


def model(x, y=None):
    CALLS[0] += 1
    {model_body}
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    Normal(scale=0.5)("y", b + w * x, obs=y)


{load_data}
'''

LOAD_DATA = """def load_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g)
    return x, 1.0 + 2.0 * x + 0.5 * torch.randn(n, generator=g)"""


def write_model(tmp_path, name, head="", model_body="pass", load_data=LOAD_DATA):
    path = tmp_path / f"{name}.py"
    path.write_text(MODEL.format(head=head, model_body=model_body, load_data=load_data))
    return path


def write_csv(tmp_path, rows=30):
    path = tmp_path / "data.csv"
    lines = ["a,t"] + [f"{i / rows},{1.0 + 2.0 * i / rows + 0.1 * (-1) ** i}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pyro_mle.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=_env(env),
    )


def _env(extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra or {})}
    env.pop("PYRO_MLE_DEBUG", None)
    return env


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("PYRO_MLE_DEBUG", raising=False)


# ------------------------------------------------------------------------------------- --out
def test_out_that_is_a_file_is_refused_before_the_model_is_loaded(tmp_path):
    marker = tmp_path / "imported"
    path = write_model(tmp_path, "out_file", head=f"pathlib.Path({str(marker)!r}).touch()")
    (tmp_path / "results").write_text("not a folder")
    r = run("fit", path, "--out", tmp_path / "results")
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "--out" in line and "results" in line and "is a file, not a directory" in line
    assert not marker.exists()  # no work was done
    assert (tmp_path / "results").read_text() == "not a folder"


def test_out_under_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    bad = tmp_path / "f.txt" / "sub"
    assert cli.main(["certificates", "--n", "5", "--out", str(bad)]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"{str(tmp_path / 'f.txt')!r} is a file" in line and "give another folder path" in line


def test_out_that_cannot_be_written_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes everywhere a mode allows; /sys refuses even root
        bad = Path("/sys/pyro_mle_out")
        if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and _can_mkdir(bad):
            pytest.skip("no unwritable place for root here")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        bad = locked / "out"
    assert cli.main(["certificates", "--n", "5", "--out", str(bad)]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"--out {str(bad)!r} cannot be written" in line and "give a folder you can write to" in line


def _can_mkdir(path):
    try:
        path.mkdir()
    except OSError:
        return False
    path.rmdir()
    return True


def test_missing_out_folders_are_created_first(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert cli.main(["fit", str(write_model(tmp_path, "out_new")), "--quiet", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["out_new_mle.json", "out_new_mle.pt"]


# ------------------------------------------------------------------------- errors of the user
def test_model_error_during_the_fit_names_file_line_and_site_in_a_subprocess(tmp_path):
    body = "if CALLS[0] > 6: torch.ones(3) @ torch.ones(2)"
    path = write_model(tmp_path, "breaks_late", model_body=body)
    r = run("fit", path, "--quiet", "--out", tmp_path / "out")
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert line.startswith(f"pyro-mle: error: model file {str(path)!r}, line 13, in model(): RuntimeError: ")
    assert "--debug shows the traceback" in line


def test_debug_raises_the_error_itself(tmp_path, monkeypatch):
    path = write_model(tmp_path, "debugged", model_body="1 / 0")
    with pytest.raises(ZeroDivisionError):  # the interpreter prints the full traceback
        cli.main(["fit", str(path), "--quiet", "--debug"])
    monkeypatch.setenv("PYRO_MLE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["fit", str(path), "--quiet"])


def test_shape_bug_names_the_site_being_evaluated(tmp_path, capsys):
    body = "pass\n    Normal(scale=0.5)('z', torch.ones(3) @ torch.ones(2), obs=y)"
    path = write_model(tmp_path, "shape_bug", model_body=body)
    assert cli.main(["fit", str(path), "--quiet"]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"model file {str(path)!r}, line 14, in model(), site 'z': RuntimeError:" in line


def test_error_inside_a_pyro_primitive_names_its_site(tmp_path, capsys):
    body = "pass\n    pyro.sample('bad', dist.Normal(0.0, -1.0))"  # invalid scale: raised inside pyro.sample
    path = write_model(tmp_path, "bad_scale", model_body=body)
    assert cli.main(["fit", str(path), "--quiet"]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"model file {str(path)!r}, line 14, in model()" in line and "site 'bad'" in line


@pytest.mark.parametrize(
    "body, expected",
    [
        ("1 / 0", "line 13, in model(): ZeroDivisionError: division by zero (fix the model file there"),
        ("raise RuntimeError()", "line 13, in model(): RuntimeError (fix the model file there"),
        ("{}['w']", "line 13, in model(): KeyError: w (fix the model file there"),
    ],
)
def test_a_plain_python_error_in_the_model_is_one_line_with_its_type(tmp_path, capsys, body, expected):
    path = write_model(tmp_path, f"plain_{len(body)}", model_body=body)
    assert cli.main(["fit", str(path)]) == 1
    assert expected in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "head, expected",
    [
        ("import no_such_module_here", "line 5: failed to import: ModuleNotFoundError"),
        ("x = = 1", "line 5: failed to import: SyntaxError"),
    ],
)
def test_a_model_file_that_fails_to_import_names_its_line(tmp_path, capsys, head, expected):
    path = write_model(tmp_path, "broken_import", head=head)
    assert cli.main(["fit", str(path)]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"model file {str(path)!r}, {expected}" in line


def test_error_in_load_data_names_the_file_and_function(tmp_path, capsys):
    load = "def load_data(n=40, seed=0):\n    raise OSError('the download failed')"
    path = write_model(tmp_path, "load_fails", load_data=load)
    assert cli.main(["fit", str(path)]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"model file {str(path)!r}, line 20, in load_data(): OSError: the download failed" in line


def test_warnings_are_one_line_each(tmp_path, capsys):
    path = write_model(tmp_path, "warns", model_body="import warnings; warnings.warn('careful\\nnow')")
    assert cli.main(["fit", str(path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "pyro-mle: warning: UserWarning: careful now" in err.splitlines()


# ----------------------------------------------------------------------------------- load_data
@pytest.mark.parametrize(
    "signature, call",
    [
        ("load_data()", "fixed"),
        ("load_data(n=40)", "n"),
        ("load_data(seed=0)", "seed"),
        ("load_data(seed=0, n=40)", "n,seed"),
        ("load_data(**options)", "options"),
    ],
)
def test_load_data_may_take_any_subset_of_n_and_seed(tmp_path, capsys, signature, call):
    load = f"def {signature}:\n    LOADS.append({call!r})\n    x = torch.linspace(0, 1, 30)\n    return x, 2 * x"
    path = write_model(tmp_path, f"subset_{len(signature)}", head="LOADS = []", load_data=load)
    assert cli.main(["fit", str(path), "--quiet"]) == 0
    assert "MLE fit of 30 rows" in capsys.readouterr().out
    assert sys.modules[f"pyro_mle_model_{path.stem}"].LOADS == [call]


def test_load_data_is_not_called_with_data(tmp_path, capsys):
    load = "def load_data():\n    raise RuntimeError('load_data must not run with --data')"
    path = write_model(tmp_path, "never_loaded", load_data=load)
    assert cli.main(["fit", str(path), "--data", str(write_csv(tmp_path)), "--quiet"]) == 0
    assert "MLE fit of 30 rows" in capsys.readouterr().out


@pytest.mark.parametrize(
    "load, args, message",
    [
        ("def load_data(seed=0):\n    pass", ["--n", "10"], "load_data() takes no 'n', so the number of rows is fixed"),
        ("def load_data(n, seed=0):\n    pass", [], "load_data(n, ...) has no default number of rows; pass --n"),
        ("def load_data(path, seed=0):\n    pass", [], "load_data() requires 'path'"),
        ("def load_data(n=5, seed=0):\n    return 3", [], "load_data() returned int; it must return (x, y) tensors"),
    ],
)
def test_load_data_mismatches_are_one_line(tmp_path, capsys, load, args, message):
    path = write_model(tmp_path, f"mismatch_{abs(hash(load)) % 10**6}", load_data=load)
    assert cli.main(["fit", str(path), *args]) == 1
    assert message in one_line(capsys.readouterr().err)


def test_n_with_data_is_refused(tmp_path, capsys):
    path = write_model(tmp_path, "n_and_data")
    assert cli.main(["fit", str(path), "--data", str(write_csv(tmp_path)), "--n", "5"]) == 1
    assert "--n 5 sizes the model's own data, but --data" in one_line(capsys.readouterr().err)


def test_csv_dtype_comes_from_the_model_files_dtype(tmp_path, capsys):
    body = "assert x.dtype == torch.float64, x.dtype"
    path = write_model(tmp_path, "wants_double", head='DTYPE = "float64"', model_body=body)
    out = tmp_path / "out"
    assert cli.main(["fit", str(path), "--data", str(write_csv(tmp_path)), "--quiet", "--out", str(out)]) == 0
    assert pyro_mle.load(out / "wants_double_mle.pt").params["w"].dtype == torch.float64
    path = write_model(tmp_path, "single", model_body="assert x.dtype == torch.float32, x.dtype")
    assert cli.main(["fit", str(path), "--data", str(write_csv(tmp_path)), "--quiet"]) == 0


def test_a_bad_dtype_is_named(tmp_path, capsys):
    path = write_model(tmp_path, "bad_dtype", head='DTYPE = "int64"')
    assert cli.main(["fit", str(path), "--data", str(write_csv(tmp_path))]) == 1
    assert "DTYPE = 'int64' is not a torch floating dtype" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------- pipes and Ctrl-C
@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_closed_stdout_pipe_exits_0_quietly_with_every_file_written(tmp_path, unbuffered):
    out = tmp_path / f"out_{unbuffered}"
    env = _env()
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    p = subprocess.Popen(
        [sys.executable, "-m", "pyro_mle.cli", "fit", "linear_regression", "--n", "30", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    p.stdout.close()  # the reader is gone before the first line: `| head -0`
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0, err
    assert "BrokenPipeError" not in err and "Exception ignored" not in err and "Traceback" not in err
    assert sorted(f.name for f in out.iterdir()) == ["linear_regression_mle.json", "linear_regression_mle.pt"]


def test_sigint_during_a_fit_writes_the_estimate_and_exits_130(tmp_path):
    ready = tmp_path / "ready"
    body = f"if CALLS[0] == 8: pathlib.Path({str(ready)!r}).touch()\n    if CALLS[0] >= 8: time.sleep(0.05)"
    path = write_model(tmp_path, "slow_fit", model_body=body)
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-m", "pyro_mle.cli", "fit", str(path), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "interrupted (Ctrl-C)" in one_line(stderr)
    summary = json.loads((out / "slow_fit_mle.json").read_text())
    assert summary["converged"] is False and set(summary["params"]) == {"w", "b"}
    assert (out / "slow_fit_mle.pt").is_file() and "wrote" in stdout


def test_ctrl_c_in_compare_is_one_line_saying_nothing_was_written(tmp_path, capsys):
    path = write_model(tmp_path, "compare_interrupted", model_body="if CALLS[0] == 12: raise KeyboardInterrupt")
    out = tmp_path / "out"
    assert cli.main(["compare", str(path), "--methods", "mle,map", "--quiet", "--out", str(out)]) == 130
    line = one_line(capsys.readouterr().err)
    assert line == "pyro-mle: interrupted; nothing written (compare writes when every method has run)"
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------ progress
def test_progress_in_a_log_is_a_line_with_step_loss_and_rate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    path = write_model(tmp_path, "logged")
    assert cli.main(["fit", str(path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("MLE (lbfgs): step 1/") and ", loss=" in lines[0] and "steps/s" in lines[0]
    assert lines[-1].startswith("MLE (lbfgs): ended at step ")
    assert cli.main(["fit", str(path), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_line_progress_waits_for_the_interval():
    clock = iter([0.0, 1.0, 2.0, 6.0, 7.0, 12.0, 13.0]).__next__
    stream = io.StringIO()
    bar = progress.LineProgress(100, "ADAM", stream, interval=5.0, clock=clock)  # starts at 0
    for step in range(1, 5):  # at 1, 2, 6 and 7 s: one line, at 6 s
        bar.set_postfix(loss=f"{10 - step}")
        bar.update()
    bar.close()  # at 12 s
    assert stream.getvalue().splitlines() == [
        "ADAM: step 3/100, loss=7, 0.5 steps/s, 6 s",
        "ADAM: ended at step 4/100, loss=6, 0.333 steps/s, 12 s",
    ]
    quiet = progress.LineProgress(100, "short", stream := io.StringIO(), interval=5.0)
    quiet.update()
    quiet.close()
    assert stream.getvalue() == ""  # a run shorter than the interval prints nothing
    eager = progress.LineProgress(100, "asked", stream, interval=5.0, first=True)  # progress=True
    eager.update()
    assert stream.getvalue().startswith("asked: step 1/100, ")


def test_progress_bar_kinds():
    assert progress.progress_bar(10, "x", False).disable
    assert isinstance(progress.progress_bar(10, "x", None, file=io.StringIO()), progress.LineProgress)


# ------------------------------------------------------------------------------------- tables
def test_one_table_printer_aligns_text_left_and_numbers_right():
    text = format_table(("model", "N", "note"), [("line", "5", "ok"), ("logistic", "120", "")])
    assert text.splitlines() == ["model       N  note", "line        5  ok", "logistic  120"]
    with pytest.raises(ValueError, match=r"rows \[1\] have 2 cells but the header has 3"):
        format_table(("a", "b", "c"), [("1", "2", "3"), ("1", "2")])


def test_certificates_and_list_use_the_one_table_printer(capsys):
    rows = [Certificate("Normal(scale=0.3)", "least squares", 1, 10, 0.5, 1e-16, 1e-17)]
    assert certificate_table_text(rows) == format_table(
        ("likelihood head", "classical loss", "outputs", "mean NLL", "max |NLL - loss|"),
        [("Normal(scale=0.3)", "least squares", "1", "0.5000", "1.0e-16")],
    )
    assert cli.main(["list"]) == 0
    heads = capsys.readouterr().out.split("likelihood heads (pyro_mle.likelihoods):\n")[1].splitlines()
    assert heads[0].split() == ["head", "classical", "loss", "outputs"]
    bernoulli = next(line for line in heads if line.startswith("Bernoulli()"))
    assert heads[0].index("classical") == bernoulli.index("binary cross-entropy")

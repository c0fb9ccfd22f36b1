"""Bad data files and bad data arguments: each turned into one clear error, or read as meant.

* CSV files (pyro_mle.model_files.read_csv, through pandas): Excel's byte-order mark,
  comma/semicolon/tab separators, blank and ragged rows kept as today; every bad cell named by
  file, line and column; files that are empty, not UTF-8 or malformed named with the fix. The
  command line turns each into one line on stderr and exit status 1.
* pyro_mle.data.MemoryMappedRows: .npz archives, object and complex arrays refused with the
  fix; rows out of range named; memory-mapped arguments of one fit with different row counts.
* Complex x or y refused by name, in fit and in a likelihood head.
* pyro_mle.distributed.shard with fewer rows than processes.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
import pyro_mle.distributed as pmd
from pyro_mle import likelihoods as L
from pyro_mle.data import MemoryMappedRows
from pyro_mle.model_files import read_csv


def write(tmp_path, text, name="data.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def read(path, x=("a",), y=("b",), dtype=torch.float64):
    return read_csv(path, x, y, dtype=dtype)


# ----------------------------------------------------------------------------- CSV: what is read
@pytest.mark.parametrize(
    "text",
    [
        "a,b\n1,2\n3.5,-4e-1\n",
        "\ufeffa,b\n1,2\n3.5,-4e-1\n",  # Excel's "CSV UTF-8": a byte-order mark before the first name
        "a;b\n1;2\n3.5;-4e-1\n",  # Excel where the decimal separator is a comma
        "a\tb\n1\t2\n3.5\t-4e-1\n",
        '"a","b"\r\n"1","2"\r\n"3.5","-4e-1"\r\n',  # quoted, Windows line ends
        " a , b \n 1 , 2 \n3.5 ,  -4e-1\n",  # spaces around names and cells
        "a,b\n1,2\n\n,\n  ,  \n3.5,-4e-1\n\n",  # blank rows are no examples
        "a,b,c\n1,2,\n3.5,-4e-1,7,8\n",  # trailing separators, rows longer than the header
    ],
)
def test_csv_variants_read_the_same_table(tmp_path, text):
    x, y = read(write(tmp_path, text))
    np.testing.assert_array_equal(x.numpy(), [1.0, 3.5])
    np.testing.assert_array_equal(y.numpy(), [2.0, -0.4])


def test_csv_values_are_exactly_what_python_reads(tmp_path):
    """Shortest round-trip spellings of random float64 values, integers and exponents: the
    tensors equal Python's float() of every cell, bit for bit."""
    rng = np.random.default_rng(0)
    a = np.r_[rng.normal(size=500) * 10.0 ** rng.integers(-300, 300, size=500), [0.0, -0.0, 1e308, 5e-324]]
    b = rng.integers(-(10**15), 10**15, size=len(a)).astype(np.float64)
    rows = ["a,b,c"] + [f"{float(ai)!r},{int(bi)},{i}" for i, (ai, bi) in enumerate(zip(a, b))]
    x, y = read(write(tmp_path, "\n".join(rows)), x=("a", "c"))
    np.testing.assert_array_equal(x[:, 0].numpy(), a)
    np.testing.assert_array_equal(x[:, 1].numpy(), np.arange(len(a)))
    np.testing.assert_array_equal(y.numpy(), b)
    assert x.dtype == torch.float64 and x.shape == (len(a), 2) and y.shape == (len(a),)


def test_csv_columns_in_any_order_and_the_dtype_asked_for(tmp_path):
    path = write(tmp_path, "id,b,a,name\n1,2,3,first\n4,5,6,second\n")
    x, y = read_csv(path, ("a", "id"), ("b",))
    np.testing.assert_array_equal(x.numpy(), [[3.0, 1.0], [6.0, 4.0]])
    assert x.dtype == y.dtype == torch.float32  # the default
    x, _ = read_csv(path, ("a",), ("b",), dtype=torch.float64)
    assert x.dtype == torch.float64


# ----------------------------------------------------------------------------- CSV: bad cells, by line and column
@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b\n1,2\n3,oops\n4,nan\n", "line 3, column 'b': 'oops' is not a number."),
        ("a,b\n1,2\n3,\n", "line 3, column 'b': '' is not a number."),
        ("a,b\n1,2\n3\n", "line 3, column 'b': '' is not a number."),  # a short row
        ("a,b\n1,2\n3,NA\n", "line 3, column 'b': 'NA' is not a number."),
        ("a,b\n1,2\n3,True\n", "line 3, column 'b': 'True' is not a number."),
        ("a,b\n1,2\n3,nan\n", "line 3, column 'b': 'nan' is not finite. Drop or impute that row."),
        ("a,b\n1,2\n-inf,1\n", "line 3, column 'a': '-inf' is not finite. Drop or impute that row."),
        ("a,b\n1,2\n\n\n3,oops\n", "line 5, column 'b': 'oops' is not a number."),  # blank lines counted
        ("a,b\n1,x\ny,2\n", "line 2, column 'b': 'x' is not a number."),  # the first in line order
        ("a,b\nx,y\n", "line 2, column 'a': 'x' is not a number."),  # then in column order
        ('a,note,b\n1,"two\nlines",2\n3,x,oops\n', "line 4, column 'b': 'oops' is not a number."),  # physical lines
        ("a,b\n1,2,3\n4,oops\n", "line 3, column 'b': 'oops' is not a number."),  # after a row longer than the header
        ("\ufeffa;b\n1;2\n1,5;3\n", "line 3, column 'a': '1,5' is not a number. The file looks like it uses decimal"),
    ],
)
def test_csv_bad_cells_name_file_line_and_column(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        read(path)
    assert str(e.value).startswith(f"data file {str(path)!r}, ") and message in str(e.value)


@pytest.mark.parametrize(
    "text, encoding, message",
    [
        ("", "utf-8", "is empty: expected a header line with column names."),
        ("\na,b\n1,2\n", "utf-8", "line 1 is blank; expected the header line with column names there."),
        ("a,b\n", "utf-8", "has a header but no data rows."),
        ("a,b\n\n,\n", "utf-8", "has a header but no data rows."),
        ("a,c\n1,2\n", "utf-8", "has no column 'b'; its columns are ['a', 'c']. Choose columns with --x and --y."),
        ("a|b\n1|2\n", "utf-8", "Its header line holds no comma, semicolon or tab"),
        ("a,b\n1,2\n3,é\n", "latin1", "is not UTF-8 text: line 3 holds the byte b'\\xe9'. Save it as 'CSV UTF-8'"),
        ("a\tb\n1\t2\n", "utf-16", "is not UTF-8 text but UTF-16 (Excel's 'Unicode Text'). Save it as 'CSV UTF-8'"),
        ('a,b\n1,"2\n3,4\n', "utf-8", "is not a well-formed CSV file (Error tokenizing data. C error: EOF inside"),
    ],
)
def test_csv_bad_files_are_named_with_the_fix(tmp_path, text, encoding, message):
    path = write(tmp_path, text, encoding=encoding)
    with pytest.raises(ValueError) as e:
        read(path)
    assert str(e.value).startswith(f"data file {str(path)!r}") and message in str(e.value)


def test_csv_bad_cell_deep_in_a_large_file(tmp_path):
    """pandas reads a large file in chunks and warns of a column whose types differ between
    them (warnings are errors here): the cell is still found by its line, the warning kept quiet."""
    path = write(tmp_path, "a,b\n" + "1,2\n" * 300_000 + "\n3,oops\n")
    with pytest.raises(ValueError, match=r"line 300003, column 'b': 'oops' is not a number"):
        read(path)


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file '.*nope.csv' does not exist"):
        read(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- CSV through the command line
MODEL_FILE = '''"""A straight line with Normal noise."""
import pyro, torch
from pyro_mle.likelihoods import Normal

X_COLUMNS = ("x1",)
Y_COLUMNS = ("y",)


def model(x, y=None):
    w = pyro.param("w", torch.zeros(()))
    b = pyro.param("b", torch.zeros(()))
    Normal(scale=0.5)("y", b + w * x, obs=y)


def load_data(n=20, seed=0):
    x = torch.linspace(0, 1, n)
    return x, 1.0 + 2.0 * x
'''


def cli(tmp_path, *args):
    """``pyro-mle fit line.py ARGS`` in a fresh process importing this pyro_mle, run in ``tmp_path``."""
    (tmp_path / "line.py").write_text(MODEL_FILE)
    root = str(Path(pyro_mle.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "pyro_mle.cli", "fit", str(tmp_path / "line.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )


def test_cli_fits_an_excel_csv_utf8_file_with_semicolons(tmp_path):
    rows = ["x1;y"] + [f"{i / 9};{1.0 + 2.0 * i / 9}" for i in range(10)]
    write(tmp_path, "\ufeff" + "\r\n".join(rows) + "\r\n")
    r = cli(tmp_path, "--data", "data.csv", "--out", "out")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "out").is_dir() and any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "text, encoding, message",
    [
        ("x1,y\n0,1\n0.5,oops\n", "utf-8", "line 3, column 'y': 'oops' is not a number."),
        ("x1,y\n0,1\n0.5,é\n", "latin1", "is not UTF-8 text: line 3 holds the byte"),
    ],
)
def test_cli_bad_csv_is_one_line_and_exit_1(tmp_path, text, encoding, message):
    write(tmp_path, text, encoding=encoding)
    r = cli(tmp_path, "--data", "data.csv")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "data file 'data.csv'" in r.stderr and message in r.stderr


# ----------------------------------------------------------------------------- MemoryMappedRows
def test_npz_archives_object_and_complex_arrays_are_refused_with_the_fix(tmp_path):
    np.savez(tmp_path / "both.npz", x=np.zeros((3, 2)), y=np.ones(3))
    with pytest.raises(ValueError, match=r"\.npz archive of the arrays \['x', 'y'\].*np\.save\('x\.npy'.*np\.load"):
        MemoryMappedRows(tmp_path / "both.npz")
    np.save(tmp_path / "objects.npy", np.array([1.0, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"holds Python objects \(dtype=object\).*np\.asarray\(a, dtype=np\.float64\)"):
        MemoryMappedRows(tmp_path / "objects.npy")
    np.save(tmp_path / "complex.npy", np.zeros(3, dtype=np.complex64))
    with pytest.raises(ValueError, match=r"dtype complex64 is complex.*a\.real.*np\.stack\(\[a\.real, a\.imag\]"):
        MemoryMappedRows(tmp_path / "complex.npy")


def test_rows_out_of_range_name_the_file_and_its_length(tmp_path):
    np.save(tmp_path / "y.npy", np.arange(10.0))
    rows = MemoryMappedRows(tmp_path / "y.npy")
    for index in (torch.tensor([3, 10]), torch.tensor([8, 9, 10]), np.array([-11]), 10, [0, 12]):
        with pytest.raises(
            IndexError, match=r"MemoryMappedRows\('.*y\.npy'.*row -?1[012] is out of range; the file has 10 rows"
        ):
            rows[index]
    np.testing.assert_array_equal(rows[torch.tensor([8, 9])].numpy(), [8.0, 9.0])
    np.testing.assert_array_equal(rows[[-1, 0]].numpy(), [9.0, 0.0])
    np.testing.assert_array_equal(rows[5:20].numpy(), np.arange(5.0, 10.0))  # slices keep Python's meaning


def minibatch_model(x, y=None, batch_size=50):
    w = pyro.param("w", torch.zeros(x.shape[1], dtype=torch.float64))
    with pyro.plate("data", len(x), subsample_size=batch_size) as idx:
        L.Normal(scale=1.0)("y", x[idx] @ w, obs=None if y is None else y[idx])


@pytest.mark.parametrize("nx, ny", [(90, 100), (100, 90)])
def test_memory_mapped_arguments_of_different_lengths_are_refused_by_name(tmp_path, nx, ny):
    np.save(tmp_path / "x.npy", np.ones((nx, 2)))
    np.save(tmp_path / "y.npy", np.ones(ny))
    x, y = MemoryMappedRows(tmp_path / "x.npy"), MemoryMappedRows(tmp_path / "y.npy")
    short, long_ = ("x", "y") if nx < ny else ("y", "x")
    expected = (
        rf"fit\(model\): the memory-mapped arguments have different numbers of rows: x \('.*x\.npy'\) has {nx} "
        rf"rows, y \('.*y\.npy'\) has {ny} rows\..*silently skip the last 10 rows of {long_}.*past the end of {short}"
    )
    for args, kwargs in (((x, y), {}), ((x,), {"y": y})):
        with pytest.raises(ValueError, match=expected):
            pyro_mle.fit(minibatch_model, *args, num_steps=3, **kwargs)


# ----------------------------------------------------------------------------- complex input
def line(x, y=None):
    w = pyro.param("w", torch.zeros(()))
    with pyro.plate("data", len(x)):
        L.Normal(scale=1.0)("y", w * x, obs=y)


def plain_line(data):
    w = pyro.param("w", torch.zeros(()))
    with pyro.plate("data", len(data["x"])):
        pyro.sample("y", dist.Normal(w * data["x"], 1.0), obs=data["y"])


@pytest.mark.parametrize(
    "model, args, kwargs, name",
    [
        (line, (torch.linspace(0, 1, 5), torch.ones(5, dtype=torch.complex64)), {}, "y"),
        (line, (torch.linspace(0, 1, 5), np.ones(5) + 1j), {}, "y"),
        (line, (torch.linspace(0, 1, 5).to(torch.complex128),), {"y": torch.ones(5)}, "x"),
        (line, (torch.linspace(0, 1, 5),), {"y": np.ones(5, dtype=np.complex64)}, "y"),
        (plain_line, ({"x": torch.ones(5), "y": torch.ones(5, dtype=torch.complex64)},), {}, "data['y']"),
    ],
)
def test_complex_arguments_are_refused_by_name_before_any_cast(model, args, kwargs, name):
    """No torch "discards the imaginary part" warning either: warnings are errors here."""
    with pytest.raises(TypeError) as e:
        pyro_mle.fit(model, *args, **kwargs)
    message = str(e.value)
    assert message.startswith(f"fit(model): argument {name!r} must be real; got the complex dtype ")
    assert f"Pass {name}.real, or the modulus {name}.abs()" in message and "torch.view_as_real" in message


def test_a_likelihood_head_refuses_complex_observations():
    with pytest.raises(TypeError, match=r"Normal likelihood 'y': observed values must be real; got the complex dtype"):
        L.Normal(scale=1.0)("y", torch.zeros(3), obs=torch.ones(3, dtype=torch.complex64))


# ----------------------------------------------------------------------------- shard
@pytest.mark.parametrize("rank", range(4))
def test_shard_refuses_fewer_rows_than_processes_on_every_process(rank):
    with pytest.raises(ValueError, match=r"shard: 3 rows cannot be split over 4 processes.*--nproc-per-node=3"):
        pmd.shard(np.arange(3), np.arange(3), rank=rank, world_size=4)
    with pytest.raises(ValueError, match=r"shard: the arrays have no rows to split over 4 processes"):
        pmd.shard(torch.zeros(0, 2), rank=rank, world_size=4)
    (block,) = pmd.shard(np.arange(4), rank=rank, world_size=4)  # one row each: fine
    np.testing.assert_array_equal(block, [rank])

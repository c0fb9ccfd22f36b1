"""Fit.save and load: the file's header and site table, every unreadable file named as such,
every unwritable place named with its reason, and models whose sites differ refused (issue 10)."""

import os
import pickle
import random

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mle
from pyro_mle import load
from pyro_mle._fit_file import FitFileError, SiteMismatchError

X = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64)
Y = 2.0 * X + 0.5 + 0.1 * torch.sin(7.0 * X)


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)


def renamed(x, y=None):  # the latent w is called slope here
    w = pyro.sample("slope", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)


def latent_as_param(x, y=None):  # w became a pyro.param
    w = pyro.param("w", torch.zeros((), dtype=x.dtype))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)


def reshaped(x, y=None):  # b has two entries, and a new param c
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    b = pyro.param("b", torch.zeros(2, dtype=x.dtype))
    c = pyro.param("c", torch.zeros((), dtype=x.dtype))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x + b.sum() + c, 0.1), obs=y)


def renamed_target(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    b = pyro.param("b", torch.zeros((), dtype=x.dtype))
    with pyro.plate("data", len(x)):
        pyro.sample("target", dist.Normal(w * x + b, 0.1), obs=y)


@pytest.fixture(scope="module")
def fitted():
    return pyro_mle.fit(model, X, Y, progress=False)


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "fit.pt"
    fitted.save(path)
    return path


def payload(path):
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------- the file


def test_the_file_records_format_version_and_site_table(saved, fitted):
    p = payload(saved)
    assert p["format"] == "pyro_mle.Fit" and p["version"] == 2
    assert p["sites"] == [
        {"name": "w", "kind": "latent", "shape": []},
        {"name": "b", "kind": "param", "shape": []},
        {"name": "y", "kind": "observed", "shape": None},
    ]
    loaded = load(saved)
    for name in ("losses", "converged", "nll", "method", "optimizer", "num_steps", "grad_norm", "latent", "observed"):
        assert getattr(loaded, name) == getattr(fitted, name), name
    assert all(torch.equal(loaded.params[k], v) for k, v in fitted.params.items())


def test_the_right_model_loads_and_predicts_as_before(saved, fitted):
    before = fitted.predict(X, num_samples=4, seed=3).draws["y"]
    assert torch.equal(load(saved, model, X).predict(X, num_samples=4, seed=3).draws["y"], before)
    assert torch.equal(load(saved, model=model).predict(X, num_samples=4, seed=3).draws["y"], before)


def test_version_1_files_and_headerless_ones_still_load(saved, tmp_path, fitted):
    old = {k: v for k, v in payload(saved).items() if k != "sites"}
    old["version"] = 1
    torch.save(old, tmp_path / "v1.pt")
    headerless = {k: v for k, v in old.items() if k not in ("format", "version")}
    torch.save(headerless, tmp_path / "v0.pt")
    for name in ("v1.pt", "v0.pt"):
        loaded = load(tmp_path / name)
        assert loaded.latent == ("w",) and torch.equal(loaded.params["w"], fitted.params["w"])
        with pytest.raises(SiteMismatchError, match="'w'"):  # the rebuilt site table is checked too
            load(tmp_path / name, renamed, X)


def test_loading_leaves_the_random_state_and_param_store_alone(saved):
    torch.manual_seed(5)
    random.seed(5)
    expected = (torch.rand(()).item(), random.random())
    torch.manual_seed(5)
    random.seed(5)
    pyro.clear_param_store()
    load(saved, model, X)
    assert (torch.rand(()).item(), random.random()) == expected
    assert list(pyro.get_param_store().keys()) == []


# ---------------------------------------------------------------- files that are not fits


class _Runs:
    """An object whose unpickling would run code: it must never be loaded."""

    def __reduce__(self):
        return (open, ("/tmp/pyro_mle_test_should_not_exist", "w"))


def _bad_files(saved, tmp_path):
    whole = saved.read_bytes()
    p = payload(saved)
    files = {
        "empty": (b"", "the file is empty"),
        "garbage": (bytes(range(256)) * 4, "not a torch.save archive"),
        "text": (b"x,y\n1,2\n", "not a torch.save archive"),
        "plain pickle": (pickle.dumps({"a": 1}), "not a torch.save archive"),
        "truncated": (whole[: len(whole) // 2], "a truncated or corrupt archive"),
        "cut short": (whole[:-20], "a truncated or corrupt archive"),
    }
    out = {name: (tmp_path / f"{name}.pt", reason) for name, (_, reason) in files.items()}
    for name, (data, _) in files.items():
        out[name][0].write_bytes(data)
    objects = {
        "foreign dict": ({"a": 1}, "no 'pyro_mle.Fit' header"),
        "tensor": (torch.zeros(3), "it holds a Tensor, not the dictionary"),
        "missing field": ({k: v for k, v in p.items() if k != "losses"}, "field 'losses' is missing"),
        "wrong type": ({**p, "num_steps": "ten"}, "field 'num_steps' is str, expected an integer"),
        "bad param": ({**p, "params": {"w": 1.0}}, "parameter 'w' is float, expected a tensor"),
        "edited table": ({**p, "sites": p["sites"][:1]}, "its site table does not match its parameters"),
        "python object": ({"a": _Runs()}, "holds Python objects other than tensors and plain values"),
    }
    for name, (obj, reason) in objects.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        out[name] = (tmp_path / f"{name}.pt", reason)
    out["folder"] = (tmp_path, "it is a folder")
    return out


def test_unreadable_files_are_named_with_the_reason(saved, tmp_path):
    for name, (path, reason) in _bad_files(saved, tmp_path).items():
        with pytest.raises(FitFileError) as e:
            load(path)
        msg = str(e.value)
        assert msg.startswith(f"not a pyro_mle fit file ({path}: "), (name, msg)
        assert reason in msg, (name, msg)
        assert "weights_only" not in msg and "\n" not in msg, (name, msg)
        assert isinstance(e.value, ValueError) and e.value.path == str(path)
    assert not os.path.exists("/tmp/pyro_mle_test_should_not_exist")  # nothing in a file was run


def test_a_newer_format_version_names_the_versions(saved, tmp_path):
    torch.save({**payload(saved), "version": 99}, tmp_path / "new.pt")
    with pytest.raises(FitFileError, match=r"format version 99; this pyro_mle reads versions 1, 2. Upgrade"):
        load(tmp_path / "new.pt")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load\('.*nope.pt'\): no such file"):
        load(tmp_path / "nope.pt")


# ---------------------------------------------------------------- places that cannot be written


def test_a_folder_as_path_is_refused(fitted, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder; give a file name inside it, e.g. '.*fit.pt'"):
        fitted.save(tmp_path)


def test_a_file_where_a_folder_should_be_is_named(fitted, saved):
    with pytest.raises(NotADirectoryError, match=rf"'{saved}' is a file, not a folder"):
        fitted.save(saved / "sub" / "fit.pt")


def test_a_missing_folder_is_named(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"the folder '{tmp_path / 'no' / 'such'}' does not exist"):
        fitted.save(tmp_path / "no" / "such" / "fit.pt")


def _unwritable_folder(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a mode allows; sysfs refuses new files even to root
        return "/sys"
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return str(folder)


def test_an_unwritable_folder_is_named_with_the_reason(fitted, tmp_path):
    folder = _unwritable_folder(tmp_path)
    with pytest.raises(PermissionError) as e:
        fitted.save(os.path.join(folder, "fit.pt"))
    msg = str(e.value)
    assert f"cannot write in the folder '{folder}' (Permission denied)" in msg
    assert "enforce fail" not in msg and "inline_container" not in msg


def test_a_failed_save_keeps_the_earlier_file_and_leaves_no_debris(fitted, saved, monkeypatch):
    before = saved.read_bytes()

    def broken(obj, f):
        f.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match=r"cannot write in the folder .* \(No space left on device\)"):
        fitted.save(saved)
    assert saved.read_bytes() == before
    assert sorted(os.listdir(saved.parent)) == ["fit.pt"]


# ---------------------------------------------------------------- models whose sites differ


@pytest.mark.parametrize(
    ("other", "differences"),
    [
        (
            renamed,
            [
                "'w': a latent sample site in the file, not in the model",
                "'slope': a latent sample site in the model, not in the file (it would be drawn from its prior)",
            ],
        ),
        (latent_as_param, ["'w': a latent sample site in the file, a pyro.param in the model"]),
        (
            reshaped,
            [
                "'b': shape () in the file, (2,) in the model",
                "'c': a pyro.param in the model, not in the file (it would keep its initial value)",
            ],
        ),
        (renamed_target, ["'y': an observed site in the file, not in the model", "'target':"]),
    ],
)
def test_a_model_whose_sites_differ_is_refused_listing_them(saved, other, differences):
    with pytest.raises(SiteMismatchError) as e:
        load(saved, other, X)  # checked at once with the model's arguments
    assert str(e.value).startswith(f"load('{saved}'): the model's sites differ from the fit's")
    assert len(e.value.differences) == len(differences)
    for text in differences:
        assert text in str(e.value)
    loaded = load(saved, model=other)  # without them, at the first prediction
    with pytest.raises(SiteMismatchError, match=r"Fit\.predict: the model's sites differ") as e:
        loaded.predict(X)
    assert all(text in str(e.value) for text in differences)


def test_a_model_without_arguments_is_checked_at_load(tmp_path):
    def constant():
        m = pyro.sample("m", dist.Normal(0.0, 10.0))
        pyro.sample("y", dist.Normal(m, 1.0).expand([3]).to_event(1), obs=torch.tensor([1.0, 2.0, 3.0]))

    def other():
        m = pyro.param("m", torch.tensor(0.0))
        pyro.sample("y", dist.Normal(m, 1.0).expand([3]).to_event(1), obs=torch.tensor([1.0, 2.0, 3.0]))

    path = tmp_path / "c.pt"
    pyro_mle.fit(constant, progress=False).save(path)
    assert load(path, constant).params["m"].item() == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(SiteMismatchError, match="'m': a latent sample site in the file, a pyro.param in the model"):
        load(path, other)

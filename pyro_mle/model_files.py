"""Model files: a Pyro program in a plain Python file, loadable by name or by path.

The convention (see README, "Writing a model file")::

    \"\"\"One-line title.

    Likelihood: Normal(scale=0.5) → least squares. ...
    \"\"\"
    LIKELIHOOD = "normal"          # optional: registry name of the likelihood
    LOSS = "least squares"         # optional: the classical loss it gives
    X_COLUMNS = ("x",)             # optional: CSV columns for the inputs (default ("x",))
    Y_COLUMNS = ("y",)             # optional: CSV columns for the targets (default ("y",))

    def model(x, y=None): ...      # the Pyro program
    def load_data(n=200, seed=0):  # returns (x, y): simulated, or a data set shipped in a package
        ...

Built-in models live in the repository's ``models/`` folder (override with the environment
variable ``PYRO_MLE_MODELS``); any other file is loaded by its path.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from .csv_data import read_csv  # noqa: F401 - the data files a model reads, re-exported for the CLI


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file.

    Fields:
      * ``name``: file stem (``"linear_regression"``).
      * ``path``: where it was loaded from.
      * ``title``: first line of its docstring.
      * ``doc``: the whole docstring.
      * ``model``: the Pyro program ``model(x, y=None)``.
      * ``load_data``: ``load_data(n=..., seed=...) -> (x, y)``.
      * ``likelihood``, ``loss``: the optional ``LIKELIHOOD`` and ``LOSS`` constants ("" if absent).
      * ``x_columns``, ``y_columns``: CSV column names for inputs and targets.
      * ``module``: the module object.
    """

    name: str
    path: Path
    title: str
    doc: str
    model: Callable
    load_data: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    likelihood: str
    loss: str
    x_columns: tuple[str, ...]
    y_columns: tuple[str, ...]
    module: ModuleType


def models_dir() -> Path:
    """The folder of built-in models: ``$PYRO_MLE_MODELS`` or the repository's ``models/``."""
    env = os.environ.get("PYRO_MLE_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def builtin_models() -> dict[str, Path]:
    """Name → path of every built-in model file, sorted by name."""
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}


def load_model_file(name_or_path: str | os.PathLike) -> ModelFile:
    """Load a built-in model by name, or a user's model file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".py") or os.sep in text or "/" in text):
        known = builtin_models()
        if text not in known:
            raise ValueError(
                f"unknown model {text!r}: not a built-in model (see 'pyro-mle list': "
                f"{', '.join(known) or 'none found'}) and not a path to a .py file."
            )
        path = known[text]
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist.")
    spec = importlib.util.spec_from_file_location(f"pyro_mle_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file is reported with its path
        del sys.modules[spec.name]
        raise ValueError(f"model file {str(path)!r} failed to import: {type(e).__name__}: {e}") from e
    for attr in ("model", "load_data"):
        if not callable(getattr(module, attr, None)):
            raise ValueError(
                f"model file {str(path)!r} defines no function {attr!r}. A model file defines "
                "model(x, y=None) and load_data(n=..., seed=...) -> (x, y); see README, 'Writing a model file'."
            )
    doc = (module.__doc__ or "").strip()
    return ModelFile(
        name=path.stem,
        path=path,
        title=doc.splitlines()[0] if doc else path.stem,
        doc=doc,
        model=module.model,
        load_data=module.load_data,
        likelihood=str(getattr(module, "LIKELIHOOD", "")),
        loss=str(getattr(module, "LOSS", "")),
        x_columns=tuple(getattr(module, "X_COLUMNS", ("x",))),
        y_columns=tuple(getattr(module, "Y_COLUMNS", ("y",))),
        module=module,
    )


def call_load_data(mf: ModelFile, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``mf.load_data`` called with the subset of ``(n, seed)`` its signature takes.

    ``n=None`` keeps the function's own default size. A ``load_data`` without an ``n``
    parameter refuses an explicit ``n``; one without ``seed`` is called without it (its data
    are fixed). Other parameters must have defaults.
    """
    where = f"model file {str(mf.path)!r}: load_data"
    try:
        params = inspect.signature(mf.load_data).parameters
    except (TypeError, ValueError):  # a callable without a signature: call it as documented
        return mf.load_data(seed=seed) if n is None else mf.load_data(n=n, seed=seed)
    names = {p.name for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    required = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in ("n", "seed")
    ]
    if required:
        raise ValueError(
            f"{where}() requires {', '.join(map(repr, required))}; it may take only n and seed (both optional). "
            "Give those parameters defaults."
        )
    if n is None and "n" in params and params["n"].default is inspect.Parameter.empty:
        raise ValueError(f"{where}(n, ...) has no default number of rows; pass --n.")
    kwargs: dict[str, int] = {}
    if n is not None:
        if "n" not in names and not open_kw:
            raise ValueError(f"{where}() takes no 'n', so the number of rows is fixed; drop --n.")
        kwargs["n"] = n
    if "seed" in names or open_kw:
        kwargs["seed"] = seed
    return mf.load_data(**kwargs)

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

import csv
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch


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


def read_csv(
    path: str | os.PathLike, x_columns: Sequence[str], y_columns: Sequence[str], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read named columns of a CSV file into ``(x, y)`` tensors.

    One column gives shape ``(N,)``, several give ``(N, k)``. Errors name the file, the
    column and the line: a missing file, a missing column, an empty or non-numeric cell, a
    NaN or infinite value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist.")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"data file {str(path)!r} is empty: expected a header line with column names.") from None
        wanted = list(x_columns) + list(y_columns)
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(
                f"data file {str(path)!r} has no column {', '.join(map(repr, missing))}; its columns are {header}. "
                "Choose columns with --x and --y."
            )
        index = {c: header.index(c) for c in wanted}
        rows: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            values = []
            for c in wanted:
                cell = row[index[c]].strip() if index[c] < len(row) else ""
                try:
                    v = float(cell)
                except ValueError:
                    raise ValueError(
                        f"data file {str(path)!r}, line {line_no}, column {c!r}: {cell!r} is not a number."
                    ) from None
                if not math.isfinite(v):
                    raise ValueError(
                        f"data file {str(path)!r}, line {line_no}, column {c!r}: {cell!r} is not finite. "
                        "Drop or impute that row."
                    )
                values.append(v)
            rows.append(values)
    if not rows:
        raise ValueError(f"data file {str(path)!r} has a header but no data rows.")
    table = torch.tensor(rows, dtype=dtype)
    x, y = table[:, : len(x_columns)], table[:, len(x_columns) :]
    return (x[:, 0] if x.shape[1] == 1 else x), (y[:, 0] if y.shape[1] == 1 else y)

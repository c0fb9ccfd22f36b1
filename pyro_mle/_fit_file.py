"""The file a :class:`~pyro_mle.results.Fit` is saved to, and its contract with a model.

A fit file is a :func:`torch.save` archive of one dictionary of tensors and plain values
(read back with ``weights_only=True``, so loading never runs code). Besides the estimate and
the history it records a header (``format``, ``version``) and the **site table**: each site's
name, kind (``"latent"`` sample site, ``"param"``, ``"observed"``) and shape, so that a model
whose sites differ from the fitted one is refused instead of silently drawing from its prior.

Version history: 1 (no site table: it is rebuilt from the parameters on reading), 2 (site
table). A dictionary with the fields of version 1 and no header at all is read as version 1.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_factor, site_is_subsample

FORMAT, VERSION = "pyro_mle.Fit", 2
READABLE = (1, 2)
KINDS = ("latent", "param", "observed")

_WORDS = {"latent": "a latent sample site", "param": "a pyro.param", "observed": "an observed site"}


class FitFileError(ValueError):
    """A file :func:`~pyro_mle.results.load` cannot read as a fit: missing, a folder, empty,
    truncated, corrupt, foreign, or written by a newer pyro_mle. Attributes ``path`` and
    ``reason``."""

    def __init__(self, message: str, path: str, reason: str):
        super().__init__(message)
        self.path = path
        self.reason = reason


class SiteMismatchError(ValueError):
    """The model's sites differ from those of the fit (renamed, latent changed into a
    ``pyro.param`` or back, shapes changed), so its estimates would not reach the model.
    Attribute ``differences``: one line per difference."""

    def __init__(self, message: str, differences: tuple[str, ...]):
        super().__init__(message)
        self.differences = differences


# ---------------------------------------------------------------------------- the site table
def site_table(
    params: Mapping[str, torch.Tensor], latent: tuple[str, ...], observed: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Name, kind and shape of every site a fit knows, in the fit's order. Observed sites
    have shape ``None``: their shape follows the data."""
    table = [
        {"name": name, "kind": "latent" if name in latent else "param", "shape": list(value.shape)}
        for name, value in params.items()
    ]
    return table + [{"name": name, "kind": "observed", "shape": None} for name in observed]


def model_differences(
    params: Mapping[str, torch.Tensor], latent: tuple[str, ...], observed: tuple[str, ...], trace: Trace
) -> list[str]:
    """How the sites of one run of a model differ from a fit's.

    ``trace`` is a run of the model with the fit's latent sites conditioned on the estimate
    and its params replaced by it (as :meth:`~pyro_mle.results.Fit.predict` runs it). Latent
    shapes are read from each site's distribution, param shapes from the model's initial
    tensor (a lazy initial value, a callable, is not evaluated and its shape not compared).
    """
    out: list[str] = []
    sites = {name: site for name, site in trace.nodes.items() if _counts(site)}
    for name, value in params.items():
        kind = "latent" if name in latent else "param"
        site = sites.get(name)
        if site is None:
            out.append(f"{name!r}: {_WORDS[kind]} in the file, not in the model (renamed or removed?)")
            continue
        found = "param" if site["type"] == "param" else "latent"
        if found != kind:
            out.append(f"{name!r}: {_WORDS[kind]} in the file, {_WORDS[found]} in the model")
            continue
        shape = _model_shape(site)
        if shape is not None and shape != tuple(value.shape):
            out.append(f"{name!r}: shape {tuple(value.shape)} in the file, {shape} in the model")
    out += [
        f"{name!r}: an observed site in the file, not in the model (renamed?)"
        for name in observed
        if name not in trace.nodes
    ]
    for name, site in sites.items():
        if name in params or name in observed:
            continue
        if site["type"] == "param":
            out.append(f"{name!r}: a pyro.param in the model, not in the file (it would keep its initial value)")
        elif site["is_observed"]:
            out.append(f"{name!r}: an observed site in the model, not in the file")
        else:
            out.append(
                f"{name!r}: a latent sample site in the model, not in the file (it would be drawn from its prior)"
            )
    return out


def _counts(site: dict) -> bool:
    """Whether a trace node is a site a fit records: a param, or a sample site that is not a
    plate's subsample, a ``pyro.deterministic`` or a ``pyro.factor``."""
    if site["type"] == "param":
        return True
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic")
        and not site_is_factor(site)
    )


def _model_shape(site: dict) -> tuple[int, ...] | None:
    if site["type"] == "param":
        init = site["args"][1] if len(site["args"]) > 1 else None
        return tuple(init.shape) if isinstance(init, torch.Tensor) else None
    return tuple(site["fn"].shape())


def mismatch(where: str, differences: list[str]) -> SiteMismatchError:
    """The error for a model whose sites differ, every difference listed."""
    return SiteMismatchError(
        f"{where}: the model's sites differ from the fit's, so its estimates would not be used: "
        + "; ".join(differences)
        + ". Pass the program that was fitted, or refit this one.",
        tuple(differences),
    )


# ---------------------------------------------------------------------------- writing
def write(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` with :func:`torch.save`, all or nothing: into a temporary file next to
    ``path``, then renamed over it, so a failed save leaves an earlier file whole. Every
    failure names the path and the reason."""
    target = os.fspath(path)
    where = f"Fit.save({target!r})"
    if os.path.islink(target):  # write through the link, as a plain open would
        target = os.path.realpath(target)
    if os.path.isdir(target):
        raise IsADirectoryError(
            f"{where}: {target!r} is a folder; give a file name inside it, e.g. {os.path.join(target, 'fit.pt')!r}."
        )
    folder = os.path.dirname(os.path.abspath(target))
    _check_folder(where, folder)
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise PermissionError(f"{where}: the file exists and is read-only. Choose another name, or make it writable.")
    temporary = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            torch.save(payload, f)
        os.replace(temporary, target)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        cls = PermissionError if isinstance(e, PermissionError) else OSError
        fix = "Choose a folder you can write to." if cls is PermissionError else "Choose another place."
        raise cls(f"{where}: cannot write in the folder {folder!r} ({reason}). {fix}") from None


def _check_folder(where: str, folder: str) -> None:
    """The folder a file goes into exists and is a folder, else the error says which part is
    wrong."""
    if os.path.isdir(folder):
        return
    part = folder
    while part and not os.path.exists(part):
        parent = os.path.dirname(part)
        if parent == part:
            break
        part = parent
    if os.path.exists(part) and not os.path.isdir(part):
        raise NotADirectoryError(
            f"{where}: {part!r} is a file, not a folder, so nothing can be saved under it. Choose another path."
        )
    raise FileNotFoundError(
        f"{where}: the folder {folder!r} does not exist. Create it first (os.makedirs), or choose an existing folder."
    )


# ---------------------------------------------------------------------------- reading
def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of a fit file: every field present with its type, the site table
    (rebuilt for version 1) consistent with the parameters. Only tensors and plain values are
    read (``weights_only=True``); anything else is refused, never run."""
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"load({source!r}): no such file.")
    if os.path.isdir(source):
        raise _not_a_fit(source, "it is a folder; give the path of a file written by Fit.save")
    try:
        with open(source, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if not head:
                raise _not_a_fit(source, "the file is empty")
            payload = torch.load(f, weights_only=True, map_location="cpu")
    except PermissionError:
        raise PermissionError(f"load({source!r}): permission denied; make the file readable.") from None
    except FitFileError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad archives; each is a reason here
        raise _not_a_fit(source, _unreadable(head, e)) from None
    return _checked(source, payload)


def _unreadable(head: bytes, error: BaseException) -> str:
    """Why torch could not read a file, in our words: torch's own messages for a refused
    object suggest ``weights_only=False``, which would run code from the file. Fit.save
    writes zip archives (they start with ``PK``); anything else is foreign."""
    if not head.startswith(b"PK"):
        return "not a torch.save archive"
    if isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower():
        return "it holds Python objects other than tensors and plain values, which Fit.save never writes; not read"
    return "a truncated or corrupt archive"


def _not_a_fit(path: str, reason: str) -> FitFileError:
    return FitFileError(f"not a pyro_mle fit file ({path}: {reason}).", path, reason)


#: field → (accepted types, words for the error)
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "params": ((dict,), "a dictionary of tensors"),
    "losses": ((list, tuple), "a list of numbers"),
    "converged": ((bool,), "True or False"),
    "nll": ((float, int), "a number"),
    "method": ((str,), "a string"),
    "optimizer": ((str,), "a string"),
    "num_steps": ((int,), "an integer"),
    "grad_norm": ((float, int), "a number"),
    "message": ((str,), "a string"),
    "latent": ((list, tuple), "a list of names"),
    "observed": ((list, tuple), "a list of names"),
    "seed": ((int, type(None)), "an integer or None"),
}


def _checked(path: str, payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise _not_a_fit(path, f"it holds a {type(payload).__name__}, not the dictionary Fit.save writes")
    if "format" not in payload and set(_FIELDS) <= set(payload):
        payload = {**payload, "format": FORMAT, "version": 1}  # written before the header existed
    if payload.get("format") != FORMAT:
        raise _not_a_fit(path, f"no {FORMAT!r} header; a torch.save file of something else")
    version = payload.get("version")
    if version not in READABLE:
        raise FitFileError(
            f"load({path!r}): a pyro_mle fit file of format version {version!r}; this pyro_mle reads versions "
            f"{', '.join(map(str, READABLE))}. Upgrade pyro_mle to read it, or refit.",
            path,
            f"format version {version!r}",
        )
    for name, (types, words) in _FIELDS.items():
        if name not in payload:
            raise _not_a_fit(path, f"field {name!r} is missing")
        value = payload[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise _not_a_fit(path, f"field {name!r} is {type(value).__name__}, expected {words}")
    _check_contents(path, payload)
    table = site_table(payload["params"], tuple(payload["latent"]), tuple(payload["observed"]))
    if version >= 2 and payload.get("sites") != table:
        raise _not_a_fit(path, "its site table does not match its parameters (edited or corrupt?)")
    return {**payload, "sites": table}


def _check_contents(path: str, payload: dict[str, Any]) -> None:
    params = payload["params"]
    for name, value in params.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise _not_a_fit(path, f"parameter {name!r} is {type(value).__name__}, expected a tensor")
    for field in ("latent", "observed"):
        if not all(isinstance(n, str) for n in payload[field]):
            raise _not_a_fit(path, f"field {field!r} holds names that are not strings")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in payload["losses"]):
        raise _not_a_fit(path, "field 'losses' holds values that are not numbers")
    unknown = [n for n in payload["latent"] if n not in params]
    if unknown:
        raise _not_a_fit(path, f"latent sites {unknown} have no estimate in 'params'")


# ---------------------------------------------------------------------------- checking a model
def can_run(model: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> bool:
    """Whether ``model(*args, **kwargs)`` binds to the model's signature (so that a check can
    run it now rather than at the first prediction)."""
    import inspect

    try:
        inspect.signature(model).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin)
        return bool(args or kwargs)
    return True


def trace_at(
    model: Callable[..., Any],
    params: Mapping[str, torch.Tensor],
    latent: tuple[str, ...],
    args: tuple,
    kwargs: Mapping[str, Any],
) -> Trace:
    """One run of ``model`` with latent sites conditioned on the estimate and every param
    replaced by it (call inside a param-store scope)."""
    from .handlers import _FixParams

    values = {k: params[k] for k in latent}
    fixed = {k: v for k, v in params.items() if k not in values}
    return poutine.trace(_FixParams(fixed)(poutine.condition(model, data=values))).get_trace(*args, **kwargs)


__all__ = ["FitFileError", "SiteMismatchError"]

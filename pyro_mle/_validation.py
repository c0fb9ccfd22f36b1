"""Input checks shared by the library.

Every check raises :class:`ValueError` (or :class:`TypeError` for wrong types) with a
message that names the object, the offending values and the rows where they sit, and the
fix. Nothing is modified in place.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

_MAX_SHOWN = 8
_ENABLED = True


def validation_enabled() -> bool:
    """Whether likelihood heads check their inputs (on by default)."""
    return _ENABLED


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager switching input checks of likelihood heads on or off.

    The checks cost a few tensor reductions per call; turning them off inside a tight,
    already-validated training loop saves that time::

        with pyro_mle.validation(False):
            ...
    """
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    try:
        yield
    finally:
        _ENABLED = previous


def _rows(mask: torch.Tensor) -> list[tuple[int, ...] | int]:
    """Indices where ``mask`` is true, as ints for 1-D masks and tuples otherwise."""
    idx = mask.nonzero()
    if mask.dim() == 1:
        return [int(i) for i in idx[:, 0]]
    return [tuple(int(j) for j in i) for i in idx]


def describe_rows(mask: torch.Tensor, values: torch.Tensor) -> str:
    """A short text ``"2.0 at rows [3, 17]"`` for the entries where ``mask`` holds.

    ``mask`` has the batch shape; ``values`` has batch shape plus optional event dims (the
    first offending value of each bad row is shown).
    """
    rows = _rows(mask)
    n = len(rows)
    bad = values[mask]
    if bad.dim() > 1:  # one row per bad example: show the whole event
        shown_vals = [bad[i].tolist() for i in range(min(n, _MAX_SHOWN))]
    else:
        shown_vals = bad[:_MAX_SHOWN].tolist()
    unique_vals: list = []
    for v in shown_vals:
        if v not in unique_vals:
            unique_vals.append(v)
    vals = ", ".join(_fmt(v) for v in unique_vals[:4])
    more = f" (and {n - _MAX_SHOWN} more)" if n > _MAX_SHOWN else ""
    word = "row" if n == 1 else "rows"
    shown_rows = rows[0] if n == 1 else rows[:_MAX_SHOWN]
    return f"{vals} at {word} {shown_rows}{more}"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def reduce_event(mask: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Collapse the rightmost ``event_dim`` dims of a bad-value mask with ``any``."""
    for _ in range(event_dim):
        mask = mask.any(-1)
    return mask


def check_finite(what: str, values: torch.Tensor, event_dim: int, fix: str) -> None:
    """Raise if ``values`` holds NaN or ±inf, naming the rows."""
    bad = ~torch.isfinite(values)
    if values.dim() and bool(bad.any()):
        rows = reduce_event(bad, event_dim) if values.dim() > event_dim else bad.any().reshape(1)
        raise ValueError(f"{what} must be finite; got {describe_rows(rows, values)}. {fix}")
    if not values.dim() and bool(bad):
        raise ValueError(f"{what} must be finite; got {values.item()}. {fix}")


def as_tensor(what: str, value: object, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a tensor of floating ``dtype``; refuses strings and objects clearly.

    Observed labels are carried as floats: every integer label of practical size is exact
    in float32 (below 2**24), and Pyro's Bernoulli needs floating values anyway.
    """
    if is_complex(value):
        raise TypeError(complex_message(what, value))
    if isinstance(value, torch.Tensor):
        return value if value.dtype == dtype else value.to(dtype)
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{what} must be a tensor, an array or a number; got {type(value).__name__} ({e}).") from None


def first_line(error: BaseException) -> str:
    """The first line of an error's message, ending in a full stop: for messages that quote it."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return line.rstrip(":") + ("" if line.endswith(".") else ".")


# ----------------------------------------------------------------------------- a program's arguments
_MAX_SCANNED = 32  # items of a list or tuple argument looked into (a long list is data, not arrays)


def check_arguments(what: str, program: Callable, args: tuple, kwargs: dict) -> None:
    """Refuse arguments of ``program`` that a fit cannot use as given, naming them:

    * complex tensors, arrays or numbers (casting to a real dtype drops the imaginary part);
    * :class:`~pyro_mle.data.MemoryMappedRows` with different numbers of rows (a plate over
      one's length silently skips the other's last rows, or reads past its end).

    Dicts, and lists or tuples of up to 32 items, are looked into.
    """
    named = list(_leaves(argument_names(program, args, kwargs)))
    for name, value in named:
        if is_complex(value):
            raise TypeError(complex_message(f"{what}: argument {name!r}", value, name))
    _check_row_counts(what, named)


def argument_names(program: Callable, args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """``(name, value)`` of each argument, named from ``program``'s signature where it binds
    (``"x"``, ``"rest[1]"`` for a ``*rest``), else by position (``"argument 0"``) and keyword."""
    try:
        bound = inspect.signature(program).bind_partial(*args, **kwargs).arguments
        params = inspect.signature(program).parameters
    except (TypeError, ValueError):  # no signature, or one these arguments do not fit
        return [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    out: list[tuple[str, Any]] = []
    for name, value in bound.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            out += [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out += list(value.items())
        else:
            out.append((name, value))
    return out


def _leaves(named: list[tuple[str, Any]], depth: int = 3) -> Iterator[tuple[str, Any]]:
    for name, value in named:
        if depth and isinstance(value, dict):
            yield from _leaves([(f"{name}[{k!r}]", v) for k, v in value.items()], depth - 1)
        elif depth and isinstance(value, (list, tuple)) and len(value) <= _MAX_SCANNED:
            yield from _leaves([(f"{name}[{i}]", v) for i, v in enumerate(value)], depth - 1)
        else:
            yield name, value


def is_complex(value: object) -> bool:
    """Whether ``value`` is a complex tensor, array or number."""
    if isinstance(value, torch.Tensor):
        return value.is_complex()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.dtype.kind == "c"
    return isinstance(value, complex)


def complex_message(what: str, value: object, name: str | None = None) -> str:
    """Why a complex value is refused, and the three ways to make it real (spelled with the
    argument's ``name`` when there is one)."""
    dtype = getattr(value, "dtype", "complex")
    if name is None:
        ways = (
            "its real part (.real), its modulus (.abs()), or its real and imaginary parts as two real "
            "columns (torch.view_as_real(v); NumPy: np.stack([v.real, v.imag], axis=-1))"
        )
    else:
        ways = (
            f"{name}.real, or the modulus {name}.abs(), or the real and imaginary parts as two real columns: "
            f"torch.view_as_real({name}) (NumPy: np.stack([{name}.real, {name}.imag], axis=-1))"
        )
    return (
        f"{what} must be real; got the complex dtype {dtype}. The likelihoods and the fit work on real "
        f"numbers, and casting would silently drop the imaginary part. Pass {ways}."
    )


def _check_row_counts(what: str, named: list[tuple[str, Any]]) -> None:
    from .data import MemoryMappedRows  # here: data imports nothing of the library, and never this

    files = [(name, value) for name, value in named if isinstance(value, MemoryMappedRows)]
    if len({len(v) for _, v in files}) <= 1:
        return
    counts = ", ".join(f"{name} ({v.path!r}) has {len(v):,} rows" for name, v in files)
    shortest, longest = min(files, key=lambda f: len(f[1])), max(files, key=lambda f: len(f[1]))
    skipped = len(longest[1]) - len(shortest[1])
    raise ValueError(
        f"{what}: the memory-mapped arguments have different numbers of rows: {counts}. Rows are examples, "
        f"so they must match: a plate over len({shortest[0]}) would silently skip the last {skipped:,} rows "
        f"of {longest[0]}, and one over len({longest[0]}) would read past the end of {shortest[0]}. Save the "
        "arrays with the same rows (one row per example in each file)."
    )

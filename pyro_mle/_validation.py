"""Input checks shared by the library.

Every check raises :class:`ValueError` (or :class:`TypeError` for wrong types) with a
message that names the object, the offending values and the rows where they sit, and the
fix. Nothing is modified in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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

"""The one text-table printer of the package: the CLI, the demo and the certificates use it.

Built on :meth:`pandas.DataFrame.to_string`; cells are shown as given (format numbers before
passing them), text columns left-aligned and columns of numbers right-aligned so that their
digits line up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """``rows`` under ``header`` as an aligned text table, without trailing spaces.

    Example::

        >>> print(format_table(("model", "NLL"), [("line", "12.5"), ("logistic", "3.25")]))
        model      NLL
        line      12.5
        logistic  3.25
    """
    header = [str(h) for h in header]
    body = [["" if c is None else str(c) for c in row] for row in rows]
    bad = [i for i, row in enumerate(body) if len(row) != len(header)]
    if bad:
        raise ValueError(
            f"format_table: rows {bad} have {len(body[bad[0]])} cells but the header has {len(header)} "
            f"({header}); give every row one cell per column."
        )
    widths = [max([len(name), *(len(row[j]) for row in body)]) for j, name in enumerate(header)]
    numeric = [bool(body) and all(_is_number(row[j]) for row in body if row[j]) for j in range(len(header))]
    head = "  ".join(name.rjust(w) if num else name.ljust(w) for name, w, num in zip(header, widths, numeric))
    if not body:
        return head.rstrip()
    # positional column labels: a header may repeat a name or be empty ("" above row labels)
    frame = pd.DataFrame(body, columns=range(len(header)), dtype=object)
    # to_string puts one space between columns; the padders add a second, as in the header
    formatters = [_padder(w, right=num, lead=" " if j else "") for j, (w, num) in enumerate(zip(widths, numeric))]
    text = frame.to_string(index=False, header=False, formatters=formatters)
    return "\n".join(line.rstrip() for line in [head, *text.splitlines()])


def _padder(width: int, right: bool, lead: str):
    """A pandas formatter padding a cell to ``width``, aligned right (numbers) or left (text)."""
    return (lambda v: lead + v.rjust(width)) if right else (lambda v: lead + v.ljust(width))


def _is_number(text: str) -> bool:
    """Whether a cell reads as a number ("1.5e-3", "nan", "12"), for right alignment."""
    try:
        float(text)
    except ValueError:
        return False
    return True

"""Reading named columns of a CSV file into ``(x, y)`` tensors, through :func:`pandas.read_csv`.

A clean file takes one pass of pandas' C parser, about as fast as :func:`pandas.read_csv`
alone (``python -m benchmarks.csv_read``). Only when that pass meets something it cannot
take — a cell that is not a number, an empty cell, NaN or ±inf, a blank row, a row longer
than the header — is the file read again as text, to report the first bad cell by file, line
and column exactly as a person would look it up, or to drop the blank rows. Accepted:

* a UTF-8 byte-order mark (Excel's "CSV UTF-8"), which would otherwise glue itself to the
  first column's name;
* comma, semicolon (Excel in locales with a decimal comma) or tab separators, told apart by
  the header line;
* spaces around cells and column names; rows that are entirely blank (skipped); cells past
  the header's last column (ignored).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

#: separators tried on the header line, in the order of preference when several fit
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
_ENCODING = "utf-8-sig"  # plain UTF-8, with or without a byte-order mark


def read_csv(
    path: str | os.PathLike, x_columns: Sequence[str], y_columns: Sequence[str], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read named columns of a CSV file into ``(x, y)`` tensors.

    One column gives shape ``(N,)``, several give ``(N, k)``. Errors name the file, the
    column and the line: a missing file, a missing column, an empty or non-numeric cell, a
    NaN or infinite value; and a file that is not UTF-8 text or whose separator is none of
    comma, semicolon and tab.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist.")
    wanted = list(x_columns) + list(y_columns)
    header, sep = read_header(path, wanted)
    missing = [c for c in wanted if c not in header]
    if missing:
        one_column = (
            " Its header line holds no comma, semicolon or tab, the separators read: if its columns are "
            "separated by something else, save it as CSV with one of those (Excel: 'CSV UTF-8 (Comma delimited)')."
            if len(header) == 1
            else ""
        )
        raise ValueError(
            f"data file {str(path)!r} has no column {', '.join(map(repr, missing))}; its columns are {header}. "
            f"Choose columns with --x and --y.{one_column}"
        )
    positions = [header.index(c) for c in wanted]  # the first of duplicated names, as a reader by eye would
    table = _parse_floats(path, sep, positions)
    if table is None:
        table = _parse_text(path, sep, header, wanted, positions)
    if not len(table):
        raise ValueError(f"data file {str(path)!r} has a header but no data rows.")
    values = torch.from_numpy(table).to(dtype)
    x, y = values[:, : len(x_columns)], values[:, len(x_columns) :]
    return (x[:, 0] if x.shape[1] == 1 else x), (y[:, 0] if y.shape[1] == 1 else y)


def read_header(path: Path, wanted: Sequence[str] = ()) -> tuple[list[str], str]:
    """The column names of the header line (stripped, byte-order mark dropped) and the separator:
    the one of :data:`DELIMITERS` that splits the header into the most of the ``wanted``
    names, then into the most columns, then the first listed."""
    try:
        with path.open(encoding=_ENCODING, newline="") as fh:
            line = fh.readline()
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if not line:
        raise ValueError(f"data file {str(path)!r} is empty: expected a header line with column names.")
    if not line.strip():
        raise ValueError(f"data file {str(path)!r}: line 1 is blank; expected the header line with column names there.")
    candidates = []
    for sep in DELIMITERS:
        names = [h.strip() for h in next(csv.reader([line], delimiter=sep))]
        candidates.append((sum(c in names for c in set(wanted)), len(names), sep, names))
    *_, sep, names = max(candidates, key=lambda c: c[:2])  # max keeps the first of ties
    return names, sep


class _FileError(ValueError):
    """A fault of the file as a whole (encoding, structure): reported, never retried as text."""


def _not_utf8(path: Path) -> _FileError:
    """The error for a file that does not decode as UTF-8, naming the line of the first bad byte."""
    data = path.read_bytes()  # only on this error path: the whole file, to find the line
    try:
        data.decode(_ENCODING)
        where = ""
    except UnicodeDecodeError as e:
        where = f": line {data.count(b'\n', 0, e.start) + 1} holds the byte {data[e.start : e.start + 1]!r}"
    source = "latin1"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        where, source = " but UTF-16 (Excel's 'Unicode Text')", "utf-16"
    return _FileError(
        f"data file {str(path)!r} is not UTF-8 text{where}. Save it as 'CSV UTF-8' or convert it "
        f"(iconv -f {source} -t utf-8 in.csv > out.csv)."
    )


def _read(path: Path, sep: str, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` of the rows under the header; file-wide faults as :class:`_FileError`."""
    try:
        return pd.read_csv(path, sep=sep, index_col=False, encoding=_ENCODING, **kwargs)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except pd.errors.ParserError as e:
        detail = str(e).strip().rstrip(".")
        raise _FileError(
            f"data file {str(path)!r} is not a well-formed CSV file ({detail}). Check that every quoted cell "
            'closes its quote (") on its line.'
        ) from None


def _parse_floats(path: Path, sep: str, positions: list[int]) -> np.ndarray | None:
    """The wanted columns as a float64 ``(N, k)`` array in one pass of the C parser, or
    ``None`` when the file must be read as text: a cell that is not a finite number (or a
    blank row), or a row longer than the header.

    Every column is parsed, with pandas' own type inference: picking columns
    (``usecols``) or forcing ``dtype=float64`` makes its C parser up to twice as slow.
    """
    try:
        frame = _read(path, sep)
    except _FileError as e:
        if isinstance(e.__context__, pd.errors.ParserError):
            return None  # rows longer than the header: the text pass takes their first cells
        raise
    if frame.empty:
        return np.empty((0, len(positions)))
    columns = frame.iloc[:, positions]
    if not all(dtype.kind in "fi" for dtype in columns.dtypes):
        return None  # text, booleans or empty cells in a wanted column: find them by line
    table = columns.to_numpy(dtype=np.float64, copy=True)  # writable, as torch.from_numpy wants
    return table if bool(np.isfinite(table).all()) else None


def _parse_text(path: Path, sep: str, header: list[str], wanted: list[str], positions: list[int]) -> np.ndarray:
    """The wanted columns read as text: blank rows dropped, the first bad cell (in line order,
    then column order) reported with its line, every other cell parsed as Python's ``float``."""
    frame = _read(
        path,
        sep,
        usecols=range(len(header)),  # cells past the header's last column are ignored
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=False,
    )
    if frame.empty:
        return np.empty((0, len(positions)))
    text = frame.fillna("").apply(lambda col: col.str.strip())
    keep = (text != "").any(axis=1).to_numpy()  # a row of blank cells is no example
    cells = text.iloc[:, positions].to_numpy(dtype=object)
    values = np.column_stack(
        [pd.to_numeric(text.iloc[:, p], errors="coerce").to_numpy(dtype=np.float64) for p in positions]
    )
    suspect = ~np.isfinite(values) & keep[:, None]
    for row, col in zip(*np.nonzero(suspect)):  # row-major: the first bad line, then its first bad column
        cell = cells[row, col]
        where = f"data file {str(path)!r}, line {row + 2}, column {wanted[col]!r}: {cell!r}"
        try:
            value = float(cell)
        except ValueError:
            hint = _decimal_comma_hint(cell, sep)
            raise ValueError(f"{where} is not a number.{hint}") from None
        if not np.isfinite(value):
            raise ValueError(f"{where} is not finite. Drop or impute that row.")
        values[row, col] = value  # a spelling Python's float reads and pandas does not ("1_000")
    return values[keep]


def _decimal_comma_hint(cell: str, sep: str) -> str:
    if sep == ";" and cell.replace(",", "", 1).lstrip("+-").isdigit():
        return " The file looks like it uses decimal commas: save it with decimal points (or comma-separated)."
    return ""


__all__ = ["DELIMITERS", "read_csv", "read_header"]

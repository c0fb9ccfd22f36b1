"""Reading named columns of a CSV file into ``(x, y)`` tensors, through :func:`pandas.read_csv`.

A clean file takes one pass of pandas' C parser, about as fast as :func:`pandas.read_csv`
alone (``python -m benchmarks.csv_read``). Only the records where that pass found no finite
number (a cell that is not a number, an empty cell, NaN or ±inf, a blank row) are read again
with the :mod:`csv` module, up to the last of them: blank records are dropped, and the first
bad cell is reported by file, line and column, exactly as a person would look it up.
Accepted:

* a UTF-8 byte-order mark (Excel's "CSV UTF-8"), which would otherwise glue itself to the
  first column's name;
* comma, semicolon (Excel in locales with a decimal comma) or tab separators, told apart by
  the header line;
* spaces around cells and column names; rows that are entirely blank (skipped); cells past
  the header's last column (ignored).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
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
    table = _parse_clean(path, sep, len(header), positions)
    if table is not None:
        return _split(torch.from_numpy(table).to(dtype), len(x_columns))
    table = _parse(path, sep, len(header), positions)
    suspect = ~np.isfinite(table)
    if suspect.any():  # rare: read those rows again as text to drop the blank ones or name the bad cell
        table = table[_check_rows(path, sep, wanted, positions, table, suspect)]
    if not len(table):
        raise ValueError(f"data file {str(path)!r} has a header but no data rows.")
    return _split(torch.from_numpy(table).to(dtype), len(x_columns))


def _split(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = values[:, :k], values[:, k:]
    return (x[:, 0] if x.shape[1] == 1 else x), (y[:, 0] if y.shape[1] == 1 else y)


def _parse_clean(path: Path, sep: str, width: int, positions: list[int]) -> np.ndarray | None:
    """The wanted columns of a clean file (every wanted cell a finite number) through pandas'
    pyarrow engine, or ``None`` for any other file. Arrow parses each decimal to the float64
    Python's ``float()`` gives (pandas' C parser is one ulp off for about a third of random
    17-digit values unless asked for ``float_precision="round_trip"``, which is 4x slower) and
    is 1.7x faster than the C parser on 10⁶ x 3 rows. Blank lines are skipped, which is what a
    clean file's reader wants; a file with any fault goes to the C parser's path, which keeps
    line numbers for the messages."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = pd.read_csv(path, sep=sep, engine="pyarrow", encoding=_ENCODING)
    except Exception:  # noqa: BLE001 - pyarrow missing, a malformed record, anything: the careful path decides
        return None
    if frame.shape[1] != width or not len(frame):
        return None
    columns = []
    for p in positions:
        column = frame.iloc[:, p]
        if column.dtype.kind not in "fi":
            return None
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            return None
        columns.append(values)
    return np.column_stack(columns) if columns else None


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
    """A fault of the file as a whole (encoding, structure), not of one cell."""


class _ParserError(_FileError):
    """pandas' tokenizer refused the file: a malformed quote, or a record longer than the header."""


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


def _parse(path: Path, sep: str, width: int, positions: list[int]) -> np.ndarray:
    """The wanted columns as a float64 ``(R, k)`` array, one row per record under the header
    (blank lines included), in one pass of pandas' C parser with its own type inference:
    picking columns (``usecols``) or forcing ``dtype=float64`` makes it up to twice as slow.
    Cells that are not numbers (and whole columns that are not numeric) come back as NaN."""
    try:
        frame = _read(path, sep)
    except _ParserError:
        frame = _read(path, sep, usecols=range(width))  # rows longer than the header: their extra cells go
    if frame.empty:
        return np.empty((0, len(positions)))
    columns = []
    for p in positions:
        column = frame.iloc[:, p]
        if column.dtype.kind in "fi":
            columns.append(column.to_numpy(dtype=np.float64))
        elif column.dtype.kind == "O":  # some cell is no number pandas reads: the others still count
            columns.append(pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64))
        else:  # booleans ("True"), dates: no number
            columns.append(np.full(len(column), np.nan))
    return np.column_stack(columns)


def _read(path: Path, sep: str, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` of the records under the header, blank ones kept (so that record
    ``i`` is row ``i``); faults of the whole file as :class:`_FileError`."""
    try:
        with warnings.catch_warnings():
            # a column with text in a later chunk of the file: read as text, and checked by _check_rows
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            # records longer than the header: their extra cells are ignored, as documented
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            return pd.read_csv(
                path,
                sep=sep,
                index_col=False,
                encoding=_ENCODING,
                skip_blank_lines=False,
                float_precision="round_trip",  # the double Python reads, not one ulp off
                **kwargs,
            )
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except pd.errors.ParserError as e:
        detail = str(e).strip().rstrip(".")
        raise _ParserError(
            f"data file {str(path)!r} is not a well-formed CSV file ({detail}). Check that every quoted cell "
            'closes its quote (") on its line.'
        ) from None


def _check_rows(
    path: Path, sep: str, wanted: list[str], positions: list[int], table: np.ndarray, suspect: np.ndarray
) -> np.ndarray:
    """Look at the records holding a non-finite value in their text, in file order: a record
    of blank cells is dropped; in any other, the first cell (in column order) that Python's
    ``float`` does not read, or reads as NaN or ±inf, raises an error naming its line and
    column; a cell it reads (a spelling pandas does not) is kept, in ``table``. Returns the
    mask of rows to keep. The file is read up to the last such record only."""
    keep = np.ones(len(table), dtype=bool)
    rows = np.flatnonzero(suspect.any(axis=1))
    with path.open(encoding=_ENCODING, newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        next(reader)  # the header
        wanted_rows = iter(rows)
        target = next(wanted_rows)
        for i, record in enumerate(reader):
            if i < target:
                continue
            if not record or all(not cell.strip() for cell in record):
                keep[i] = False
            else:
                for j in np.flatnonzero(suspect[i]):
                    table[i, j] = _cell_value(path, reader.line_num, wanted[j], record, positions[j], sep)
            target = next(wanted_rows, None)
            if target is None:
                break
    return keep


def _cell_value(path: Path, line: int, column: str, record: list[str], position: int, sep: str) -> float:
    """The finite number a cell holds, or the error naming file, line and column."""
    cell = record[position].strip() if position < len(record) else ""
    where = f"data file {str(path)!r}, line {line}, column {column!r}: {cell!r}"
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{where} is not a number.{_decimal_comma_hint(cell, sep)}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where} is not finite. Drop or impute that row.")
    return value


def _decimal_comma_hint(cell: str, sep: str) -> str:
    if sep == ";" and cell.replace(",", "", 1).lstrip("+-").isdigit():
        return " The file looks like it uses decimal commas: save it with decimal points (or comma-separated)."
    return ""


__all__ = ["DELIMITERS", "read_csv", "read_header"]

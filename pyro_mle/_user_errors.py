"""One line for an exception raised by a user's input or a user's model file.

An error raised from the user's own code is located in it: the model file, the line (the
innermost traceback frame inside that file) and the Pyro site being evaluated when it can be
told, from the frames of ``pyro.sample``/``pyro.param``/a likelihood head, or else from the
source line. Used by :mod:`pyro_mle.cli`; the full traceback is for ``--debug``.
"""

from __future__ import annotations

import linecache
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# functions whose local ``name`` is the site being evaluated
_SITE_FUNCTIONS = {"sample", "param", "factor", "deterministic", "__call__", "_prepare", "module"}
# a site call on a source line: pyro.sample("w", ...), pyro.param('b', ...), Normal(...)("y", ...)
_SITE_CALL = re.compile(r"(?:\b(?:sample|param|factor|deterministic)|\))\(\s*(['\"])([^'\"]+)\1")


@dataclass(frozen=True)
class Location:
    """Where in a model file an error was raised.

    Fields:
      * ``path``: the model file.
      * ``line``: line number of the innermost frame in that file.
      * ``function``: the function of that frame (``"model"``, ``"load_data"``, ``"<module>"``).
      * ``site``: the Pyro site being evaluated, or ``None`` when it cannot be told.
    """

    path: Path
    line: int
    function: str
    site: str | None

    def __str__(self) -> str:
        where = f"model file {str(self.path)!r}, line {self.line}"
        if self.function not in ("<module>", ""):
            where += f", in {self.function}()"
        return where + (f", site {self.site!r}" if self.site else "")


def first_line(error: BaseException) -> str:
    """The first non-blank line of the error's message (Pyro appends a table of trace shapes),
    and for a ``KeyError`` its key; the type name when there is no message."""
    cause = error.__cause__
    if type(cause) is type(error) and str(error).startswith(str(cause)):  # Pyro's copy with trace shapes
        return first_line(cause)
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def locate(error: BaseException, model_path: str | os.PathLike | None) -> Location | None:
    """Where ``error`` (or an exception it was raised from) passed through the model file."""
    if model_path is None:
        return None
    target = os.path.realpath(model_path)
    for exc in _chain(error):
        if isinstance(exc, SyntaxError) and exc.filename and os.path.realpath(exc.filename) == target:
            return Location(Path(model_path), exc.lineno or 0, "<module>", None)
        frames = list(_frames(exc.__traceback__))
        inside = [i for i, (file, _, _, _) in enumerate(frames) if os.path.realpath(file) == target]
        if inside:
            i = inside[-1]
            _, line, function, _ = frames[i]
            site = _site_from_frames(frames[i + 1 :]) or _site_from_source(target, line)
            return Location(Path(model_path), line, function, site)
    return None


def describe(error: BaseException, model_path: str | os.PathLike | None = None) -> str:
    """The error as one line: the message, and for an error raised from the model file where it
    was raised and what to do (fix it there; ``--debug`` shows the traceback)."""
    message = first_line(error)
    where = locate(error, model_path)
    if where is None:
        return message
    prefix = f"model file {str(model_path)!r}"
    if message.startswith(prefix):  # already names the file (an import failure): add the line
        message = message[len(prefix) :].lstrip(" :")
    elif not isinstance(error, ValueError) and message != type(error).__name__:
        message = f"{type(error).__name__}: {message}"
    return f"{where}: {message} (fix the model file there; --debug shows the traceback)"


def _chain(error: BaseException):
    """The error, then what it was raised from, innermost last (each once)."""
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _frames(tb: TracebackType | None):
    """(filename, line, function, locals) of each frame of a traceback, outermost first."""
    while tb is not None:
        code = tb.tb_frame.f_code
        yield code.co_filename, tb.tb_lineno, code.co_name, tb.tb_frame.f_locals
        tb = tb.tb_next


def _site_from_frames(frames) -> str | None:
    """The ``name`` argument of the innermost Pyro primitive or likelihood head called."""
    for file, _, function, local in reversed(frames):
        name = local.get("name")
        if function in _SITE_FUNCTIONS and isinstance(name, str) and ("pyro" in file or "likelihoods" in file):
            return name
    return None


def _site_from_source(path: str, line: int) -> str | None:
    """The site named on the failing source line, when it names exactly one."""
    names = {m.group(2) for m in _SITE_CALL.finditer(linecache.getline(path, line))}
    return names.pop() if len(names) == 1 else None

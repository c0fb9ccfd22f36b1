"""Progress of a long run, wherever it is watched.

* a terminal or a Jupyter notebook: a ``tqdm.auto`` bar (a widget in a notebook);
* anything else (stderr redirected to a file, a CI log, a pipe): one line every
  :data:`LINE_INTERVAL` seconds with the step, the loss and the rate, and a last line when a
  run that printed any ends. With ``progress=None`` (the default of :func:`~pyro_mle.fit`) a
  run shorter than the interval prints nothing, so that a log holds only what is slow; with
  ``progress=True`` the first step is reported at once.

``progress=False`` silences both.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

#: Seconds between two progress lines when stderr is not a terminal.
LINE_INTERVAL = 5.0


def progress_bar(total: int, desc: str, enabled: bool | None = None, file: IO[str] | None = None) -> Any:
    """A progress reporter for ``total`` steps, labelled ``desc``, with tqdm's interface
    (``update``, ``set_postfix``, ``reset``, ``close``, ``disable``).

    :param enabled: ``False``: silent; ``True`` or ``None``: a bar on a terminal or in a
        notebook, timed lines elsewhere (from the first step with ``True``, after
        :data:`LINE_INTERVAL` seconds with ``None``).
    :param file: where to write (default ``sys.stderr`` at the time of the call).
    """
    from tqdm.auto import tqdm

    file = sys.stderr if file is None else file
    if enabled is False:
        return tqdm(total=total, disable=True)
    if _in_notebook():
        return tqdm(total=total, desc=desc)
    if _isatty(file):
        return tqdm(total=total, desc=desc, file=file, dynamic_ncols=True)
    return LineProgress(total, desc, file, first=enabled is True)


def _in_notebook() -> bool:
    """Whether ``tqdm.auto`` found a Jupyter kernel with ipywidgets (and so draws widgets)."""
    import tqdm.auto  # noqa: F401 - imports autonotebook first, silencing its notebook-mode warning
    from tqdm.autonotebook import tqdm as notebook_tqdm
    from tqdm.std import tqdm as std_tqdm

    return notebook_tqdm is not std_tqdm


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """tqdm's interface, reporting as plain lines for logs and pipes:
    ``MLE (lbfgs): step 1200/5000, loss=3.14159, 118 steps/s, 10 s``; the first step at once
    when ``first``, then one line every ``interval`` seconds."""

    disable = False

    def __init__(
        self,
        total: int,
        desc: str,
        file: IO[str],
        interval: float | None = None,
        clock=time.monotonic,
        first: bool = False,
    ):
        self.total, self.desc, self.file, self.first = total, desc, file, first
        self.interval = LINE_INTERVAL if interval is None else interval
        self.clock = clock
        self.postfix: dict[str, object] = {}
        self.printed = False
        self.reset()

    def reset(self, total: int | None = None) -> None:
        """Start counting again (a fit that restarts its optimiser)."""
        if total is not None:
            self.total = total
        self.n = 0
        self.start = self.last = self.clock()

    def set_postfix(self, refresh: bool = True, **values: object) -> None:
        self.postfix = values

    def update(self, steps: int = 1) -> None:
        self.n += steps
        now = self.clock()
        if not self.disable and (now - self.last >= self.interval or (self.first and not self.printed)):
            self.last = now
            self._line(now)

    def close(self) -> None:
        """A last line, if the run was long enough to print any."""
        if self.printed and not self.disable:
            self._line(self.clock(), done=True)
            self.printed = False

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        parts = [f"step {self.n}/{self.total}" if self.total else f"step {self.n}"]
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        parts += [f"{self.n / elapsed:.3g} steps/s", f"{elapsed:.0f} s"]
        text = f"{self.desc}: {'ended at ' if done else ''}{', '.join(parts)}"
        try:
            print(text, file=self.file, flush=True)
        except (OSError, ValueError):  # a closed or broken log stream must not stop the run
            self.disable = True
            return
        self.printed = True

"""Evaluating a point objective inside a fit: the loss and gradient at the current parameters,
with the failures named (which site's log-prob broke, at which step), the sum over the
processes of a data-parallel fit, and the traced (compiled) objective where it is verified."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import pyro
import torch
from pyro.poutine.trace_struct import Trace

from . import compile as compiling
from ._validation import describe_rows, first_line, validation
from .objective import PointObjective, _log_prob_terms


class Collective(Protocol):
    """What a data-parallel fit needs from a communication backend (implemented with
    :mod:`torch.distributed` in :mod:`pyro_mle.distributed`)."""

    def sum(self, value: float) -> float:
        """The sum of ``value`` over all processes."""
        ...

    def sum_(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` by its elementwise sum over all processes, in place."""
        ...

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite every process's ``tensors`` with process 0's, in place."""
        ...


class TraceMismatch(Exception):
    """The compiled objective no longer agrees with the program."""


class Diverged(Exception):
    """The loss became NaN or infinite at an iterate (not a line-search trial point)."""

    def __init__(
        self, message: str, step: int, sites: tuple[str, ...], good: torch.Tensor, cause: BaseException | None = None
    ):
        super().__init__(message)
        self.message, self.step, self.sites, self.good, self.cause = message, step, sites, good, cause


class Evaluator:
    """The loss and gradient of a :class:`~pyro_mle.objective.PointObjective` at the current
    parameters, for the optimisers of :mod:`pyro_mle.optim`, with the record of the run:
    ``losses`` (one per step), ``good`` (the last parameters whose loss was finite, flat)."""

    def __init__(
        self,
        objective: PointObjective,
        *,
        method: str,
        optimizer: str,
        lr: float,
        weight: float = 1.0,
        collective: Collective | None = None,
        on_loss: Callable[[float], None] = lambda loss: None,
        cache: tuple[Any, Any, tuple[torch.Tensor, ...]] | None = None,
    ):
        self.objective, self.params = objective, objective.params
        self.method, self.optimizer, self.lr = method, optimizer, lr
        self.weight, self.collective, self.on_loss = weight, collective, on_loss
        self.cache = cache  # (key, model, data) for the trace cache, see compile()
        #: a trace must reproduce the program bit for bit (one fit chose for itself, see
        #: :class:`~pyro_mle.compile.TraceCache`)
        self.exact = False
        self.jit_error = ""  # why the objective runs interpreted although jit was asked for
        self.losses: list[float] = []
        self.good = self.snapshot()

    @property
    def compiled(self) -> Callable[..., torch.Tensor] | None:
        """The verified trace in use (the objective's), or ``None``."""
        return self.objective.compiled

    @compiled.setter
    def compiled(self, fn: Callable[..., torch.Tensor] | None) -> None:
        self.objective.compiled = fn

    # ------------------------------------------------------------------ state
    def snapshot(self) -> torch.Tensor:
        return self.objective.flat()

    def restore(self, values: torch.Tensor) -> None:
        self.objective.set_flat(values)

    def record(self, loss: float) -> None:
        """A step's loss: appended to ``losses``; its parameters become the last good ones."""
        self.losses.append(loss)
        self.good = self.snapshot()
        self.on_loss(loss)

    # ------------------------------------------------------------------ evaluation
    def _forward(self) -> tuple[torch.Tensor, Trace | None]:
        if self.compiled is not None:
            return self.compiled(*self.params), None
        return self.objective()

    def evaluate(self, step: int, probe: bool = False) -> torch.Tensor | None:
        """Loss at the current parameters, gradients left in ``.grad``.

        A non-finite loss, or an error raised at non-finite parameters, raises
        :class:`Diverged`; for a ``probe`` (a line-search trial point) it returns ``None``
        instead. In a data-parallel fit the loss and gradients are the weighted sums over all
        processes, and an error in any process counts in every process.
        """
        for p in self.params:
            p.grad = None
        loss, trace, error = None, None, None
        try:
            loss, trace = self._forward()
        except (ValueError, RuntimeError) as e:
            error = e
        # An error at an accepted point with finite parameters is a bug in the program; at a
        # line-search trial point it is a step too long (a covariance that is no longer positive
        # definite), as a non-finite loss is.
        fatal = (
            error is not None and not probe and (step == 0 or all(bool(torch.isfinite(p).all()) for p in self.params))
        )
        if fatal and self.collective is None:
            raise error
        value = math.nan if loss is None else float(loss.detach())
        if math.isfinite(value):
            loss.backward()
        failed = error is not None
        if self.collective is not None:
            value, failed, any_fatal = self.reduce(value, failed, fatal=fatal)
            if fatal:
                raise error
            if any_fatal:  # every process stops together, none waits in the next all-reduce
                raise RuntimeError("fit_distributed: the program raised an error in another process (see its output)")
            if failed and error is None:
                error = RuntimeError("the program raised an error in another process (see its output)")
        if failed:
            if probe:
                return None
            raise self.diverged(step, None, math.nan, cause=error) from error
        if not math.isfinite(value):
            if probe:
                return None
            if trace is None:  # the compiled objective keeps no trace: run the program to name the sites
                with torch.no_grad():
                    try:
                        eager, trace = self.objective()
                    except (ValueError, RuntimeError):
                        eager, trace = None, None
                if self.collective is None and eager is not None and math.isfinite(float(eager)):
                    raise TraceMismatch
            raise self.diverged(step, trace, value)
        if self.collective is not None:
            return torch.tensor(value, dtype=self.params[0].dtype)
        return loss.detach()

    def reduce(self, value: float, failed: bool, grads: bool = True, fatal: bool = False) -> tuple[float, bool, bool]:
        """Weighted sums over the processes of the loss (and the gradients, written back to
        ``.grad``), in one all-reduce; whether any process failed, and whether any failed fatally."""
        head = torch.tensor(
            [math.nan if failed else value * self.weight, float(failed), float(fatal)],
            dtype=torch.float64,
            device=self.params[0].device,
        )
        flat = torch.cat([head, self.objective.flat_grad().to(torch.float64) * self.weight]) if grads else head
        self.collective.sum_(flat)
        if grads:
            offset = 3
            for p in self.params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
        return float(flat[0]), bool(flat[1] > 0), bool(flat[2] > 0)

    def current_loss(self) -> tuple[float, Trace | None]:
        """The objective at the current parameters, without gradients (summed over processes)."""
        with torch.no_grad():
            loss, trace = self.objective()
        value = float(loss)
        if self.collective is not None:
            value = self.reduce(value, not math.isfinite(value), grads=False)[0]
        return value, trace

    def everywhere(self, flag: bool) -> bool:
        """Whether ``flag`` holds in every process (in this one, without a collective)."""
        return flag if self.collective is None else self.collective.sum(0.0 if flag else 1.0) == 0.0

    # ------------------------------------------------------------------ compilation
    def compile(self) -> None:
        """Use a traced objective from now on, if it verifies (in every process).

        ``self.cache``: ``(key, model, data)`` for :data:`~pyro_mle.compile.TRACE_CACHE`: a trace kept
        from an earlier fit is reused when it gives this program's loss and gradient here (else
        it is dropped), a new trace is kept for later fits; ``data`` are the argument tensors,
        inputs of the trace."""
        interpreted = lambda: self.objective()[0]  # noqa: E731
        key, model, data = self.cache if self.cache is not None else (None, None, ())
        exact = self.exact
        if key is not None:
            kept = compiling.TRACE_CACHE.get(key, model)
            if kept is not None:
                candidate = compiling.Compiled(kept, data)
                if compiling.agrees(interpreted, candidate, self.params, grads=True, exact=exact):
                    self.compiled, self.jit_error = candidate, ""
                    return
                if not exact:
                    compiling.TRACE_CACHE.drop(key)
                self.jit_error = "the kept trace does not reproduce the program here"
                return
        fn, self.jit_error = compiling.trace_objective(interpreted, self.params, data, exact)
        self.compiled = None if fn is None else compiling.Compiled(fn, data)
        if not self.everywhere(self.compiled is not None):
            self.compiled = None  # processes of a data-parallel fit all use the trace, or none does
        elif fn is not None and key is not None:
            compiling.TRACE_CACHE.put(key, model, fn)

    def forget_trace(self, why: str) -> None:
        """Run interpreted from now on, and drop the trace from the cache."""
        self.compiled, self.jit_error = None, why
        if self.cache is not None and self.cache[0] is not None:
            compiling.TRACE_CACHE.drop(self.cache[0])

    def trace_agrees(self) -> bool:
        """Whether the compiled objective still gives the program's loss (in every process)."""
        if self.compiled is None:
            return True
        return self.everywhere(compiling.agrees(lambda: self.objective()[0], self.compiled, self.params))

    # ------------------------------------------------------------------ failures
    def diverged(self, step: int, trace: Trace | None, value: float, cause: BaseException | None = None) -> Diverged:
        """Name the sites whose log-prob broke, and the parameters that are not finite."""
        sites: list[str] = []
        details: list[str] = []
        if trace is not None:
            with torch.no_grad():
                for name, lp in _log_prob_terms(trace, elementwise=True).items():
                    bad = ~torch.isfinite(lp)
                    if bool(bad.any()):
                        sites.append(name)
                        details.append(f"{name!r} ({describe_non_finite(lp, bad)})")
        store = pyro.get_param_store()
        bad_params = [name for name, p in store.named_parameters() if not bool(torch.isfinite(p).all())]
        with pyro.validation_enabled(True), validation(True), torch.no_grad():
            try:  # with checks on, torch and the likelihood heads often say exactly what broke
                self.objective()
                checked = ""
            except (ValueError, RuntimeError) as e:
                checked = f" With validation on, the model raises: {first_line(e)}"
        if cause is not None and not checked:
            checked = f" The model raised: {first_line(cause)}"
        where = f"at step {step} of {self.optimizer}" if step else "at the initial parameters (step 0)"
        what = "could not be evaluated" if trace is None else f"became {value}"
        last = f" (last finite loss {self.losses[-1]:.6g} at step {len(self.losses) - 1})" if self.losses else ""
        msg = f"fit(model): the {self.method.upper()} loss {what} {where}{last}."
        if details:
            msg += f" Non-finite log-prob at site {', '.join(details)}."
        if bad_params:
            msg += f" Parameters with non-finite values: {bad_params}."
        msg += checked
        keep = "the last finite parameters" if step else "the initial parameters"
        msg += (
            f" The fit stopped; err.fit holds {keep}. Fix: lower lr (now {self.lr:g}), give scale "
            "parameters a positive constraint or a softplus link, rescale the inputs, check the data lie "
            "in the support of the likelihood, or start elsewhere (init_loc_fn, initial pyro.param values)."
        )
        return Diverged(msg, step, tuple(sites), self.good, cause)


def describe_non_finite(lp: torch.Tensor, bad: torch.Tensor) -> str:
    """``"nan at rows [3, 17]"``, ``"-inf at all 300 elements"``: the kinds of bad values and where."""
    kinds = [
        k for k, m in (("nan", torch.isnan(lp)), ("inf", lp == math.inf), ("-inf", lp == -math.inf)) if bool(m.any())
    ]
    if lp.dim() == 0:
        return kinds[0]
    count, total = int(bad.sum()), bad.numel()
    if count == total:
        return f"{' and '.join(kinds)} at all {total} elements"
    where = describe_rows(bad, lp).split(" at ", 1)[1]  # "rows [3, 17]", "row 4"
    return f"{' and '.join(kinds)} at {where}"

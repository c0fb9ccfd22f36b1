"""The optimisation of one point fit: which optimisers run, in which order, and the verdict.

:class:`Solver` runs L-BFGS (or Adam when a plate subsamples; the majorise–minimise solver of
:mod:`pyro_mle.nonsmooth` for absolute-error terms), the Newton finish, the full-data polish of
a minibatch fit, and then says whether the point is an optimum (:mod:`pyro_mle.optim.stopping`),
not one (with the likely cause), or whether no optimum exists (:mod:`pyro_mle.existence`). It
holds no Pyro of its own: the program is reached through a
:class:`~pyro_mle.objective.PointObjective` and an :class:`~pyro_mle.evaluation.Evaluator`.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from . import compile as compiling
from . import existence, nonsmooth
from .evaluation import Collective, Evaluator, TraceMismatch
from .objective import PointObjective
from .optim.adam import adam
from .optim.lbfgs import lbfgs
from .optim.lbfgsb import applies as lbfgsb_applies
from .optim.lbfgsb import lbfgsb
from .optim.newton import newton
from .optim.result import OptimResult
from .optim.stopping import default_tolerances, relative_gradient
from .optim.vectors import flat_grad
from .results import ZeroGradientWarning

#: Full-batch fits with at most this many parameters always end with Newton steps (a dense
#: Hessian costs one backward pass per parameter: cheap here, and it certifies the optimum
#: where L-BFGS cannot tell an ill-conditioned valley from a minimum) ...
_NEWTON_ALWAYS = 200
#: ... and with at most this many when L-BFGS did not converge.
_NEWTON_MAX = 2000
#: Newton steps of the finish: near an optimum a handful suffice; far from one (a network
#: stalled on a ridge) more only cost Hessians.
_NEWTON_STEPS = 20
#: The tolerances (rtol, gtol) to which L-BFGS brings the point when a Newton finish follows.
_NEAR = (1e-6, 1e-4)
#: ... for a classifier, whose convex loss a Newton step solves from farther out.
_NEAR_CERTAIN = (1e-4, 1e-3)
#: Condition number below which a positive definite Hessian at the end certifies a strict minimum.
_WELL_CONDITIONED = 1e8
#: iterates kept for the test of an estimate at infinity (the direction the fit last moved in)
_RAY_MEMORY, _RAY_MAX_PARAMS = 8, 100_000
#: An Adam run is judged by the relative gradient of the full objective at its estimate; a
#: first-order stochastic method is not expected below this, whatever the dtype.
_ADAM_GTOL = 1e-4
#: ... or, for a subsampled fit, the estimate's distance from the optimum in standard errors.
_ADAM_STANDARD_ERRORS = 0.1
#: L-BFGS steps on the full data after a subsampled Adam run that is not at the optimum.
_POLISH_STEPS = 100


@dataclass(frozen=True)
class Settings:
    """The resolved options of one fit."""

    method: str
    optimizer: str
    num_steps: int
    lr: float
    rtol: float
    gtol: float
    num_data: float
    jit: bool


@dataclass
class Outcome:
    """How a run ended: the verdict and what the result reports of it."""

    converged: bool = False
    message: str = ""
    num_steps: int = 0
    grad_norm: float = math.nan
    no_optimum: bool = False
    zero_at_end: list[bool] | None = None
    names: tuple[str, ...] = ()

    def warn_zero_gradients(self, zero_at_start: list[bool]) -> None:
        if self.zero_at_end is None:
            return
        stuck = [n for n, a, b in zip(self.names, zero_at_start, self.zero_at_end) if a and b]
        if stuck:
            shown = ", ".join(repr(existence.display_name(n)) for n in stuck)
            warnings.warn(
                f"fit(model): the gradient of {shown} was exactly zero at the start and at the estimate: the loss "
                "does not depend on it there (a dead unit, a masked term, a module whose output is unused?). Its "
                "value is its starting value, not an estimate.",
                ZeroGradientWarning,
                stacklevel=4,
            )


def _set_grads(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


class Solver:
    """One fit's optimisation: the first-order run (traced where it verifies), the Newton
    finish, and the verdict: converged, not converged with a named cause, or no optimum."""

    def __init__(
        self,
        obj: PointObjective,
        ev: Evaluator,
        settings: Settings,
        structure: Any,
        collective: Collective | None,
        bar: tqdm,
    ):
        self.obj, self.ev, self.s, self.structure, self.collective, self.bar = (
            obj,
            ev,
            settings,
            structure,
            collective,
            bar,
        )
        self.size = sum(p.numel() for p in obj.params)
        self.recent: deque[torch.Tensor] = deque(maxlen=_RAY_MEMORY)

    # ------------------------------------------------------------------ driver
    def run(self) -> Outcome:
        if self.s.optimizer == "lbfgs" and self.collective is None and nonsmooth.nonsmooth_sites(self.obj):
            return self._nonsmooth()
        if not self.s.jit:
            return self._finish(self._first_order())
        cuda = compiling.cuda_devices(self.obj.params)
        start, state = self.ev.snapshot(), compiling.get_rng_state(cuda)
        self.ev.compile()
        try:
            result = self._first_order()
            if not self.ev.trace_agrees():
                raise TraceMismatch
        except TraceMismatch:
            # A program whose Python decisions depend on parameter values traces to a graph
            # that is right only where it was traced. Start again, interpreted.
            self.ev.forget_trace("the trace stopped reproducing the program's loss during the fit")
            self.ev.restore(start)
            compiling.set_rng_state(state, cuda)
            self.ev.losses.clear()
            self.recent.clear()
            self.bar.reset()
            result = self._first_order()
        return self._finish(result)

    def _nonsmooth(self) -> Outcome:
        """Laplace likelihoods and (under MAP) Laplace priors put kinks at the optimum, where
        L-BFGS and Newton stall: majorise–minimise with an exact active-set finish instead
        (:mod:`pyro_mle.nonsmooth`), judged by its first-order optimality certificate."""
        s, ev, obj = self.s, self.ev, self.obj
        result = nonsmooth.solve(
            obj, rtol=s.rtol, gtol=s.gtol, num_data=s.num_data, record=self._on_step, max_outer=s.num_steps
        )
        loss = float(ev.evaluate(len(ev.losses)))  # gradients at the estimate, for the zero-gradient check
        outcome = Outcome(
            converged=result.converged,
            message=result.message,
            num_steps=result.num_steps,
            grad_norm=result.stationarity,
            zero_at_end=existence.zero_gradient(obj.params),
            names=obj.names,
        )
        # a first-order certificate does not prove that a minimum exists (a latent scale → 0)
        self._check_existence(outcome, loss, False)
        return outcome

    def _on_step(self, loss: float) -> None:
        self.ev.record(loss)
        if self.size <= _RAY_MAX_PARAMS:
            self.recent.append(self.ev.good)

    def _finishes(self) -> bool:
        """Whether a converged L-BFGS run is always followed by Newton steps."""
        return self.collective is None and self.size <= _NEWTON_ALWAYS

    def _first_order(self, lr: float | None = None, num_steps: int | None = None) -> OptimResult:
        s = self.s
        lr = s.lr if lr is None else lr
        num_steps = s.num_steps if num_steps is None else num_steps
        if s.optimizer == "lbfgs":
            # With a Newton finish to follow, L-BFGS need only bring the point near the optimum:
            # its last steps to full precision cost more than one Newton step, which converges
            # quadratically from there. A classifier's convex loss lets the finish start
            # farther out when L-BFGS steps are dear (torch's driver); with scipy's, a step
            # costs one evaluation, and stopping at 1e-3 sent logistic regression on 10^5 rows
            # into a second Newton step (139 against 102 ms a fit). (Skipping the finish for
            # runs whose L-BFGS curvature pairs looked well conditioned was tried and withdrawn:
            # a near-collinear pair of columns, a Hessian eigenvalue of 5e-10 the steps never
            # explore, came out 100 % wrong.)
            scipy_driver = self.collective is None and lbfgsb_applies(self.obj.params)
            rtol, gtol = s.rtol, s.gtol
            if self._finishes():
                rtol_near, gtol_near = _NEAR_CERTAIN if self._classification() and not scipy_driver else _NEAR
                rtol, gtol = max(s.rtol, rtol_near), max(s.gtol, gtol_near)
            evaluate = lambda probe: self.ev.evaluate(len(self.ev.losses), probe)  # noqa: E731
            if scipy_driver:
                # scipy's compiled driver: torch's Python L-BFGS cost as much as a small fit's
                # evaluations (issue 14)
                return lbfgsb(
                    evaluate, self.obj.params, num_steps=num_steps, rtol=rtol, gtol=gtol,
                    num_data=s.num_data, on_step=self._on_step,
                )  # fmt: skip
            return lbfgs(
                evaluate,
                self.obj.params,
                num_steps=num_steps,
                lr=lr,
                rtol=rtol,
                gtol=gtol,
                num_data=s.num_data,
                on_step=self._on_step,
            )
        return adam(
            lambda step: self.ev.evaluate(step),
            self.obj.params,
            num_steps=num_steps,
            lr=lr,
            rtol=s.rtol,
            gtol=s.gtol,
            num_data=s.num_data,
            stochastic=bool(self.structure.subsample),
            on_step=self.ev.record,
        )

    def _finish(self, result: OptimResult) -> Outcome:
        if self.s.optimizer == "adam":
            return self._judge_adam(result)
        return self._judge_full_batch(result)

    # ------------------------------------------------------------------ full batch
    def _judge_full_batch(self, result: OptimResult) -> Outcome:
        s, ev = self.s, self.ev
        # L-BFGS ran to loose tolerances when a finish was due (_first_order): without a finish
        # that settles it, its point is judged by the caller's own gradient tolerance.
        converged = result.converged and result.grad_norm <= s.gtol
        message, steps = result.message, result.num_steps
        if result.rejected:
            message += (
                f" {result.rejected} line-search trial point(s) had a non-finite loss and were treated as too "
                "long a step."
            )
        base = message
        if result.converged and not converged:
            message += f" That relative gradient is short of gtol {s.gtol:g}, and no Newton finish settled it."
        newton_run = None
        # The finish runs after L-BFGS converged or stalled, not when it spent num_steps: that
        # budget is the caller's.
        spent = not result.converged and not result.stalled
        if (
            self.collective is None
            and not spent
            and (self.size <= _NEWTON_ALWAYS or (not converged and self.size <= _NEWTON_MAX))
        ):
            newton_run = self._newton()
            if newton_run is not None:
                steps += newton_run.num_steps
                if newton_run.num_steps or newton_run.converged or not converged:
                    converged = newton_run.converged
                    message = f"{base} Newton finish: {newton_run.message}"
        # the gradient at the estimate (left in .grad by the last evaluation), for the record and
        # the zero-gradient check
        loss = ev.losses[-1]
        grad_norm = relative_gradient(flat_grad(self.obj.params), self.obj.flat(), loss, s.num_data)
        outcome = Outcome(
            converged=converged,
            message=message,
            num_steps=steps,
            grad_norm=grad_norm,
            zero_at_end=existence.zero_gradient(self.obj.params),
            names=self.obj.names,
        )
        if self.collective is None:
            # A Newton finish that ends on a positive definite, moderately conditioned Hessian
            # has found a strict minimum: it exists, and the tests for an estimate at infinity
            # (which cost a Jacobian and a linear programme) are skipped. Separation and a
            # density without bound both flatten the Hessian along their direction (condition
            # numbers of 1e17 were measured on separated iris and breast-cancer fits).
            # The curvature must also be of the loss's size: separated classes drive the whole
            # Hessian to 0 (1e-14 at a loss of 1e-14), however well conditioned what is left.
            x_size = max(float(self.obj.flat().abs().max()), 1.0) if self.size else 1.0
            # (L-BFGS's curvature pairs certify nothing: separated iris in float32 stopped with
            # pairs within a factor 1e3 while its weights were still growing.)
            certified = (
                newton_run is not None
                and newton_run.converged
                and newton_run.min_eigenvalue > 0
                and newton_run.condition < _WELL_CONDITIONED
                and newton_run.min_eigenvalue * x_size**2 >= 1e-6 * max(abs(loss), s.num_data)
            )
            self._check_existence(outcome, loss, certified)
        if not outcome.converged and not outcome.no_optimum:
            outcome.message = self._why_not(outcome.message, newton_run)
        return outcome

    def _classification(self) -> bool:
        """Whether every term of the objective is an observed Bernoulli or Categorical site
        (where classes can be separated)."""
        return self.obj.classification_only

    def _value(self, x: torch.Tensor) -> float:
        self.obj.set_flat(x)
        try:
            with torch.no_grad():
                return float(self.obj.loss())
        except (ValueError, RuntimeError):
            return math.nan

    def _newton(self) -> Any:
        """Damped Newton steps from the current point; ``None`` (and the point unchanged) when
        they cannot run or leave the point no better than they found it."""
        obj, s = self.obj, self.s

        def value_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
            try:
                with torch.enable_grad():
                    loss, grad = obj.value_and_grad(x)
                return float(loss), grad
            except (ValueError, RuntimeError):  # an invalid trial point: too long a step
                return math.inf, torch.zeros_like(x)

        def hessian(x: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return obj.hessian(x)

        def converged(x: torch.Tensor, loss: float, grad: torch.Tensor) -> bool:
            return relative_gradient(grad, x, float(loss), s.num_data) <= s.gtol

        start = obj.flat()
        try:
            before = (self.ev.losses[-1], flat_grad(obj.params))  # L-BFGS left the gradient at start
            result = newton(
                value_and_grad,
                start,
                hessian=hessian,
                converged=converged,
                max_steps=_NEWTON_STEPS,
                max_params=_NEWTON_MAX,
                max_decrement=100 * torch.finfo(obj.params[0].dtype).eps,
                min_steps=1,
            )
        except (ValueError, RuntimeError, NotImplementedError):
            obj.set_flat(start)  # the program has no second derivative here (or too many parameters)
            return None
        if not result.converged and result.num_steps:
            # A float32 Hessian of an ill-conditioned problem can send a step that lowers the loss
            # by rounding alone far from the optimum: keep the finish only if it did not make the
            # gradient worse than it found it.
            worse = relative_gradient(result.grad, result.x, float(result.loss), s.num_data) > relative_gradient(
                before[1], start, before[0], s.num_data
            )
            if worse:
                obj.set_flat(start)
                _set_grads(obj.params, before[1])
                return None
        obj.set_flat(result.x)
        _set_grads(obj.params, result.grad)
        if result.num_steps:
            self.ev.record(float(result.loss))
        return result

    def _check_existence(self, outcome: Outcome, loss: float, certified: bool) -> None:
        """Three signs that the objective has no minimum: a constrained parameter at the edge
        of its support; the loss flat or falling along the direction the iterates last moved in
        (logistic weights at 900, where the loss has underflowed to 0); and separated classes
        (:func:`~pyro_mle.existence.separation`: float32 stops on its tolerance while
        separated weights are still growing, and the loss can no longer show it)."""
        obj = self.obj
        x_hat = obj.flat()
        # a bounded parameter far out at a point that passes the gradient test may be a genuine
        # optimum (a variance of 4e10): there it counts only if the loss does not rise beyond it
        probe = self._value if outcome.converged else None
        edge = [] if certified else existence.at_edge(obj.names, obj.params, probe, loss)
        obj.set_flat(x_hat)
        # The ray test checks a claim of convergence; from a point that is merely unfinished the
        # loss keeps falling for a while along any descent direction.
        ray = outcome.converged and bool(self.recent) and not certified
        ray = ray and existence.runs_off(self._value, x_hat, x_hat - self.recent[0], loss)
        obj.set_flat(x_hat)
        test_separation = not (ray or edge or certified) and self._classification()
        separated = existence.separation(obj.trace, obj.params) if test_separation else []
        if edge or ray or separated:
            outcome.converged, outcome.no_optimum = False, True
            discrete = bool(separated) or any(self._observed_discrete())
            outcome.message = existence.no_optimum_message(self.s.method, edge, ray or bool(separated), discrete)

    def _observed_discrete(self) -> list[bool]:
        with torch.no_grad():
            trace = self.obj.trace()
        return [
            bool(site["fn"].support.is_discrete)
            for site in trace.nodes.values()
            if site["type"] == "sample" and site["is_observed"] and hasattr(site["fn"], "support")
        ]

    def _why_not(self, message: str, newton_run: Any) -> str:
        hints = []
        if newton_run is not None and math.isfinite(newton_run.condition) and newton_run.condition > 1e12:
            hints.append(
                f"the problem is ill-conditioned (condition number of the Hessian {newton_run.condition:.1g}): "
                "standardise the inputs (centre and scale each column) or drop near-collinear ones"
            )
        elif newton_run is not None and newton_run.min_eigenvalue < 0:
            hints.append("the Hessian is indefinite at the end point (a saddle or a ridge): start elsewhere")
        if self.obj.params[0].dtype != torch.float64:
            hints.append(
                "in float32 the loss of a sum of many terms carries rounding of about 1e-7 of its size, which can "
                "hide the remaining slope from the line search: fit in float64 (x.double(), float64 parameters) to "
                "go further"
            )
        hints.append("raise num_steps, loosen rtol/gtol, or rescale the inputs")
        return f"{message} Fit.params holds the last iterate. Likely cause and remedy: {'; '.join(hints)}."

    # ------------------------------------------------------------------ Adam
    def _judge_adam(self, result: OptimResult) -> Outcome:
        """Judge Adam's end (:meth:`_adam_verdict`). A subsampled fit that reached a plateau but
        not yet the full-data optimum is polished by L-BFGS on the full objective, each
        evaluation one sweep over the data in minibatch-sized chunks (an epoch's work, a
        minibatch's memory): averaged minibatch steps approach the optimum only as fast as the
        minibatch noise averages out, about 1/√(epochs) of a standard error, while a few
        full-gradient steps reach it. A run that spent its ``num_steps`` is reported as it is."""
        outcome = self._adam_verdict(result)
        if outcome.converged or not result.converged or not self.structure.subsample:
            return outcome
        s, ev, obj = self.s, self.ev, self.obj

        def evaluate(probe: bool) -> torch.Tensor | None:
            value, _ = obj.full_data_value_and_grad()
            if self.collective is not None:
                value = ev.reduce(value, not math.isfinite(value))[0]
            if not math.isfinite(value):
                if probe:
                    return None
                raise ev.diverged(len(ev.losses), None, value)
            return torch.tensor(value, dtype=obj.params[0].dtype)

        if self.collective is None and self.size <= _NEWTON_MAX:
            polish, how = self._newton_on_sweeps(), "Newton steps on the full data (IRLS-like; one sweep an evaluation)"
        else:
            polish = lbfgs(
                evaluate,
                obj.params,
                num_steps=_POLISH_STEPS,
                lr=1.0,
                rtol=default_tolerances(obj.params[0].dtype)[0],
                gtol=s.gtol,
                num_data=s.num_data,
                on_step=ev.record,
            )
            how = "L-BFGS on the full data (one sweep an evaluation)"
        final = self._adam_verdict(polish, polished=True)
        final.num_steps = result.num_steps + polish.num_steps
        short = outcome.message.split(" But ", 1)[-1].split(":", 1)[0]
        final.message = f"{result.message} {short}; polished by {how}: {final.message}"
        return final

    def _newton_on_sweeps(self) -> OptimResult:
        """Newton steps on the full objective, its value, gradient and Hessian each summed over
        one sweep of the data in minibatch-sized chunks: the way IRLS finishes a GLM, and immune
        to the ill-conditioning of raw covariates that stalls a first-order polish."""
        obj, s = self.obj, self.s

        def value_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
            obj.set_flat(x)
            try:
                value, _ = obj.full_data_value_and_grad()
            except (ValueError, RuntimeError):
                return math.inf, torch.zeros_like(x)
            return value, obj.flat_grad()

        start = obj.flat()
        try:
            result = newton(
                value_and_grad,
                start,
                hessian=obj.full_data_hessian,
                converged=lambda x, loss, g: relative_gradient(g, x, float(loss), s.num_data) <= s.gtol,
                max_steps=_NEWTON_STEPS,
                max_params=_NEWTON_MAX,
                max_decrement=100 * torch.finfo(start.dtype).eps,
                min_steps=1,
            )
        except (ValueError, RuntimeError, NotImplementedError) as e:
            obj.set_flat(start)
            return OptimResult(False, 0, math.nan, True, 0, f"no Newton polish ({e})")
        obj.set_flat(result.x)
        self.ev.record(float(result.loss))
        grad_norm = relative_gradient(result.grad, result.x, float(result.loss), s.num_data)
        return OptimResult(result.converged, result.num_steps, grad_norm, not result.converged, 0, result.message)

    def _adam_verdict(self, result: OptimResult, polished: bool = False) -> Outcome:
        r"""Judge an Adam run by the gradient of the **full** objective at its estimate.

        A subsampled fit's gradient is read in standard errors: with :math:`J` the diagonal of
        the empirical Fisher information (from the spread of the minibatch-chunk gradients of
        the same sweep), :math:`|g_j|/\sqrt{J_{jj}}` is, to first order, how many standard
        errors coordinate :math:`j` lies from the optimum (the score statistic). Converged when
        every coordinate is within 0.1 standard error, or meets the relative-gradient test.
        Without subsampling, the relative gradient at most ``max(gtol, 1e-4)``.
        """
        s, ev, obj = self.s, self.ev, self.obj
        if not polished:
            value, trace = ev.current_loss()  # the objective at the estimate, for losses[-1]
            if not math.isfinite(value):
                raise ev.diverged(result.num_steps, trace, value)
            ev.record(value)
        information = None
        if self.structure.subsample:
            full, information = obj.full_data_value_and_grad()
            if self.collective is not None:
                full = ev.reduce(full, not math.isfinite(full))[0]
                information = self._reduce_information(information)
            what = "full-data"
        else:
            full = float(ev.evaluate(result.num_steps))
            what = "full-batch"
        tol = max(s.gtol, _ADAM_GTOL)
        grad = flat_grad(obj.params)
        grad_norm = relative_gradient(grad, obj.flat(), full, s.num_data)
        at_optimum = grad_norm <= tol
        detail = f"the {what} relative gradient is {grad_norm:.2g} ({'<=' if at_optimum else '>'} {tol:g})"
        if information is not None and not at_optimum:
            z = grad.abs().to(torch.float64) / information.to(torch.float64).sqrt()
            small = grad.abs() * obj.flat().abs().clamp(min=1.0) / max(abs(full), s.num_data) <= tol
            z = torch.where(small, torch.zeros_like(z), z)
            worst = float(z.max()) if z.numel() else 0.0
            at_optimum = worst <= _ADAM_STANDARD_ERRORS
            detail = (
                f"the {what} gradient puts the estimate within {worst:.2g} standard errors of the optimum "
                f"(score statistic; {'<=' if at_optimum else '>'} {_ADAM_STANDARD_ERRORS:g})"
            )
        converged = (result.converged or polished) and at_optimum
        if polished:
            message = f"{result.message} At the estimate {detail}."
        elif converged:
            message = f"converged: {result.message} At the estimate {detail}."
        elif result.converged:
            message = (
                f"not converged: {result.message} But at the estimate {detail}: the minibatch noise hides the "
                "slope that remains. Fit.params holds the averaged iterate. Raise num_steps, lower lr, or use larger "
                "minibatches (subsample_size)."
            )
        else:
            message = (
                f"{result.message} At the estimate {detail}. Fit.params holds the last iterate. Raise num_steps or "
                "lr, or loosen rtol/gtol."
            )
        return Outcome(
            converged=converged,
            message=message,
            num_steps=result.num_steps,
            grad_norm=grad_norm,
            zero_at_end=existence.zero_gradient(obj.params),
            names=obj.names,
        )

    def _reduce_information(self, information: torch.Tensor | None) -> torch.Tensor | None:
        """The whole data's information from each process's estimate of it: a process whose
        likelihood is scaled by 1/w contributes w² times its scaled estimate."""
        missing = information is None
        if self.collective.sum(1.0 if missing else 0.0) > 0:
            return None
        total = information.to(torch.float64) * self.ev.weight**2
        self.collective.sum_(total)
        return total

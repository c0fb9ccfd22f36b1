"""A Pyro program's unconstrained potential as one checked value-and-gradient function.

The NUTS engines do not read the program: they read its **potential**, the negative log joint
density of the latent sites in the unconstrained space (plus the log-Jacobians of the site
transforms), as a function of one flat vector. :func:`unconstrained_potential` builds it with
Pyro's :func:`~pyro.infer.mcmc.util.initialize_model`; :func:`compile_potential` turns it into
a fast ``value_and_grad(x) -> (value, gradient)`` by the first route that works:

1. ``"script"``: one TorchScript graph of forward **and** backward, recorded by tracing a
   function that computes the potential and calls :func:`torch.autograd.grad` (one graph
   runs ~3× faster than a traced forward with autograd on top, ~4× faster than Pyro's
   effect handlers);
2. ``"fx-script"``: the same function captured first by
   :func:`torch.fx.experimental.proxy_tensor.make_fx`, then traced. Route 1 fails when a
   backward node reuses a saved forward *output* (``exp`` in a positive-scale transform:
   "Cannot insert a Tensor that requires grad as a constant"); the captured graph holds no
   such tensor. The first ``make_fx`` of a process imports ``torch._dynamo`` (~2.5 s), which
   is why it is second;
3. ``"interpreted"``: the program run through Pyro's handlers at every evaluation.

A trace replays the operations it recorded: a program whose Python decisions depend on values
(``if float(w) > 0``) traces into another function, without an error. So every compiled
candidate is **checked** against the interpreted potential, value and gradient, at the
initial point and at several random points, and rejected if it differs anywhere
(:class:`TraceMismatchWarning`); :attr:`Potential.route` and :attr:`Potential.reason` say
which route runs and why the faster ones were refused.

**Non-finite parameters.** A sampler's trajectory may overflow a constrained value (a scale
``exp(800) = inf``). That point has log density −∞: the potential is ``+inf`` there (the
sampler counts a divergence or rejects the step), never an exception from a distribution or
a likelihood head checking its parameters. Input checks belong to the data, which were
checked when the program was first traced.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer.mcmc.util import initialize_model

from ._validation import first_line, validation
from .compile import close

ROUTES = ("script", "fx-script", "interpreted")
#: random points (besides the initial one) where a compiled potential must agree
CHECK_POINTS = 4

ValueAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TraceMismatchWarning(UserWarning):
    """A traced potential computed another function than the program (value-dependent Python
    control flow); the interpreted program runs instead."""


@dataclass(frozen=True)
class Potential:
    """The negative log joint of a program's latent sites, unconstrained, as a function of a
    flat vector.

    Fields:
      * ``value_and_grad``: ``x -> (value, gradient)``, both detached, ``x`` of shape
        ``(size,)`` and dtype ``dtype``; ``value`` is ``+inf`` where the density is 0 or a
        parameter is not finite, with a zero gradient there.
      * ``interpreted``: the same through Pyro's handlers (the reference of the check).
      * ``route``: ``"script"``, ``"fx-script"`` or ``"interpreted"`` (see the module docstring).
      * ``reason``: why the faster routes were refused (``""`` when the first one ran).
      * ``layout``: ``(site, unconstrained shape)`` in the order of the flat vector.
      * ``transforms``: site → transform from the constrained to the unconstrained space
        (``transforms[k].inv`` maps a slice of ``x`` to the site's value).
      * ``init``: Pyro's initial point (flat, unconstrained).
      * ``potential_fn``: Pyro's potential of a dict of unconstrained site values.
    """

    value_and_grad: ValueAndGrad = field(repr=False)
    interpreted: ValueAndGrad = field(repr=False)
    route: str
    reason: str
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    transforms: Mapping[str, Any] = field(repr=False)
    init: torch.Tensor = field(repr=False)
    potential_fn: Callable = field(repr=False)

    @property
    def size(self) -> int:
        return sum(math.prod(s) for _, s in self.layout)

    @property
    def dtype(self) -> torch.dtype:
        return self.init.dtype

    def unflatten(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Site → unconstrained value; ``x`` is ``(..., size)``."""
        out, offset = {}, 0
        lead = x.shape[:-1]
        for name, shape in self.layout:
            n = math.prod(shape)
            out[name] = x[..., offset : offset + n].reshape(lead + shape)
            offset += n
        return out

    def constrain(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Site → constrained value (the site transforms' inverses) of ``x`` of shape ``(..., size)``."""
        return {k: self.transforms[k].inv(v) for k, v in self.unflatten(x).items()}


def unconstrained_potential(model: Callable, args: tuple, kwargs: Mapping[str, Any]) -> tuple[Callable, dict]:
    """Pyro's potential of ``model(*args, **kwargs)`` and its initial point.

    Returns ``(potential_fn, init, transforms)`` from
    :func:`~pyro.infer.mcmc.util.initialize_model` (the initial point is Pyro's
    ``init_to_uniform``, drawn from the global generators: call it inside the run's
    :func:`~pyro_mle._rng.rng_scope`).
    """
    init, potential_fn, transforms, _ = initialize_model(model, model_args=tuple(args), model_kwargs=dict(kwargs))
    return potential_fn, init, transforms


def _quiet_program() -> ExitStack:
    """Inside the potential: no input checks of Pyro's distributions or of likelihood heads
    (they apply to data, checked when the program was first traced, not to parameter values
    proposed by a sampler), and no tracer chatter (the trace is checked instead)."""
    stack = ExitStack()
    stack.enter_context(pyro.validation_enabled(False))
    stack.enter_context(validation(False))
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    # torch ≥ 2.9 flags torch.jit.trace as deprecated; it is still the route to one graph
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
    return stack


def build_potential(
    model: Callable,
    args: tuple,
    kwargs: Mapping[str, Any],
    compile: bool = True,
    check_seed: int = 0,
) -> Potential:
    """The program's potential, compiled by the first route that reproduces the interpreted
    one (see the module docstring). ``check_seed`` seeds the random check points (its own
    generator: the global ones are not touched). With ``compile=False`` the interpreted route
    runs, and :attr:`Potential.reason` says so."""
    potential_fn, init_sites, transforms = unconstrained_potential(model, args, kwargs)
    layout = tuple((k, tuple(v.shape)) for k, v in init_sites.items())
    init = torch.cat([v.detach().reshape(-1) for v in init_sites.values()])
    dtype = init.dtype

    def split(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape in layout:
            n = math.prod(shape)
            out[name] = x[offset : offset + n].reshape(shape)
            offset += n
        return out

    def finite_parameters(x: torch.Tensor) -> bool:
        return all(bool(torch.isfinite(transforms[k].inv(v)).all()) for k, v in split(x).items())

    def graph(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the function that is traced: value and gradient in one recorded graph
        with torch.enable_grad():
            theta = x if x.requires_grad else x.detach().requires_grad_()
            value = potential_fn(split(theta))
            (grad,) = torch.autograd.grad(value, theta)
        return value.detach(), grad.detach()

    # Pyro's handler stack, its validation flag and the warning filters are process-global:
    # nutpie's chains call this from several threads, one program run at a time
    lock = threading.Lock()

    def interpreted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().to(dtype)
        if not bool(torch.isfinite(x).all()) or not finite_parameters(x):
            return _infinite(x)
        with lock, _quiet_program():
            try:
                value, grad = graph(x)
            except (ValueError, RuntimeError):
                # a distribution refusing its parameters (a scale of 0 after underflow): the
                # density is 0 there. A program that fails everywhere fails at the check.
                return _infinite(x)
        return _finite_or_infinite(value, grad)

    value, _ = interpreted(init)
    if not bool(torch.isfinite(value)):
        raise ValueError(
            f"posterior: the log density of {getattr(model, '__name__', model)!r} is not finite at Pyro's initial "
            "point; check the priors' supports and the data."
        )
    g = torch.Generator().manual_seed(int(check_seed) % 2**63)
    # the initial point, and random points of Stan's initialisation box, uniform(-2, 2) in the
    # unconstrained space (where a sampler starts and warms up), each with its mirror image so
    # that a branch on a sign is seen from both sides
    box = [
        (torch.rand(init.shape, generator=g, dtype=torch.float64) * 4 - 2).to(dtype) for _ in range(CHECK_POINTS // 2)
    ]
    points = [init] + [u for b in box for u in (b, -b)]
    expected = [interpreted(p) for p in points]

    reasons = []
    if not compile:
        reasons.append("compile=False")
    else:
        for route in ROUTES[:-1]:
            try:
                fn = _trace(graph, route, init)
                got = [_call_compiled(fn, p) for p in points]
            except Exception as e:  # noqa: BLE001 - any failure to compile means: try the next route
                reasons.append(f"{route}: {type(e).__name__}: {first_line(e)}")
                continue
            if all(close(a, b) for a, b in zip(expected, got)):
                return Potential(
                    lambda x, fn=fn: _call_compiled(fn, x),
                    interpreted,
                    route,
                    "; ".join(reasons),
                    layout,
                    transforms,
                    init,
                    potential_fn,
                )
            reasons.append(
                f"{route}: the trace gives another value or gradient than the program at a check point "
                "(Python control flow that depends on values?)"
            )
            warnings.warn(
                f"the compiled potential of {getattr(model, '__name__', model)!r} differs from the program "
                f"({route} trace); sampling the interpreted program instead (slower, correct). A program "
                "whose Python branches depend on parameter values cannot be traced: write them with "
                "torch.where to get the compiled speed.",
                TraceMismatchWarning,
                stacklevel=4,
            )
            break  # a value-dependent program traces wrongly by every route
    return Potential(
        interpreted, interpreted, "interpreted", "; ".join(reasons), layout, transforms, init, potential_fn
    )


def _trace(graph: Callable, route: str, x0: torch.Tensor) -> Callable:
    with _quiet_program():
        if route == "script":
            return torch.jit.trace(graph, (x0.clone(),), check_trace=False)
        from torch.fx.experimental.proxy_tensor import make_fx

        captured = make_fx(graph)(x0.clone())
        return torch.jit.trace(captured, (x0.clone(),), check_trace=False)


def _call_compiled(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        value, grad = fn(x.detach())
    return _finite_or_infinite(value, grad)


def _infinite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(math.inf, dtype=x.dtype), torch.zeros_like(x)


def _finite_or_infinite(value: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``+inf`` with a zero gradient where the value or the gradient is not finite (NaN, an
    overflow): density 0, which a sampler treats as a divergence."""
    # one reduction: a NaN or an infinity anywhere makes the sum non-finite
    if math.isfinite(float(value) + float(grad.sum())):
        return value, grad
    return torch.tensor(math.inf, dtype=value.dtype), torch.zeros_like(grad)


class _CompiledPotential(torch.autograd.Function):
    """A potential with its gradient computed alongside its value, for Pyro's NUTS (which
    differentiates the potential with autograd)."""

    @staticmethod
    def forward(ctx, x, vg):  # noqa: D401
        value, grad = vg(x)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None


def pyro_potential_fn(potential: Potential) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``potential_fn(params)`` for :class:`pyro.infer.NUTS` (a dict of unconstrained site
    values), evaluating the checked route."""
    names = [k for k, _ in potential.layout]

    def potential_fn(params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([params[k].reshape(-1) for k in names])
        return _CompiledPotential.apply(x, potential.value_and_grad)

    return potential_fn

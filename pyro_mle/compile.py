"""Trace-and-verify compilation of an objective: :func:`torch.jit.trace` of a function of the
parameters, kept only if it computes what the program computes.

A traced program replays the operations it recorded; a program whose Python decisions depend on
parameter values (``if float(w) > 0``) or that gathers data through NumPy records one branch,
one minibatch. So a trace is accepted only after it reproduces the interpreted loss and
gradient under two random states, and the caller checks it again at the estimate
(:func:`agrees`)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ._validation import first_line


def cuda_devices(params: list[torch.Tensor]) -> list[int]:
    """The CUDA devices the parameters live on (their generators take part in a trace check)."""
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


def get_rng_state(cuda: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]], cuda: list[int]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(cuda, state[1]):
        torch.cuda.set_rng_state(s, d)


def close(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...], exact: bool = False) -> bool:
    """Equal to rounding: relative 1e-9 in float64, 1e-4 in float32, scaled by the largest entry;
    with ``exact``, equal bit for bit."""
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            return False
        if exact:
            if a.dtype != b.dtype or not torch.equal(a, b):
                return False
            continue
        rtol = 1e-9 if a.dtype == torch.float64 else 1e-4
        atol = rtol * max(float(a.abs().max()) if a.numel() else 0.0, 1.0)
        if not torch.allclose(a, b.to(a.dtype), rtol=rtol, atol=atol, equal_nan=True):
            return False
    return True


def trace_objective(
    objective: Callable[[], torch.Tensor],
    params: list[torch.Tensor],
    data: tuple[torch.Tensor, ...] = (),
    exact: bool = False,
) -> tuple[Callable[..., torch.Tensor] | None, str]:
    """Trace ``objective`` (which reads ``params`` itself) as a TorchScript function of ``params``.

    ``data``: tensors the program reads from its arguments, made inputs of the trace too
    (``compiled(*params, *data)``), so that the trace can be run again on other data of the same
    shapes (:class:`TraceCache`) instead of keeping this data as constants. ``exact``: accept
    only a trace whose loss and gradient equal the program's bit for bit.

    Returns ``(compiled, "")`` when the trace reproduces the interpreted loss and gradient at
    the current values under two random states (the same state for both, so a subsampling
    plate draws the same minibatch in each), else ``(None, why)``. The caller's random state is
    left as it was.
    """
    if not hasattr(torch.jit, "trace"):
        return None, "this torch has no torch.jit.trace"
    inputs = tuple(params) + tuple(data)
    cuda = cuda_devices(params)

    def traced_fn(*values: torch.Tensor) -> torch.Tensor:
        return objective()  # reads the parameters (the traced inputs) itself

    def loss_and_grads(fn: Callable[..., torch.Tensor], state: Any) -> tuple[torch.Tensor, ...]:
        set_rng_state(state, cuda)
        loss = fn(*inputs)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return (loss.detach(),) + tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))

    try:
        with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
            # Tracer warnings flag every Python decision on a tensor, shape checks included;
            # what matters is whether the trace computes what the program computes, checked here.
            warnings.simplefilter("ignore")
            state = get_rng_state(cuda)
            traced = torch.jit.trace(traced_fn, inputs, check_trace=False)
            expected = loss_and_grads(traced_fn, state)
            # A second random state: a program that draws (a subsampling plate) must draw anew
            # in the trace too, not replay the minibatch it was traced with.
            later = get_rng_state(cuda)
            expected_later = loss_and_grads(traced_fn, later)
            # the first calls of a trace run the profiling executor, later ones the optimised graph
            got = [
                (expected, loss_and_grads(traced, state)),
                (expected_later, loss_and_grads(traced, later)),
                (expected, loss_and_grads(traced, state)),
            ]
    except Exception as e:  # noqa: BLE001 - any failure to trace means: run interpreted
        return None, f"{type(e).__name__}: {first_line(e)}"
    if not all(close(a, b, exact) for a, b in got):
        return None, "the trace does not reproduce the program's loss and gradient"
    return traced, ""


def agrees(
    objective: Callable[[], torch.Tensor],
    compiled: Callable[..., torch.Tensor],
    params: list[torch.Tensor],
    grads: bool = False,
    exact: bool = False,
) -> bool:
    """Whether the compiled objective (a function of ``params``) gives the program's loss, and
    with ``grads`` its gradient, at the current values under the same random state (the
    caller's state is left as it was)."""
    cuda = cuda_devices(params)
    with torch.random.fork_rng(devices=cuda), torch.set_grad_enabled(grads):
        state = get_rng_state(cuda)
        expected = objective()
        set_rng_state(state, cuda)
        got = compiled(*params)
        if not grads:
            return close((expected,), (got,), exact)
        pairs = []
        for loss in (expected, got):
            g = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
            pairs.append((loss.detach(),) + tuple(torch.zeros_like(p) if d is None else d for p, d in zip(params, g)))
    return close(*pairs, exact=exact)


class Compiled:
    """A verified trace bound to this fit's data: ``compiled(*params)`` is the objective."""

    def __init__(self, fn: Callable[..., torch.Tensor], data: tuple[torch.Tensor, ...]):
        self.fn, self.data = fn, data

    def __call__(self, *params: torch.Tensor) -> torch.Tensor:
        return self.fn(*params, *self.data)


# ---------------------------------------------------------------------------- the cache
#: how deep into nested tuples, lists and dicts of arguments a key looks
_DEPTH = 4
#: what a key can hold of a plain argument (its value); other objects count by identity
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def data_tensors(args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...] | None:
    """The tensors among a program's arguments (top level and inside tuples, lists and dicts,
    in order), or ``None`` when an argument cannot be described for a cache key."""
    found: list[torch.Tensor] = []

    def visit(value: Any, depth: int) -> bool:
        if isinstance(value, torch.Tensor):
            found.append(value)
            return True
        if isinstance(value, (tuple, list)) and depth < _DEPTH:
            return all(visit(v, depth + 1) for v in value)
        if isinstance(value, dict) and depth < _DEPTH:
            return all(visit(v, depth + 1) for v in value.values())
        return True

    if not all(visit(v, 0) for v in (*args, *kwargs.values())):
        return None
    if len({id(t) for t in found}) < len(found):
        return None  # one tensor passed twice: a trace would tie the two arguments together
    return tuple(found)


def _describe(value: Any, depth: int = 0) -> Any:
    """A hashable description of an argument: a tensor by its shape, dtype and device (its
    values are an input of the trace), a plain value by itself, anything else by identity
    (a closure over other data is caught by the check at the start of every reuse)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, _PLAIN):
        return (type(value).__name__, value)
    if isinstance(value, (tuple, list)) and depth < _DEPTH:
        return (type(value).__name__, tuple(_describe(v, depth + 1) for v in value))
    if isinstance(value, dict) and depth < _DEPTH:
        return ("dict", tuple((k, _describe(v, depth + 1)) for k, v in value.items()))
    return ("object", id(value))


class TraceCache:
    """Verified traces of point objectives, kept across fits (least recently used first out).

    A trace costs about ten interpreted evaluations and then runs each evaluation 2-4x faster
    (it skips Pyro's effect handlers), so it pays within one long Adam run, and otherwise from
    the second fit of the same program on data of the same shapes: refits, cross-validation
    folds, bootstraps, :func:`pyro_mle.compare` and model selection. The key is the program
    (the function object), the method, the arguments (tensors by shape, dtype and device;
    their values are inputs of the trace, so new data of the same shapes reuses it) and the
    parameters (names, shapes, dtypes, devices, constraints). A key seen once is remembered;
    the second fit with it traces, later fits reuse the trace. Every reuse is checked against
    the interpreted program (loss and gradient at the start, loss at the estimate) and dropped
    if it disagrees. A trace that :func:`pyro_mle.fit` chooses by itself for a second fit must
    reproduce the program bit for bit (TorchScript's own derivative formulas can round
    differently), so that the same call gives the same estimate whether it ran traced or not.
    ``maxsize`` entries at most; :func:`pyro_mle.clear_trace_cache` empties it.
    """

    def __init__(self, maxsize: int = 32):
        self.maxsize = maxsize
        self._traces: OrderedDict[Any, tuple[Any, Callable[..., torch.Tensor]]] = OrderedDict()
        self._seen: OrderedDict[Any, Any] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(
        model: Any,
        method: str,
        args: tuple,
        kwargs: dict,
        names: list[str],
        params: list[torch.Tensor],
        constraints: list[Any],
    ) -> Any:
        parts = tuple((n, tuple(p.shape), p.dtype, p.device, repr(c)) for n, p, c in zip(names, params, constraints))
        try:
            key = (id(model), method, _describe(tuple(args)), _describe(dict(kwargs)), parts)
            hash(key)
        except TypeError:  # an unhashable plain value somewhere
            return None
        return key

    def get(self, key: Any, model: Any) -> Callable[..., torch.Tensor] | None:
        entry = self._traces.get(key)
        if entry is None or entry[0] is not model:  # an id reused by another function
            self.misses += 1
            return None
        self._traces.move_to_end(key)
        self.hits += 1
        return entry[1]

    def seen(self, key: Any, model: Any) -> bool:
        """Whether ``key`` was met before (and remember it now)."""
        before = self._seen.get(key) is model or key in self._traces
        self._seen[key] = model
        self._seen.move_to_end(key)
        while len(self._seen) > 4 * self.maxsize:
            self._seen.popitem(last=False)
        return before

    def put(self, key: Any, model: Any, fn: Callable[..., torch.Tensor]) -> None:
        self._traces[key] = (model, fn)
        self._traces.move_to_end(key)
        while len(self._traces) > self.maxsize:
            self._traces.popitem(last=False)

    def drop(self, key: Any) -> None:
        self._traces.pop(key, None)

    def clear(self) -> None:
        self._traces.clear()
        self._seen.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._traces)


#: the process's cache of traced objectives (:func:`pyro_mle.fit` uses it)
TRACE_CACHE = TraceCache()


def clear_trace_cache() -> None:
    """Forget every traced objective (and every program seen once) of this process."""
    TRACE_CACHE.clear()

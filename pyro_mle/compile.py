"""Trace-and-verify compilation of an objective: :func:`torch.jit.trace` of a function of the
parameters, kept only if it computes what the program computes.

A traced program replays the operations it recorded; a program whose Python decisions depend on
parameter values (``if float(w) > 0``) or that gathers data through NumPy records one branch,
one minibatch. So a trace is accepted only after it reproduces the interpreted loss and
gradient under two random states, and the caller checks it again at the estimate
(:func:`agrees`)."""

from __future__ import annotations

import warnings
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


def close(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> bool:
    """Equal to rounding: relative 1e-9 in float64, 1e-4 in float32, scaled by the largest entry."""
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            return False
        rtol = 1e-9 if a.dtype == torch.float64 else 1e-4
        atol = rtol * max(float(a.abs().max()) if a.numel() else 0.0, 1.0)
        if not torch.allclose(a, b.to(a.dtype), rtol=rtol, atol=atol, equal_nan=True):
            return False
    return True


def trace_objective(
    objective: Callable[[], torch.Tensor], params: list[torch.Tensor]
) -> tuple[Callable[..., torch.Tensor] | None, str]:
    """Trace ``objective`` (which reads ``params`` itself) as a TorchScript function of ``params``.

    Returns ``(compiled, "")`` when the trace reproduces the interpreted loss and gradient at
    the current values under two random states (the same state for both, so a subsampling
    plate draws the same minibatch in each), else ``(None, why)``. The caller's random state is
    left as it was.
    """
    if not hasattr(torch.jit, "trace"):
        return None, "this torch has no torch.jit.trace"
    inputs = tuple(params)
    cuda = cuda_devices(params)

    def traced_fn(*values: torch.Tensor) -> torch.Tensor:
        return objective()  # reads the parameters (the traced inputs) itself

    def loss_and_grads(fn: Callable[..., torch.Tensor], state: Any) -> tuple[torch.Tensor, ...]:
        set_rng_state(state, cuda)
        loss = fn(*inputs)
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        return (loss.detach(),) + tuple(torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads))

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
    if not all(close(a, b) for a, b in got):
        return None, "the trace does not reproduce the program's loss and gradient"
    return traced, ""


def agrees(
    objective: Callable[[], torch.Tensor], compiled: Callable[..., torch.Tensor], params: list[torch.Tensor]
) -> bool:
    """Whether the compiled objective gives the program's loss at the current values, under the
    same random state (the caller's state is left as it was)."""
    cuda = cuda_devices(params)
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        state = get_rng_state(cuda)
        expected = objective()
        set_rng_state(state, cuda)
        got = compiled(*params)
    return close((expected,), (got,))

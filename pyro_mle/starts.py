"""Where a point fit starts, and whether every fitted quantity can move from there.

* :func:`check_reaches_loss`: a parameter with no gradient path to the loss cannot be fitted
  (:class:`~pyro_mle.results.UnusedParameterError` names it and the fix).
* :func:`break_symmetry`: the default start (zero in the unconstrained space) is a symmetric
  saddle for a network's weights written as latent sites; those get a random step.
* :class:`ModuleStarts`: a network's fit starts from its weights before its first fit, so the
  same call gives the same answer.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from . import existence
from .evaluation import Collective
from .objective import PointObjective
from .results import UnusedParameterError


def check_reaches_loss(
    obj: PointObjective, method: str, caller: str, collective: Collective | None = None
) -> list[bool]:
    """Raise :class:`UnusedParameterError` for parameters with no gradient path to the loss;
    return, per parameter, whether its gradient at the start is exactly zero. In a data-parallel
    fit both are decided over all processes (a parameter may be unused in one shard only), so
    every process takes the same decision."""
    try:
        loss, _ = obj()
        failed = False
    except (ValueError, RuntimeError):
        failed = True  # the run reports a program that cannot be evaluated
    if failed:
        grads: tuple = (None,) * len(obj.params)
    elif loss.requires_grad:
        grads = torch.autograd.grad(loss, obj.params, allow_unused=True)
    else:
        grads = (None,) * len(obj.params)
    missing = [g is None for g in grads]
    nonzero = [g is not None and bool(g.any()) for g in grads]
    if collective is not None:
        flags = torch.tensor([float(failed)] + [float(not m) for m in missing] + [float(z) for z in nonzero])
        collective.sum_(flags)
        failed = bool(flags[0] > 0)
        k = len(obj.params)
        missing = [bool(f == 0) for f in flags[1 : 1 + k]]
        nonzero = [bool(f > 0) for f in flags[1 + k :]]
    if failed:
        return [False] * len(obj.params)
    unused = [n for n, m in zip(obj.names, missing) if m]
    if unused:
        names = tuple(existence.display_name(n) for n in unused)
        message = existence.unused_message(unused, method, obj.structure.latent).replace(
            "fit(model)", f"{caller}(model)"
        )
        raise UnusedParameterError(message, names)
    return [not z for z in nonzero]


def break_symmetry(obj: PointObjective, zero: list[bool], collective: Collective | None) -> bool:
    """Move latent sites whose gradient is exactly zero at the default start off it.

    The default start is zero in the unconstrained space; for the weights of a network written
    as latent sites that is a symmetric saddle (every hidden unit the same, every gradient
    zero) that a gradient method never leaves. Those sites get a small random step instead,
    uniform in ±2 in the unconstrained space (the radius of Pyro's ``init_to_uniform``), from the
    fit's own seeded stream. Starts the user chose (``init_loc_fn``,
    ``pyro.param`` values) are never moved.
    """
    moved = False
    # (every process of a data-parallel fit has the same flags and the same seeded stream for
    # this draw; process 0's values are broadcast anyway)
    with torch.no_grad():
        for name, p, z in zip(obj.names, obj.params, zero):
            if z and name.startswith("AutoDelta."):
                p.add_(torch.empty_like(p).uniform_(-2.0, 2.0))
                moved = True
    if moved and collective is not None:
        collective.broadcast(obj.params)
    return moved


class ModuleStarts:
    """Where each network's fit starts: its weights as they were before its first fit.

    ``pyro.module`` and :class:`~pyro.nn.PyroModule` weights are trained in place (that is how
    Pyro's modules work, and users read the estimate from the network). Without this the next
    identical call would start from the last estimate and give another answer, and
    ``compare`` would depend on the order of its methods. A weight tensor that still holds the
    estimate a fit left in it is reset to its start; one the user has changed since is used as
    it is. Entries die with their tensors (weak references).
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, torch.Tensor, torch.Tensor]] = {}

    def begin(self, params: list[torch.Tensor]) -> StartsOfFit:
        starts = []
        before = [p.detach().clone() for p in params]
        grads = [p.grad for p in params]
        with torch.no_grad():
            for p in params:
                entry = self._entries.get(id(p))
                if entry is not None and entry[0]() is p and p.shape == entry[2].shape and torch.equal(p, entry[2]):
                    p.copy_(entry[1])
                    starts.append(entry[1])
                else:
                    starts.append(p.detach().clone())
        return StartsOfFit(self, params, starts, before, grads)


@dataclass
class StartsOfFit:
    """The starts of one fit's tensors, and their values and ``.grad`` before it, so that a fit
    that ends without a result (an error in the program) leaves them as it found them."""

    registry: ModuleStarts
    params: list[torch.Tensor]
    starts: list[torch.Tensor]
    before: list[torch.Tensor]
    grads: list[torch.Tensor | None]

    def abandon(self) -> None:
        """Put every tensor back as it was before the fit (no estimate was made)."""
        with torch.no_grad():
            for p, value in zip(self.params, self.before):
                p.copy_(value)
        self.release_grads()

    def release_grads(self) -> None:
        """Give each tensor back the ``.grad`` it had before the fit (usually none): the fit's
        last gradient must not add into the caller's next ``backward()``."""
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def finish(self) -> None:
        """Remember the estimate left in each tensor (only tensors that outlive the fit's scope
        matter: module weights; the rest die with it)."""
        entries = self.registry._entries
        for p, start in zip(self.params, self.starts):
            key = id(p)

            def forget(ref: weakref.ref, key: int = key) -> None:
                if key in entries and entries[key][0] is ref:
                    del entries[key]

            entries[key] = (weakref.ref(p, forget), start, p.detach().clone())
        self.release_grads()


#: The registry every fit uses.
MODULE_STARTS = ModuleStarts()

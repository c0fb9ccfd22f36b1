"""Loss certificates: for every likelihood head, the NLL computed from its Pyro distribution
against its classical loss written out by hand, on simulated data.

A certificate is the claim "this loss *is* that negative log-likelihood" checked numerically:
the largest difference over ``n`` simulated examples, in float64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyro
import torch

from . import tables
from .likelihoods import Likelihood
from .likelihoods.base import example_heads


@dataclass(frozen=True)
class Certificate:
    """One row of the certificate table.

    Fields:
      * ``head``: the likelihood head, as its repr (``"Normal(scale=0.3)"``).
      * ``loss_name``: the classical loss it equals.
      * ``num_outputs``: channels the network predicts (``None``: K, read from the outputs).
      * ``n``: simulated examples.
      * ``mean_nll``: mean negative log-likelihood per example (nats).
      * ``max_abs_diff``: largest |NLL − classical loss| over the examples.
      * ``max_rel_diff``: the same divided by max(1, |classical loss|).
    """

    head: str
    loss_name: str
    num_outputs: int | None
    n: int
    mean_nll: float
    max_abs_diff: float
    max_rel_diff: float

    def as_dict(self) -> dict:
        return asdict(self)


def certify(head: Likelihood, n: int = 1000, seed: int = 0) -> Certificate:
    """Simulate raw outputs ~ N(0, 1) and targets from the head's own distribution, and
    compare :meth:`~Likelihood.nll` with :meth:`~Likelihood.classical_loss` in float64."""
    g = torch.Generator().manual_seed(seed)
    channels = head.num_outputs or 4
    outputs = torch.randn(n, channels, generator=g, dtype=torch.float64)
    pyro.set_rng_seed(seed)
    y = head.distribution(outputs).sample()
    nll = head.nll(outputs, y)
    classical = head.classical_loss(outputs, y)
    diff = (nll - classical).abs()
    return Certificate(
        head=repr(head),
        loss_name=head.loss_name,
        num_outputs=head.num_outputs,
        n=n,
        mean_nll=float(nll.mean()),
        max_abs_diff=float(diff.max()),
        max_rel_diff=float((diff / classical.abs().clamp(min=1.0)).max()),
    )


def certificate_table(n: int = 1000, seed: int = 0) -> list[Certificate]:
    """A certificate for every example head of every registered family."""
    return [certify(h, n=n, seed=seed) for h in example_heads()]


def format_table(rows: list[Certificate]) -> str:
    """The certificates as an aligned text table."""
    header = ("likelihood head", "classical loss", "outputs", "mean NLL", "max |NLL - loss|")
    body = [
        (
            r.head,
            r.loss_name,
            "K" if r.num_outputs is None else str(r.num_outputs),
            f"{r.mean_nll:.4f}",
            f"{r.max_abs_diff:.1e}",
        )
        for r in rows
    ]
    return tables.format_table(header, body)

"""Link functions: how a network's unconstrained outputs become distribution parameters.

A link maps a raw output ``f`` (any real number) onto a parameter's domain. Each link is a
small immutable object with the forward map, its inverse (useful to initialise a network at
a chosen parameter value), and the constraint its values satisfy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributions import constraints


@dataclass(frozen=True)
class Link:
    """A named map from raw outputs to a parameter domain.

    Fields:
      * ``name``: short name shown in tables (``"softplus"``).
      * ``forward``: raw outputs → parameter.
      * ``inverse``: parameter → raw outputs.
      * ``codomain``: :mod:`torch.distributions.constraints` object the parameter satisfies.
      * ``event_dim``: 1 when the link acts on a whole vector (softmax, Cholesky), else 0.
    """

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]
    codomain: constraints.Constraint
    event_dim: int = 0

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return self.forward(raw)

    def __repr__(self) -> str:
        return self.name


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    # log(expm1(y)) written as y + log(-expm1(-y)) stays finite for large y.
    return y + torch.log(-torch.expm1(-y))


#: parameter = raw output (means, logits).
identity = Link("identity", lambda f: f, lambda y: y, constraints.real)

#: parameter = log(1 + exp(f)). Used for scales and concentrations: unlike ``exp`` it grows
#: linearly, so a large raw output cannot overflow the parameter or explode gradients.
softplus = Link("softplus", F.softplus, _softplus_inverse, constraints.positive)

#: parameter = exp(f): the canonical log link of Poisson/Exponential GLMs, where
#: ``rate·y − log rate`` is convex in ``f``.
exp = Link("exp", torch.exp, torch.log, constraints.positive)

#: The parameter *is* the logits; the distribution is built from logits directly, never
#: from ``sigmoid(f)``, because ``log(sigmoid(f))`` underflows for f ≪ 0 while
#: ``-softplus(-f)`` does not.
logits = Link("logits", lambda f: f, lambda y: y, constraints.real)

#: Vector of logits → normalised log-probabilities (log-softmax, never log of softmax).
log_softmax = Link(
    "log_softmax",
    lambda f: torch.log_softmax(f, dim=-1),
    lambda y: y,
    constraints.real_vector,
    event_dim=1,
)


def _tan_half(f: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.atan(f)


def _tan_half_inverse(theta: torch.Tensor) -> torch.Tensor:
    return torch.tan(theta / 2.0)


#: Angle = 2·atan(f) ∈ (−π, π): the mean direction is always a wrapped angle, and the map
#: is smooth and one-to-one, unlike taking ``f mod 2π``.
tan_half = Link("tan_half", _tan_half, _tan_half_inverse, constraints.interval(-math.pi, math.pi))


def tril_size(dim: int) -> int:
    """Number of free entries of a ``dim × dim`` lower-triangular matrix."""
    return dim * (dim + 1) // 2


def _vec_to_cholesky(v: torch.Tensor) -> torch.Tensor:
    # Row-major lower triangle; the diagonal goes through softplus so it stays positive.
    m = v.shape[-1]
    dim = int(round((math.sqrt(8 * m + 1) - 1) / 2))
    if tril_size(dim) != m:
        raise ValueError(f"cholesky link: {m} channels is not D(D+1)/2 for any D.")
    rows, cols = torch.tril_indices(dim, dim, device=v.device)
    out = v.new_zeros(v.shape[:-1] + (dim, dim))
    out[..., rows, cols] = v
    diag = torch.diagonal(out, dim1=-2, dim2=-1)
    return out - torch.diag_embed(diag) + torch.diag_embed(F.softplus(diag))


def _cholesky_to_vec(L: torch.Tensor) -> torch.Tensor:
    dim = L.shape[-1]
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    raw = L - torch.diag_embed(diag) + torch.diag_embed(_softplus_inverse(diag))
    rows, cols = torch.tril_indices(dim, dim, device=L.device)
    return raw[..., rows, cols]


#: D(D+1)/2 raw outputs → lower-triangular Cholesky factor with positive diagonal.
cholesky = Link(
    "cholesky",
    _vec_to_cholesky,
    _cholesky_to_vec,
    constraints.lower_cholesky,
    event_dim=1,
)

LINKS = {link.name: link for link in (identity, softplus, exp, logits, log_softmax, tan_half, cholesky)}

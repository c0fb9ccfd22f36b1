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
from pyro.distributions.transforms import OrderedTransform
from torch.distributions import constraints
from torch.distributions.transforms import ExpTransform, SoftplusTransform, Transform


@dataclass(frozen=True)
class Link:
    """A named map from raw outputs to a parameter domain.

    Fields:
      * ``name``: short name shown in tables (``"softplus"``).
      * ``forward``: raw outputs → parameter.
      * ``inverse``: parameter → raw outputs.
      * ``codomain``: :mod:`torch.distributions.constraints` object the parameter satisfies.
      * ``event_dim``: 1 when the link acts on a whole vector (softmax, Cholesky), else 0.
      * ``channels``: raw channels the link consumes when that differs from the parameter's own
        count: ``"2"`` for :data:`atan2` (two channels → one angle); ``None`` otherwise.
    """

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]
    codomain: constraints.Constraint
    event_dim: int = 0
    channels: str | None = None

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return self.forward(raw)

    def __repr__(self) -> str:
        return self.name

    @classmethod
    def from_transform(cls, transform: Transform, name: str | None = None) -> Link:
        """A link made of a :class:`torch.distributions.transforms.Transform` (its forward map,
        its ``inv`` and its ``codomain``), so torch's transforms are reused rather than copied."""
        if not isinstance(transform, Transform):
            raise TypeError(f"Link.from_transform needs a torch Transform; got {type(transform).__name__}.")
        return cls(
            name or type(transform).__name__.removesuffix("Transform").lower(),
            transform,
            transform.inv,
            transform.codomain,
            event_dim=transform.codomain.event_dim,
        )


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    # log(expm1(y)) written as y + log(-expm1(-y)) stays finite for large y (torch's
    # SoftplusTransform.inv is the same formula; the Cholesky link below needs it on a diagonal).
    return y + torch.log(-torch.expm1(-y))


#: parameter = raw output (means, logits).
identity = Link("identity", lambda f: f, lambda y: y, constraints.real)

#: parameter = log(1 + exp(f)). Used for scales and concentrations: unlike ``exp`` it grows
#: linearly, so a large raw output cannot overflow the parameter or explode gradients.
#: torch's ``SoftplusTransform``.
softplus = Link.from_transform(SoftplusTransform(), "softplus")

#: parameter = exp(f): the canonical log link of Poisson/Exponential GLMs, where
#: ``rate·y − log rate`` is convex in ``f``. torch's ``ExpTransform``.
exp = Link.from_transform(ExpTransform(), "exp")

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
#: It cannot follow a mean direction across ±π (f would have to pass through ±∞), so it is no
#: longer the default of :class:`~pyro_mle.likelihoods.VonMises`; it stays available by name.
tan_half = Link("tan_half", _tan_half, _tan_half_inverse, constraints.interval(-math.pi, math.pi))


def _wrap(f: torch.Tensor) -> torch.Tensor:
    return torch.atan2(torch.sin(f), torch.cos(f))


#: Angle = f, reported wrapped to [−π, π] as ``atan2(sin f, cos f)``: the identity on the
#: circle (its derivative is exactly 1), so the raw output *is* the angle and a mean direction
#: moves freely across ±π. The von Mises loss only sees cos(y − f), which is periodic anyway.
angle = Link("angle", _wrap, _wrap, constraints.interval(-math.pi, math.pi))


def _atan2(f: torch.Tensor) -> torch.Tensor:
    return torch.atan2(f[..., 0], f[..., 1])


def _atan2_inverse(theta: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.sin(theta), torch.cos(theta)], dim=-1)


#: Two channels (sin-like, cos-like) → angle ``atan2(f_sin, f_cos)``: the direction of the
#: point (f_cos, f_sin), smooth everywhere except at the origin, and free across ±π. Its length
#: is not identified by the likelihood (any positive multiple gives the same angle).
atan2 = Link("atan2", _atan2, _atan2_inverse, constraints.interval(-math.pi, math.pi), channels="2")

#: K−1 raw outputs → strictly increasing cut points (c₁ = f₁, c_k = c_{k−1} + exp(f_k)):
#: pyro's ``OrderedTransform``, so the ordering is enforced by the parameterisation itself.
ordered = Link.from_transform(OrderedTransform(), "ordered")


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

LINKS = {
    link.name: link
    for link in (identity, softplus, exp, logits, log_softmax, tan_half, angle, atan2, ordered, cholesky)
}


def get(spec: str | Link | Transform) -> Link:
    """A link from its registered name (``"exp"``), a :class:`Link`, or a torch
    :class:`~torch.distributions.transforms.Transform` (wrapped with :meth:`Link.from_transform`)."""
    if isinstance(spec, Link):
        return spec
    if isinstance(spec, Transform):
        return Link.from_transform(spec)
    if isinstance(spec, str):
        try:
            return LINKS[spec]
        except KeyError:
            raise KeyError(f"no link named {spec!r}; valid names are {sorted(LINKS)}.") from None
    raise TypeError(
        f"a link must be a name from {sorted(LINKS)}, a pyro_mle Link or a torch Transform; got {type(spec).__name__}."
    )

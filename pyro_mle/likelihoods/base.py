"""The likelihood head: raw network outputs → distribution → ``pyro.sample(obs=y)``.

A family declares its contract as data (:class:`Param` entries: name, link, channels) and
builds a :mod:`pyro.distributions` object; it never reimplements the density. The one
exception is :meth:`Likelihood.classical_loss`, the textbook loss written out by hand so it
can certify that the negative log-likelihood *is* that loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import pyro
import torch
from pyro.poutine.runtime import get_plates
from torch.distributions import constraints

from .._validation import as_tensor, check_finite, describe_rows, reduce_event, validation_enabled
from . import links as _links
from .links import Link, tril_size

_REGISTRY: dict[str, type[Likelihood]] = {}


@dataclass(frozen=True)
class Param:
    """One parameter of a family.

    Fields:
      * ``name``: keyword of the matching :mod:`torch.distributions` class (``"scale"``).
      * ``link``: :class:`~pyro_mle.likelihoods.links.Link` from raw outputs to the parameter.
      * ``channels``: how many output channels it takes: ``"1"``, ``"K"`` (one per class or
        mixture component), ``"D"`` (one per output dimension) or ``"tril"`` (D(D+1)/2).
      * ``doc``: one line for tables and error messages.
    """

    name: str
    link: Link
    channels: str = "1"
    doc: str = ""


class Likelihood:
    """Base class of likelihood heads.

    A subclass is a family: it sets the class attributes below and implements
    :meth:`_distribution` (build the Pyro distribution from constrained parameters) and
    :meth:`_classical` (the textbook loss, per example, written without
    :mod:`torch.distributions`). Passing ``name=`` in the class statement registers it::

        class Normal(Likelihood, name="normal"):
            params = (Param("loc", links.identity), Param("scale", links.softplus))
            ...

    Fixed parameters are given to the constructor as keywords named after the parameter
    (``Normal(scale=0.3)``); a fixed value may be a number or a tensor, for example a latent
    site the model sampled. Every parameter not fixed is predicted: the network supplies its
    raw outputs, concatenated along the last dimension in declaration order.

    ``links=`` replaces the default link of predicted parameters, by parameter name: a
    registered name (``Normal(links={"scale": "exp"})``), a
    :class:`~pyro_mle.likelihoods.links.Link`, or a torch
    :class:`~torch.distributions.transforms.Transform`.
    """

    name: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]
    #: Name of the classical loss the NLL equals (``"least squares"``).
    loss_name: str
    #: 0 for scalar targets, 1 when one example is a vector (multivariate, rankings).
    event_dim: ClassVar[int] = 0
    #: Constraint on observed values, and how to say it and fix it in an error message.
    support: ClassVar[constraints.Constraint] = constraints.real
    support_text: ClassVar[str] = "real numbers"
    support_fix: ClassVar[str] = ""
    #: Constructor keywords of typical heads of this family, shown by ``pyro-mle list`` and
    #: used by the loss-certificate table.
    examples: ClassVar[tuple[dict, ...]] = ({},)
    #: Constructor arguments other than fixed parameters, as (keyword, attribute), for repr.
    _options: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init_subclass__(cls, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"likelihood name {name!r} is already taken by {_REGISTRY[name]}")
            cls.name = name
            _REGISTRY[name] = cls

    def __init__(self, links: Mapping[str, str | Link | object] | None = None, **fixed: float | torch.Tensor) -> None:
        self._links = self._resolve_links(links or {})
        names = [p.name for p in self.param_specs]
        unknown = sorted(set(fixed) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} likelihood has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are {names}."
            )
        checked = {}
        for p in self.param_specs:
            if p.name in fixed and fixed[p.name] is not None:
                checked[p.name] = self._check_fixed(p, fixed[p.name])
        self.fixed: Mapping[str, torch.Tensor | float] = MappingProxyType(checked)
        # fixed values given as numbers/lists follow the outputs' dtype; users' tensors do not
        self._converted = frozenset(k for k in checked if not isinstance(fixed[k], torch.Tensor))
        self.predicted: tuple[str, ...] = tuple(p.name for p in self.param_specs if p.name not in checked)
        if not self.predicted:
            raise ValueError(
                f"{type(self).__name__} likelihood: every parameter is fixed, so there is nothing for "
                f"a network to predict. Leave at least one of {names} out of the constructor."
            )

    # ------------------------------------------------------------------ contract
    def _declared_specs(self) -> tuple[Param, ...]:
        """The family's parameters with their default links (a family may choose them per
        instance)."""
        return self.params

    @property
    def param_specs(self) -> tuple[Param, ...]:
        """The parameters of this head, with the links chosen by ``links=``."""
        specs = self._declared_specs()
        chosen = getattr(self, "_links", None)
        if not chosen:
            return specs
        return tuple(
            replace(p, link=chosen[p.name], channels=chosen[p.name].channels or p.channels) if p.name in chosen else p
            for p in specs
        )

    def _resolve_links(self, chosen: Mapping[str, object]) -> dict[str, Link]:
        if not isinstance(chosen, Mapping):
            raise TypeError(
                f"{self._label}: links must be a dict of parameter name → link; got {type(chosen).__name__}. "
                'Example: links={"scale": "exp"}.'
            )
        declared = {p.name: p for p in self._declared_specs()}
        unknown = sorted(set(chosen) - set(declared))
        if unknown:
            raise TypeError(
                f"{self._label}: links= names no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are {list(declared)}."
            )
        out = {}
        for name, spec in chosen.items():
            try:
                link = _links.get(spec)
            except (KeyError, TypeError) as e:
                raise type(e)(f"{self._label}: link for {name!r}: {e.args[0]}") from None
            default = declared[name].link
            if link.event_dim != default.event_dim:
                raise ValueError(
                    f"{self._label}: link {link.name!r} for {name!r} acts on "
                    f"{'vectors' if link.event_dim else 'single values'}, but {name!r} needs a link that acts on "
                    f"{'vectors' if default.event_dim else 'single values'} like its default {default.name!r}."
                )
            out[name] = link
        return out

    def _size(self, token: str) -> int | None:
        """Number of channels for a ``Param.channels`` token; ``None`` when inferred."""
        if token == "1":
            return 1
        if token == "2":
            return 2
        if token == "K-1":
            k = getattr(self, "num_components", None)
            return None if k is None else k - 1
        if token == "K":
            return getattr(self, "num_components", None)
        if token == "D":
            return getattr(self, "dim", None)
        if token == "tril":
            dim = getattr(self, "dim", None)
            return None if dim is None else tril_size(dim)
        raise ValueError(f"unknown channel token {token!r}")

    @property
    def channels(self) -> dict[str, int | None]:
        """Predicted parameter → number of output channels (``None``: inferred)."""
        return {p.name: self._size(p.channels) for p in self.param_specs if p.name in self.predicted}

    @property
    def num_outputs(self) -> int | None:
        """Channels the network must produce in the last dimension (``None``: any number ≥ 2,
        inferred from the outputs, as for ``Categorical()``)."""
        sizes = list(self.channels.values())
        return None if None in sizes else sum(sizes)

    def __repr__(self) -> str:
        args = [f"{k}={getattr(self, a)!r}" for k, a in self._options if getattr(self, a) is not None]
        args += [f"{k}={_short(v)}" for k, v in self.fixed.items()]
        if getattr(self, "_links", None):
            args.append("links={" + ", ".join(f"{k!r}: {v.name!r}" for k, v in self._links.items()) + "}")
        return f"{type(self).__name__}({', '.join(args)})"

    # ------------------------------------------------------------------ checks
    @property
    def _label(self) -> str:
        return f"{type(self).__name__} likelihood"

    def _check_fixed(self, p: Param, value: object) -> torch.Tensor | float:
        """A fixed value, checked. Numbers, lists and arrays are kept in float64 and cast to
        the outputs' dtype when used; a user's tensor (a latent site, say) is used as is."""
        what = f"{self._label}: fixed {p.name}"
        t = value if isinstance(value, torch.Tensor) else as_tensor(what, value, torch.float64)
        if not t.dtype.is_floating_point:
            t = t.to(torch.get_default_dtype())
        self._check_fixed_length(p, t, what)
        # value checks follow pyro_mle.validation, like the outputs' and y's: a head built inside
        # torch.func.vmap (the pointwise log-likelihood's vmap tier) cannot branch on values
        if validation_enabled():
            check_finite(what, t.detach(), p.link.event_dim, "Pass finite values.")
        ok = p.link.codomain.check(t.detach()) if validation_enabled() else True
        if not bool(torch.as_tensor(ok).all()):
            raise ValueError(
                f"{what} must satisfy {p.link.codomain} ({p.doc or p.link.name}); got {t.detach().tolist()}."
            )
        if isinstance(value, torch.Tensor):
            return t
        return float(t) if t.dim() == 0 else t

    def _check_fixed_length(self, p: Param, t: torch.Tensor, what: str) -> None:
        """A fixed vector has the head's length, checked when the head is built: with
        ``MultivariateNormal(dim=2, scale=[1, 1, 1])`` the mismatch would otherwise surface as a
        bare size error at the first call. One value (a scalar or a length-1 last dimension) is
        shared by every output or component."""
        size = None if p.channels in ("1", "2") else self._size(p.channels)
        if size is None:  # one value per example, or K read from the outputs: known only then
            return
        keyword = self._size_keyword(p.channels)
        if p.channels == "tril":
            if t.dim() < 2 or tuple(t.shape[-2:]) != (self.dim, self.dim):
                raise ValueError(
                    f"{what} must be a {self.dim}×{self.dim} lower-triangular matrix ({keyword}={self.dim}); "
                    f"got shape {tuple(t.shape)}. Give a ({self.dim}, {self.dim}) Cholesky factor"
                    + (f", or set {keyword}={t.shape[-1]}." if t.dim() >= 2 and t.shape[-1] == t.shape[-2] else ".")
                )
            return
        if t.dim() >= 1 and t.shape[-1] not in (1, size):
            one = {"D": "output dimension", "K": "component"}.get(p.channels, "channel")
            raise ValueError(
                f"{what} has length {t.shape[-1]} (shape {tuple(t.shape)}), but the head has {keyword}={size}: "
                f"it needs one value per {one} ({size}), or a single value shared by all. Give {size} values, "
                f"or set {keyword}={t.shape[-1]}."
            )

    def _size_keyword(self, token: str) -> str:
        """The constructor keyword that sets the size of a channel token (``"dim"``, ``"num_components"``)."""
        if token in ("D", "tril"):
            return "dim"
        return next((k for k, a in self._options if a == "num_components"), "num_components")

    def _outputs(self, outputs: torch.Tensor, y_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Outputs as a float tensor with an explicit channel dimension, checked.

        A one-channel head also takes outputs without the channel dimension. When ``y`` is
        given, outputs whose trailing dims equal y's shape are read that way (leading dims
        then index draws); without ``y``, any last dimension other than 1 is read as a batch
        dimension, so ``(N,)`` and vectorised ``(S, N)`` outputs both work.
        """
        what = f"{self._label}: network outputs"
        if not isinstance(outputs, torch.Tensor):
            outputs = as_tensor(what, outputs, torch.get_default_dtype())
        if not outputs.dtype.is_floating_point:
            raise TypeError(f"{what} must be floating point; got {outputs.dtype}. Cast with .float().")
        n = self.num_outputs
        if n == 1 and self.event_dim == 0 and (outputs.dim() <= 1 or outputs.shape[-1] != 1):
            if outputs.dim() <= 1:  # (N,), or a single example (1,) unless y is a scalar
                flat = outputs.dim() == 0 or outputs.shape[0] != 1 or y_shape != ()
            else:
                flat = y_shape is None or (
                    0 < len(y_shape) <= outputs.dim() and outputs.shape[outputs.dim() - len(y_shape) :] == y_shape
                )
            if flat:
                outputs = outputs.unsqueeze(-1)
        if outputs.dim() == 0:
            raise ValueError(f"{what} must have a channel dimension; got a scalar.")
        c = outputs.shape[-1]
        if n is not None and c != n:
            raise ValueError(
                f"{what} have {c} channels in the last dimension (shape {tuple(outputs.shape)}), but "
                f"{self!r} needs {n}: {self._channel_text()}. Change the network's output layer to "
                f"{n} units, or fix parameters you do not want predicted."
            )
        if n is None and c < 2:
            raise ValueError(
                f"{what} need at least 2 channels (one per class) in the last dimension; got shape "
                f"{tuple(outputs.shape)}. For two classes use 2 logits here, or Bernoulli with 1 logit."
            )
        if validation_enabled():
            check_finite(what, outputs.detach(), 1, "Check the network and inputs for NaN/inf (a diverged fit?).")
        return outputs

    def _channel_text(self) -> str:
        return ", ".join(f"{k} ({v if v is not None else 'K'})" for k, v in self.channels.items())

    def _check_y(
        self,
        y: object,
        batch_shape: torch.Size,
        event_shape: torch.Size,
        dtype: torch.dtype,
        params: dict[str, torch.Tensor],
        site: str,
    ) -> torch.Tensor:
        what = f"{self._label} {site!r}: observed values"
        y = as_tensor(what, y, dtype)
        ev = self.event_dim
        if y.dim() < ev or tuple(y.shape[y.dim() - ev :]) != tuple(event_shape):
            raise ValueError(
                f"{what} have shape {tuple(y.shape)}, but one example is an event of shape "
                f"{tuple(event_shape)}. Give y as (N, {', '.join(map(str, event_shape))})."
            )
        yb = tuple(y.shape[: y.dim() - ev])
        nb = len(yb)
        if (
            (nb == 0 and len(batch_shape) > 0)
            or nb > len(batch_shape)
            or tuple(batch_shape[len(batch_shape) - nb :]) != yb
        ):
            raise ValueError(
                f"{what} have batch shape {yb} but the outputs give one distribution per example with "
                f"batch shape {tuple(batch_shape)}; they must match exactly (no broadcasting)."
                + (
                    self._y_shape_hint(y, yb, tuple(batch_shape), params)
                    or _shape_hint(tuple(y.shape), yb, tuple(batch_shape))
                )
            )
        if validation_enabled():
            check_finite(what, y, ev, "Drop or impute the rows with NaN/inf before fitting.")
            self._check_support(y, params, what)
        return y

    def _refuse_no_rows(self, outputs: object, site: str) -> None:
        """An empty data set is refused before anything is built from it: ``pyro.plate`` of size 0
        fails with a bare ``ZeroDivisionError``, and torch's argument checks with a reshape error."""
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else np.shape(outputs)
        if 0 in shape[:-1] or shape == (0,):
            raise ValueError(
                f"{self._label} {site!r}: no data rows: the outputs have shape {shape}, 0 examples. "
                "Pass at least one example (an empty data file, or a filter that kept no rows?)."
            )

    def _y_shape_hint(
        self, y: torch.Tensor, yb: tuple[int, ...], batch: tuple[int, ...], params: dict[str, torch.Tensor]
    ) -> str | None:
        """The fix for a y whose batch shape differs from the outputs', when this family can
        tell the cause (``None``: the generic hints of :func:`_shape_hint`). Here: outputs read
        as a single example, their last dimension as its channels, against y with many."""
        if batch or not yb or self.num_outputs == 1:
            return None
        channels = self.num_outputs or "channels"
        return (
            f" The outputs give one example, their last dimension read as its channels, while y holds {yb[0]} "
            f"examples: give outputs of shape ({yb[0]}, {channels}), one row per example."
        )

    def _support(self, params: dict[str, torch.Tensor]) -> constraints.Constraint:
        return self.support

    def _support_text(self, params: dict[str, torch.Tensor]) -> str:
        return self.support_text

    def _check_support(self, y: torch.Tensor, params: dict[str, torch.Tensor], what: str) -> None:
        bad = ~self._support(params).check(y)
        bad = reduce_event(bad, bad.dim() - (y.dim() - self.event_dim))
        if not bool(bad.any()):
            return
        if bad.dim() == 0:  # a single example: show it as row 0
            bad, y = bad.reshape(1), y.unsqueeze(0)
        raise ValueError(
            f"{what} must be {self._support_text(params)}; got {describe_rows(bad, y)}. {self.support_fix}".rstrip()
        )

    # ------------------------------------------------------------------ public API
    def parameters(self, outputs: torch.Tensor, _y_shape: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
        """Constrained parameters: links applied to the predicted channels, plus fixed ones."""
        outputs = self._outputs(outputs, _y_shape)
        sizes = self.channels
        if None in sizes.values():  # the single inferred-size parameter takes every channel
            sizes = {k: outputs.shape[-1] for k in sizes}
        # one predicted parameter takes the outputs whole: a split would cost a concatenation of
        # the full gradient in the backward pass for nothing
        raw = (outputs,) if len(sizes) == 1 else torch.split(outputs, list(sizes.values()), dim=-1)
        out: dict[str, torch.Tensor] = {}
        raw_by_name = dict(zip(sizes, raw))
        for p in self.param_specs:
            if p.name in raw_by_name:
                r = raw_by_name[p.name]
                if p.channels == "1":
                    r = r.squeeze(-1)
                out[p.name] = p.link(r)
            else:
                v = self.fixed[p.name]
                if p.name in self._converted:
                    v = torch.as_tensor(v, dtype=outputs.dtype, device=outputs.device)
                else:
                    self._check_fixed_shape(p, v, tuple(outputs.shape[:-1]))
                out[p.name] = v
        return out

    def _check_fixed_shape(self, p: Param, v: torch.Tensor, batch: tuple[int, ...]) -> None:
        """A fixed tensor must broadcast *into* the outputs' batch shape, never enlarge it:
        a ``(N, 1)`` scale against ``(N,)`` outputs would make an N×N table of examples."""
        vector_dims = {"1": 0, "2": 0, "K": 1, "K-1": 1, "D": 1, "tril": 2}[p.channels]
        own = tuple(v.shape[: max(v.dim() - vector_dims, 0)])
        try:
            joint = tuple(torch.broadcast_shapes(own, batch))
        except RuntimeError:
            joint = None
        if joint != batch:
            outcome = "fail" if joint is None else f"enlarge the batch to {joint}"
            raise ValueError(
                f"{self._label}: fixed {p.name} has shape {tuple(v.shape)}, which does not fit the outputs' "
                f"batch shape {batch}; broadcasting would {outcome}. Give {p.name} one value per example "
                f"(shape {batch}) or a single value."
            )

    def distribution(self, outputs: torch.Tensor) -> pyro.distributions.Distribution:
        """The Pyro distribution of y given the raw outputs: batch over examples, event over
        outputs for multivariate families."""
        return self._distribution(**self.parameters(outputs))

    def _prepare(self, outputs: torch.Tensor, y: object, site: str):
        self._refuse_no_rows(outputs, site)
        y_shape = tuple(y.shape) if isinstance(y, torch.Tensor) else None
        params = self.parameters(outputs, y_shape)
        d = self._distribution(**params)
        dtype = next(iter(params.values())).dtype if params else torch.get_default_dtype()
        y = self._check_y(y, d.batch_shape, d.event_shape, dtype, params, site)
        return params, d, y

    def __call__(self, name: str, outputs: torch.Tensor, obs: object = None) -> torch.Tensor:
        """``pyro.sample(name, self.distribution(outputs), obs=obs)`` inside a plate over examples.

        The user's plate is used when one is active at ``dim=-1`` (so ``subsample_size`` works);
        otherwise a plate named ``f"{name}_obs"`` over the rightmost batch dimension is opened.
        """
        if obs is None:
            self._refuse_no_rows(outputs, name)
            d = self.distribution(outputs)
        else:
            _, d, obs = self._prepare(outputs, obs, name)
        if not d.batch_shape or any(f.dim == -1 for f in get_plates()):
            return pyro.sample(name, d, obs=obs)
        with pyro.plate(f"{name}_obs", d.batch_shape[-1], dim=-1):
            return pyro.sample(name, d, obs=obs)

    def nll(self, outputs: torch.Tensor, y: object) -> torch.Tensor:
        """Per-example negative log-likelihood ``−log p(y | outputs)``, shape ``(N,)``."""
        _, d, y = self._prepare(outputs, y, "y")
        return -d.log_prob(y)

    def classical_loss(self, outputs: torch.Tensor, y: object) -> torch.Tensor:
        """The family's textbook loss per example, constants included, written by hand.

        Equal to :meth:`nll`; see the family's docstring for the formula.
        """
        params, _, y = self._prepare(outputs, y, "y")
        return self._classical(y, **params)

    # ------------------------------------------------------------------ to implement
    def _distribution(self, **params: torch.Tensor) -> pyro.distributions.Distribution:
        raise NotImplementedError

    def _classical(self, y: torch.Tensor, **params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def one_hot_rows(y: torch.Tensor) -> bool:
    """Whether every row of ``y`` (along the last dimension) is a one-hot vector: all 0 or 1,
    exactly one 1."""
    return bool(((y == 0) | (y == 1)).all()) and bool((y.sum(-1) == 1).all())


def _shape_hint(y_shape: tuple[int, ...], yb: tuple[int, ...], batch: tuple[int, ...]) -> str:
    """The fix for the classic (N,) against (N, 1) mistakes."""
    if len(yb) == len(batch) + 1 and yb[-1] == 1:
        try:
            table = tuple(torch.broadcast_shapes(yb, batch))
        except RuntimeError:
            table = None
        if table is not None:
            return (
                f" y of shape {y_shape} against outputs for {batch} would broadcast to a {table} table: "
                "pass y.squeeze(-1)."
            )
    if len(yb) + 1 == len(batch) and batch[-1] == 1:
        return (
            " The outputs carry a trailing dimension of size 1 that y lacks: pass y.unsqueeze(-1), or give "
            "outputs of shape (N, channels)."
        )
    return " Reshape y to match the outputs."


def _short(v: float | torch.Tensor) -> str:
    if isinstance(v, float):
        return repr(v)
    if v.numel() <= 4:
        return repr(v.detach().tolist())
    return f"tensor{tuple(v.shape)}"


def example_heads() -> list[Likelihood]:
    """One instance per entry of each registered family's ``examples``, in name order."""
    return [get(n)(**kw) for n in names() for kw in get(n).examples]


def get(name: str) -> type[Likelihood]:
    """The likelihood family registered under ``name`` (``"normal"``, ``"bernoulli"``, …)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no likelihood named {name!r}; valid names are {names()}.") from None


def names() -> list[str]:
    """Registered likelihood names, sorted."""
    return sorted(_REGISTRY)

"""Censored and truncated data: wrappers around any head whose distribution has a cdf.

* :class:`Censored`: some targets are only known to lie beyond a bound. A left-censored row
  contributes :math:`\\log F(c)`, a right-censored one :math:`\\log S(c) = \\log(1 - F(c))`, an
  interval-censored one :math:`\\log(F(b) - F(a))`; exact rows keep their density. With a
  Normal this is the **Tobit** loss, with a Weibull, LogNormal or Exponential the **survival**
  loss of right-censored times.
* :class:`Truncated`: targets outside ``[low, high]`` are never recorded, so the density is
  renormalised, :math:`p(y) / (F(\\mathrm{high}) - F(\\mathrm{low}))`.

Families without a cdf (Poisson, StudentT, Beta, …) are refused when the wrapper is built.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

from .base import Likelihood, _short

_NO_SHAPE = torch.Size()

#: per-row censoring codes of :class:`Censored`
EXACT, RIGHT, LEFT, INTERVAL = 0, 1, -1, 2
_CODE_NAMES = {"exact": EXACT, "right": RIGHT, "left": LEFT, "interval": INTERVAL}


def log_cdf(d: torch.distributions.Distribution, v: torch.Tensor) -> torch.Tensor:
    """:math:`\\log F(v)`, in closed forms that keep their precision in the tails where one exists
    (a distribution may bring its own as ``_log_cdf``)."""
    if hasattr(d, "_log_cdf"):
        return d._log_cdf(v)
    if isinstance(d, torch.distributions.Normal):
        return torch.special.log_ndtr((v - d.loc) / d.scale)
    if isinstance(d, torch.distributions.LogNormal):
        return torch.special.log_ndtr((torch.log(v) - d.loc) / d.scale)
    if isinstance(d, torch.distributions.Weibull):
        return torch.log(-torch.expm1(-((v / d.scale) ** d.concentration)))
    if isinstance(d, torch.distributions.Exponential):
        return torch.log(-torch.expm1(-d.rate * v))
    return torch.log(d.cdf(v))


def log_sf(d: torch.distributions.Distribution, v: torch.Tensor) -> torch.Tensor:
    """:math:`\\log S(v) = \\log P(Y > v)`; for Weibull and Exponential exactly
    :math:`-(v/\\lambda)^k` and :math:`-\\lambda v`, where ``log1p(-cdf)`` would round to −inf."""
    if hasattr(d, "_log_sf"):
        return d._log_sf(v)
    if isinstance(d, torch.distributions.Normal):
        return torch.special.log_ndtr(-(v - d.loc) / d.scale)
    if isinstance(d, torch.distributions.LogNormal):
        return torch.special.log_ndtr(-(torch.log(v) - d.loc) / d.scale)
    if isinstance(d, torch.distributions.Weibull):
        return -((v / d.scale) ** d.concentration)
    if isinstance(d, torch.distributions.Exponential):
        return -d.rate * v
    return torch.log1p(-d.cdf(v))


def log_interval(d: torch.distributions.Distribution, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(F(b) - F(a))` for a < b, from the cdf below the median and from the survival
    function above it, so an interval far in either tail keeps its precision (both cdfs round
    to 1 in the upper tail)."""
    lca, lcb, lsa, lsb = log_cdf(d, a), log_cdf(d, b), log_sf(d, a), log_sf(d, b)
    # the differences are clamped below 0 so the branch torch.where does not pick has a finite
    # gradient (a NaN there would leak through where's backward as 0·inf)
    tiny = -1e-300
    via_cdf = lcb + torch.log(-torch.expm1(torch.clamp(lca - lcb, max=tiny)))
    via_sf = lsa + torch.log(-torch.expm1(torch.clamp(lsb - lsa, max=tiny)))
    return torch.where(lca > math.log(0.5), via_sf, via_cdf)


def _num(v) -> float | torch.Tensor:
    return v if isinstance(v, torch.Tensor) else float(v) if isinstance(v, (int, float)) else torch.as_tensor(v)


def _as_data(what: str, value, ref: torch.Tensor) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    if torch.isnan(t).any():
        raise ValueError(f"{what} must not be NaN; got {t.tolist() if t.numel() < 10 else 'NaN entries'}.")
    return t


class CensoredDistribution(TorchDistribution):
    """The distribution of a censored observation: exact rows have the base density, censored
    rows the probability of their interval. ``sample`` draws from the base and, with
    thresholds, clamps to them (the Tobit mechanism); with per-row codes it returns the
    uncensored draws (the censoring mechanism of each row is not modelled)."""

    arg_constraints: dict = {}

    def __init__(self, base, lower=None, upper=None, censoring=None, validate_args=None):
        self.base, self.lower, self.upper, self.censoring = base, lower, upper, censoring
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        grow = (lambda t: None if t is None else t.expand(batch_shape)) if batch_shape else (lambda t: t)
        return CensoredDistribution(
            self.base.expand(batch_shape), grow(self.lower), grow(self.upper), grow(self.censoring)
        )

    def _kinds(self, value):
        if self.censoring is not None:
            return self.censoring, value, self.upper
        codes = torch.zeros_like(value, dtype=torch.long)
        at = value
        if self.lower is not None:
            left = value <= self.lower
            codes = torch.where(left, LEFT, codes)
            at = torch.where(left, self.lower, at)
        if self.upper is not None:
            right = value >= self.upper
            codes = torch.where(right, RIGHT, codes)
            at = torch.where(right, self.upper, at)
        return codes, at, None

    def log_prob(self, value):
        codes, at, high = self._kinds(value)
        lp = self.base.log_prob(value)
        lp = torch.where(codes == LEFT, log_cdf(self.base, at), lp)
        lp = torch.where(codes == RIGHT, log_sf(self.base, at), lp)
        if high is not None and bool((codes == INTERVAL).any()):
            hi = torch.where(codes == INTERVAL, high, at + 1)
            lp = torch.where(codes == INTERVAL, log_interval(self.base, at, hi), lp)
        return lp

    def sample(self, sample_shape=_NO_SHAPE):
        with torch.no_grad():
            x = self.base.sample(sample_shape)
            if self.censoring is None:
                if self.lower is not None:
                    x = torch.maximum(x, self.lower.expand_as(x))
                if self.upper is not None:
                    x = torch.minimum(x, self.upper.expand_as(x))
            return x


class _Wrapper(Likelihood):
    """A head around another head: the same parameters, links and fixed values."""

    event_dim = 0

    def __init__(self, base: Likelihood):
        if not isinstance(base, Likelihood):
            raise TypeError(
                f"{type(self).__name__} wraps a likelihood head, e.g. {type(self).__name__}(Normal(), ...); "
                f"got {type(base).__name__}."
            )
        if base.event_dim != 0:
            raise ValueError(
                f"{type(self).__name__} likelihood: {base!r} observes vectors; censoring and truncation need a "
                "scalar target with a cdf."
            )
        self.base = base
        self.fixed, self.predicted, self._converted = base.fixed, base.predicted, base._converted
        self._links = {}
        self._check_cdf()

    def _check_cdf(self) -> None:
        n = self.base.num_outputs or 2
        d = self.base.distribution(torch.full((1, n), 0.5, dtype=torch.float64))
        try:
            d.cdf(d.sample())
        except NotImplementedError:
            raise TypeError(
                f"{type(self).__name__} likelihood: {self.base!r} has no cdf ({type(d).__name__}.cdf is not "
                "implemented), which censoring and truncation need. Use a family with a cdf: Normal, Laplace, "
                "LogNormal, Weibull, Exponential, Gamma, AsymmetricLaplace."
            ) from None

    def _declared_specs(self):
        return self.base.param_specs

    def __repr__(self) -> str:
        args = [repr(self.base)] + [
            f"{k}={_short(_num(getattr(self, a)))}" for k, a in self._options if getattr(self, a) is not None
        ]
        return f"{type(self).__name__}({', '.join(args)})"

    def _hand_cdf(self, which: str):
        fn = getattr(self.base, f"_classical_log_{which}", None)
        if fn is None:
            raise NotImplementedError(
                f"{type(self).__name__}: {type(self.base).__name__} has no hand-written log {which} for the classical "
                "loss; the NLL itself works (it uses the distribution's cdf)."
            )
        return fn

    @property
    def support(self):
        return self.base.support

    @property
    def support_text(self):
        return self.base.support_text

    @property
    def support_fix(self):
        return self.base.support_fix

    @property
    def examples_base(self):  # pragma: no cover - documentation only
        return self.base


class Censored(_Wrapper, name="censored"):
    r"""Censored observations of any head with a cdf.

    .. math::
        -\log p = -\sum_{\text{exact}}\log f(y_i) - \sum_{\text{left}}\log F(c_i)
        - \sum_{\text{right}}\log S(c_i) - \sum_{\text{interval}}\log\big(F(b_i) - F(a_i)\big)

    Two ways to say which rows are censored:

    * **thresholds** ``lower`` / ``upper`` (numbers or one per row; Tobit, PyMC's
      ``Censored``): a row with :math:`y \le` ``lower`` is left-censored at ``lower``, one with
      :math:`y \ge` ``upper`` right-censored at ``upper``; y must lie in [lower, upper].
    * a per-row indicator ``censoring`` (``0`` exact, ``1`` right: the true value is above y,
      ``-1`` left: below y, ``2`` interval: between y and ``upper`` of that row), as survival
      data record it (``censoring = 1 - event``).

    With ``Normal`` and thresholds this is the **Tobit** loss; with ``Weibull``, ``LogNormal``
    or ``Exponential`` and right-censoring the **survival** (AFT) loss.

    The indicator and per-row bounds are data: with a subsampling plate, build the head inside
    the model from the subsampled rows.

    Usage::

        Censored(Normal(), lower=0.0)("hours", net(x), obs=hours)                # Tobit
        Censored(Weibull(), censoring=1 - event)("time", net(x), obs=time)       # survival
    """

    examples = (
        {"base": {"normal": {"scale": 1.0}}, "lower": -0.5},
        {"base": {"weibull": {"concentration": 1.5}}, "upper": 2.0},
    )
    _options = (("lower", "lower"), ("upper", "upper"), ("censoring", "censoring"))

    def __init__(self, base: Likelihood, lower=None, upper=None, censoring=None):
        if isinstance(base, dict):  # from the registry's examples: {"normal": {...}}
            from .base import get

            ((name, kw),) = base.items()
            base = get(name)(**kw)
        super().__init__(base)
        self.lower, self.upper = lower, upper
        self.censoring = None if censoring is None else self._codes(censoring)
        if self.censoring is None and lower is None and upper is None:
            raise ValueError(
                "Censored likelihood: give lower= and/or upper= (censoring thresholds) or censoring= (a per-row "
                "indicator: 0 exact, 1 right, -1 left, 2 interval); with none of them nothing is censored."
            )
        if self.censoring is not None and lower is not None:
            raise ValueError(
                "Censored likelihood: with a per-row censoring= indicator, y holds each row's bound; lower= is "
                "not used (upper= gives the upper ends of interval-censored rows). Drop lower=."
            )
        if self.censoring is not None and bool((self.censoring == INTERVAL).any()) and upper is None:
            raise ValueError(
                "Censored likelihood: censoring= marks interval rows (code 2) but upper= (their upper ends) is missing."
            )

    @staticmethod
    def _codes(censoring) -> torch.Tensor:
        if isinstance(censoring, (list, tuple)) and censoring and isinstance(censoring[0], str):
            bad = sorted({c for c in censoring if c not in _CODE_NAMES})
            if bad:
                raise ValueError(f"Censored likelihood: censoring labels {bad} unknown; use {sorted(_CODE_NAMES)}.")
            censoring = [_CODE_NAMES[c] for c in censoring]
        t = torch.as_tensor(censoring)
        if t.dtype.is_floating_point and not bool((t == t.round()).all()):
            raise ValueError(f"Censored likelihood: censoring codes must be integers 0, 1, -1, 2; got {t.tolist()}.")
        t = t.long()
        bad = ~((t == EXACT) | (t == RIGHT) | (t == LEFT) | (t == INTERVAL))
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()[:10]
            raise ValueError(
                f"Censored likelihood: censoring codes must be 0 (exact), 1 (right), -1 (left) or 2 (interval); "
                f"got {t[bad].unique().tolist()} at rows {rows}."
            )
        return t

    @property
    def loss_name(self) -> str:
        base = type(self.base).__name__
        if base == "Normal":
            return "Tobit loss (censored Gaussian NLL)"
        return f"censored {base} NLL (survival loss)"

    def _data(self, ref):
        lower = _as_data("Censored likelihood: lower", self.lower, ref)
        upper = _as_data("Censored likelihood: upper", self.upper, ref)
        codes = None if self.censoring is None else self.censoring.to(ref.device)
        return lower, upper, codes

    def _distribution(self, **params):
        d = self.base._distribution(**params)
        ref = next(iter(params.values()))
        lower, upper, codes = self._data(ref)
        if codes is not None and codes.dim() and tuple(codes.shape) != tuple(d.batch_shape[-codes.dim() :]):
            raise ValueError(
                f"Censored likelihood: censoring has shape {tuple(codes.shape)}, but the outputs give batch shape "
                f"{tuple(d.batch_shape)}: give one code per example (subsampling? index it with the plate's rows)."
            )
        return CensoredDistribution(d, lower, upper, codes)

    def _check_support(self, y, params, what):
        # a censoring bound may sit on the edge of the base's support (a left-censored time at 0)
        lower, upper, codes = self._data(y)
        if codes is None:
            outside = torch.zeros_like(y, dtype=torch.bool)
            if lower is not None:
                outside |= y < lower
            if upper is not None:
                outside |= y > upper
            if bool(outside.any()):
                from .._validation import describe_rows

                raise ValueError(
                    f"{what} must lie within the censoring bounds [lower, upper] = [{self.lower}, {self.upper}]; got "
                    f"{describe_rows(outside, y)}. A censored value is recorded at its bound: clip y to the bounds "
                    "(y.clamp(lower, upper)), or check the bounds."
                )
        super()._check_support(y, params, what)

    def _classical(self, y, **params):
        lower, upper, codes = self._data(y)
        if codes is None:
            codes = torch.zeros_like(y, dtype=torch.long)
            if lower is not None:
                codes = torch.where(y <= lower, LEFT, codes)
            if upper is not None:
                codes = torch.where(y >= upper, RIGHT, codes)
        b = self.base
        exact = b._classical(y, **params)
        left = -self._hand_cdf("cdf")(y, **params)
        right = -self._hand_cdf("sf")(y, **params)
        out = torch.where(codes == LEFT, left, torch.where(codes == RIGHT, right, exact))
        if upper is not None and bool((codes == INTERVAL).any()):
            p = torch.exp(self._hand_cdf("cdf")(upper.expand_as(y), **params)) - torch.exp(
                self._hand_cdf("cdf")(y, **params)
            )
            out = torch.where(codes == INTERVAL, -torch.log(p), out)
        return out


class TruncatedDistribution(TorchDistribution):
    """The base renormalised to ``[low, high]``; sampled by the inverse cdf where the base has
    one, else by rejection."""

    arg_constraints: dict = {}

    def __init__(self, base, low=None, high=None, validate_args=None):
        self.base, self.low, self.high = base, low, high
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        lo = -math.inf if self.low is None else self.low
        hi = math.inf if self.high is None else self.high
        return constraints.interval(lo, hi)

    def expand(self, batch_shape, _instance=None):
        return TruncatedDistribution(self.base.expand(torch.Size(batch_shape)), self.low, self.high)

    def _log_mass(self):
        ones = torch.ones(self.batch_shape, dtype=self.base.mean.dtype, device=self.base.mean.device)
        if self.low is None:
            return log_cdf(self.base, self.high * ones)
        if self.high is None:
            return log_sf(self.base, self.low * ones)
        return log_interval(self.base, self.low * ones, self.high * ones)

    def log_prob(self, value):
        return self.base.log_prob(value) - self._log_mass()

    def cdf(self, value):
        lo = 0.0 if self.low is None else self.base.cdf(self.low * torch.ones_like(value))
        return (self.base.cdf(value) - lo) / torch.exp(self._log_mass())

    def sample(self, sample_shape=_NO_SHAPE):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            ones = torch.ones(shape, dtype=self.base.mean.dtype)
            lo = torch.zeros_like(ones) if self.low is None else self.base.cdf(self.low * ones)
            hi = torch.ones_like(ones) if self.high is None else self.base.cdf(self.high * ones)
            u = lo + (hi - lo) * torch.rand_like(ones)
            try:
                return self.base.icdf(u)
            except NotImplementedError:
                pass
            x = self.base.sample(sample_shape)
            for _ in range(1000):
                bad = torch.zeros_like(x, dtype=torch.bool)
                if self.low is not None:
                    bad |= x < self.low
                if self.high is not None:
                    bad |= x > self.high
                if not bool(bad.any()):
                    return x
                x = torch.where(bad, self.base.sample(sample_shape), x)
            raise RuntimeError("TruncatedDistribution.sample: rejection sampling kept missing [low, high].")


class Truncated(_Wrapper, name="truncated"):
    r"""Truncated observations: values outside ``[low, high]`` are never recorded.

    .. math::
        -\log p(y) = -\log f(y) + \log\big(F(\mathrm{high}) - F(\mathrm{low})\big),
        \qquad \mathrm{low} \le y \le \mathrm{high}

    ``low``/``high`` are numbers (``None``: unbounded on that side).

    Usage::

        Truncated(Normal(), low=0.0)("y", net(x), obs=y)      # only y ≥ 0 enters the data
    """

    examples = ({"base": {"normal": {"scale": 1.0}}, "low": -0.5, "high": 2.0},)
    _options = (("low", "low"), ("high", "high"))

    def __init__(self, base: Likelihood, low: float | None = None, high: float | None = None):
        if isinstance(base, dict):
            from .base import get

            ((name, kw),) = base.items()
            base = get(name)(**kw)
        super().__init__(base)
        for k, v in (("low", low), ("high", high)):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"Truncated likelihood: {k} must be a finite number or None; got {v!r}.")
        if low is None and high is None:
            raise ValueError("Truncated likelihood: give low= and/or high=; with neither nothing is truncated.")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"Truncated likelihood: low must be below high; got low={low}, high={high}.")
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)

    @property
    def loss_name(self) -> str:
        return f"truncated {type(self.base).__name__} NLL"

    def _distribution(self, **params):
        return TruncatedDistribution(self.base._distribution(**params), self.low, self.high)

    def _check_support(self, y, params, what):
        outside = torch.zeros_like(y, dtype=torch.bool)
        if self.low is not None:
            outside |= y < self.low
        if self.high is not None:
            outside |= y > self.high
        if bool(outside.any()):
            from .._validation import describe_rows

            raise ValueError(
                f"{what} must lie within the truncation range [{self.low}, {self.high}]; got "
                f"{describe_rows(outside, y)}. Drop those rows, or widen low/high."
            )
        super()._check_support(y, params, what)

    def _classical(self, y, **params):
        b = self.base
        ones = torch.ones_like(y)
        mass = torch.ones_like(y)
        if self.high is not None:
            mass = torch.exp(self._hand_cdf("cdf")(self.high * ones, **params))
        if self.low is not None:
            mass = mass - torch.exp(self._hand_cdf("cdf")(self.low * ones, **params))
        return b._classical(y, **params) + torch.log(mass)


__all__ = ["Censored", "CensoredDistribution", "Truncated", "TruncatedDistribution", "log_cdf", "log_sf"]

"""A reusable pytest suite for likelihood families, ours and yours.

Subclass :class:`LikelihoodTestCase` in a test module, give it one constructor, and pytest
collects the whole suite for your family::

    from pyro_mle.testing import LikelihoodTestCase

    class TestMyFamily(LikelihoodTestCase):
        def make_likelihood(self):
            return MyFamily(scale=0.5)

        # optional: an independent reference density from the raw outputs (scipy.stats)
        def reference_log_prob(self, outputs, y):
            return scipy.stats.norm(outputs[:, 0], 0.5).logpdf(y)

What it checks: NLL equals the hand-written classical loss (values and gradients, float64),
autograd against finite differences, log-prob against the reference, samples against
log-prob, finite NLL and gradients at extreme outputs, the ``pyro.sample`` statement inside
plates (subsampling included), and clear errors for NaN/inf, wrong channel counts, the
``(N,)`` against ``(N, 1)`` shape mismatch, and the values listed in ``bad_observations``.

Requires pytest and scipy (test-only dependencies).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from .likelihoods import Likelihood


class LikelihoodTestCase:
    """Base class of a family's test suite; see the module docstring.

    Class attributes to adjust:
      * ``num_examples``: rows in the test batches.
      * ``output_scale``: standard deviation of the random raw outputs.
      * ``certificate_tol``: tolerance of NLL against the classical loss (absolute, relative
        to ``max(1, |loss|)``).
      * ``reference_rtol``: tolerance of log-prob against :meth:`reference_log_prob`.
      * ``extremes``: raw output values at which NLL and gradients must stay finite (see
        :meth:`extreme_outputs`).
      * ``bad_observations``: ``(value, text)`` pairs; each value put at rows 1 and 3 of a
        valid y must raise a ValueError whose message contains ``text``.
      * ``num_samples``: draws for the sample-against-log-prob check.
    """

    num_examples: ClassVar[int] = 7
    output_scale: ClassVar[float] = 1.0
    certificate_tol: ClassVar[float] = 1e-10
    reference_rtol: ClassVar[float] = 1e-8
    extremes: ClassVar[tuple[float, ...]] = (-30.0, 30.0)
    bad_observations: ClassVar[tuple[tuple[object, str], ...]] = ()
    num_samples: ClassVar[int] = 20000

    # ------------------------------------------------------------ to override
    def make_likelihood(self) -> Likelihood:
        """The likelihood head under test."""
        raise NotImplementedError

    def make_outputs(self, lik: Likelihood, n: int, generator: torch.Generator) -> torch.Tensor:
        """Raw outputs in float64 (default: Normal(0, output_scale) in every channel)."""
        c = lik.num_outputs or 4
        return self.output_scale * torch.randn(n, c, generator=generator, dtype=torch.float64)

    def reference_log_prob(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Log-density from an independent source (scipy.stats, a closed form), given the
        **raw** network outputs ``(N, channels)``: write the links and the channel order out
        yourself (``scale = numpy.logaddexp(0, outputs[:, 1])``), so that a wrong link or a
        swapped channel is caught. ``None`` when no reference exists (the test then skips)."""
        return None

    # ------------------------------------------------------------ helpers
    def _data(self, seed: int = 0, n: int | None = None):
        g = torch.Generator().manual_seed(seed)
        lik = self.make_likelihood()
        out = self.make_outputs(lik, n or self.num_examples, g)
        pyro.set_rng_seed(seed)
        y = lik.distribution(out).sample().to(out.dtype)  # labels too: the library carries them as floats
        return lik, out, y

    @staticmethod
    def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        err = ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()
        assert err <= tol, f"largest relative difference {err:.3g} > {tol:.1g}\n{a}\n{b}"

    # ------------------------------------------------------------ the suite
    def test_nll_shape(self):
        lik, out, y = self._data()
        assert lik.nll(out, y).shape == (self.num_examples,)

    def test_nll_equals_classical_loss(self):
        lik, out, y = self._data()
        self._close(lik.nll(out, y), lik.classical_loss(out, y), self.certificate_tol)

    def test_gradients_equal_classical_loss_gradients(self):
        lik, out, y = self._data()
        a = out.clone().requires_grad_()
        b = out.clone().requires_grad_()
        lik.nll(a, y).sum().backward()
        lik.classical_loss(b, y).sum().backward()
        self._close(a.grad, b.grad, 1e3 * self.certificate_tol)

    def test_autograd_matches_finite_differences(self):
        lik, out, y = self._data(n=3)
        out = out.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda o: lik.nll(o, y), (out,), eps=1e-6, atol=1e-5, rtol=1e-4)

    def test_log_prob_matches_reference(self):
        lik, out, y = self._data()
        ref = self.reference_log_prob(out.numpy(), y.numpy())
        if ref is None:
            pytest.skip(f"{type(self).__name__} gives no reference_log_prob")
        np.testing.assert_allclose(-lik.nll(out, y).detach().numpy(), ref, rtol=self.reference_rtol, atol=1e-12)

    def test_samples_agree_with_log_prob(self):
        lik, out, _ = self._data()
        d = lik.distribution(out[:1])
        pyro.set_rng_seed(1)
        draws = d.sample((self.num_samples,))[:, 0]
        if d.support.is_discrete:
            _check_discrete_frequencies(d, draws)
        elif lik.event_dim == 0:
            _check_continuous_bins(d, draws)
        else:
            _check_stein_identity(d, draws)

    def extreme_outputs(self, out: torch.Tensor) -> list[torch.Tensor]:
        """Raw outputs at which NLL and gradients must stay finite: for each value v in
        ``extremes``, every channel at v, and channels alternating v, −v (so a mean can be
        huge while its scale is tiny, and logits far apart)."""
        sign = torch.ones(out.shape[-1], dtype=out.dtype)
        sign[1::2] = -1
        return [torch.full_like(out, v) for v in self.extremes] + [v * sign.expand_as(out) for v in self.extremes]

    def test_extreme_outputs_give_finite_nll_and_gradients(self):
        lik, out, y = self._data()
        for value in self.extreme_outputs(out):
            o = value.clone().requires_grad_()
            nll = lik.nll(o, y)
            nll.sum().backward()
            assert torch.isfinite(nll).all(), f"NLL not finite at raw outputs {value[0]}: {nll}"
            assert torch.isfinite(o.grad).all(), f"gradient not finite at raw outputs {value[0]}: {o.grad}"

    def test_float32(self):
        lik, out, y = self._data()
        nll = lik.nll(out.float(), y.float())
        expected = torch.float32
        for k, v in lik.fixed.items():  # a user's float64 tensor promotes, as in torch; numbers and lists follow
            if isinstance(v, torch.Tensor) and k not in lik._converted:
                expected = torch.promote_types(expected, v.dtype)
        assert nll.dtype == expected
        self._close(nll, lik.nll(out, y), 1e-4)

    def test_sample_statement_opens_a_plate(self):
        lik, out, y = self._data()
        trace = poutine.trace(lambda: lik("y", out, obs=y)).get_trace()
        site = trace.nodes["y"]
        assert site["is_observed"]
        assert [f.name for f in site["cond_indep_stack"]] == ["y_obs"]
        self._close(trace.log_prob_sum(), -lik.nll(out, y).sum(), 1e-12)

    def test_sample_statement_uses_the_users_subsampling_plate(self):
        lik, out, y = self._data()
        n, m = self.num_examples, 3

        def model():
            with pyro.plate("data", n, subsample_size=m) as idx:
                lik("y", out[idx], obs=y[idx])
                return idx

        trace = poutine.trace(model).get_trace()
        idx = trace.nodes["_RETURN"]["value"]
        assert [f.name for f in trace.nodes["y"]["cond_indep_stack"]] == ["data"]
        # subsampling scales the likelihood by n/m so the estimate of the full NLL is unbiased
        self._close(trace.log_prob_sum(), -(n / m) * lik.nll(out[idx], y[idx]).sum(), 1e-12)

    def test_wrong_number_of_channels_is_rejected(self):
        lik, out, y = self._data()
        if lik.num_outputs is None:
            bad = out[..., :1]
        else:
            bad = torch.cat([out, out[..., :1]], dim=-1)
        with pytest.raises(
            ValueError, match=rf"{type(lik).__name__} likelihood: network outputs have \d+ channels|at least 2 channels"
        ):
            lik.nll(bad, y)

    def test_flat_outputs_accepted_for_one_channel_heads(self):
        lik, out, y = self._data()
        if lik.num_outputs != 1:
            pytest.skip("a multi-channel head")
        self._close(lik.nll(out[:, 0], y), lik.nll(out, y), 0.0)

    def test_column_vector_y_is_rejected(self):
        lik, out, y = self._data()
        with pytest.raises(ValueError, match=r"must match exactly") as e:
            lik.nll(out, y.unsqueeze(-1 - lik.event_dim))
        assert "'y'" in str(e.value) and type(lik).__name__ in str(e.value)

    def test_nan_and_inf_are_rejected_with_their_rows(self):
        lik, out, y = self._data()
        for bad in (float("nan"), float("inf")):
            o = out.clone()
            o[2, 0] = bad
            with pytest.raises(ValueError, match=r"network outputs must be finite; got .* at row 2\b"):
                lik.nll(o, y)
            yy = y.clone()
            yy[4] = bad
            with pytest.raises(ValueError, match=r"observed values must be finite; got .* at row 4\b"):
                lik.nll(out, yy)

    def test_bad_observations_are_named(self):
        lik, out, y = self._data()
        if not self.bad_observations:
            pytest.skip("no bad_observations listed")
        for value, text in self.bad_observations:
            yy = y.clone()
            yy[1] = torch.as_tensor(value, dtype=yy.dtype)
            yy[3] = torch.as_tensor(value, dtype=yy.dtype)
            with pytest.raises(ValueError) as e:
                lik("obs", out, obs=yy)
            msg = str(e.value)
            for part in (f"{type(lik).__name__} likelihood 'obs'", "rows [1, 3]", text):
                assert part in msg, f"{part!r} missing from the error: {msg}"


def _check_discrete_frequencies(d, draws: torch.Tensor) -> None:
    """Each value drawn often: empirical frequency within 5 binomial sd of exp(log_prob)."""
    m = draws.shape[0]
    flat = draws.reshape(m, -1)
    values, counts = torch.unique(flat, dim=0, return_counts=True)
    values = values.reshape((-1,) + draws.shape[1:])
    p = d.log_prob(values.unsqueeze(1))[:, 0].exp().detach()
    freq = counts.double() / m
    sd = torch.sqrt(p * (1 - p) / m)
    assert ((freq - p).abs() <= 5 * sd + 1e-3).all(), f"frequencies {freq} against probabilities {p}"
    # mass not seen in the draws must be small too: the drawn values carry ~all probability
    assert p.sum() > 1 - 5 / np.sqrt(m), f"drawn values carry probability {p.sum():.4f}"


def _check_continuous_bins(d, draws: torch.Tensor) -> None:
    """Bins between sample deciles: each must hold ~10% of the density (numerical integral)."""
    from scipy.integrate import quad

    x = draws.double().numpy()
    edges = np.quantile(x, np.linspace(0.05, 0.95, 10))
    m = len(x)

    def pdf(t: float) -> float:
        return float(d.log_prob(torch.tensor([[t]], dtype=torch.float64)).exp()[0, 0])

    for lo, hi in zip(edges[:-1], edges[1:]):
        mass, _ = quad(pdf, lo, hi, limit=200)
        emp = np.mean((x >= lo) & (x < hi))
        sd = np.sqrt(emp * (1 - emp) / m)
        assert abs(mass - emp) <= 5 * sd + 1e-3, f"bin [{lo:.3g}, {hi:.3g}): density mass {mass:.4f}, draws {emp:.4f}"


def _check_stein_identity(d, draws: torch.Tensor) -> None:
    """For a density on R^D that vanishes at infinity, E[∇log p(y) yᵀ] = −I (Stein's identity)."""
    y = draws.double().clone().requires_grad_()
    score = torch.autograd.grad(d.log_prob(y.unsqueeze(1)).sum(), y)[0]
    prod = score.unsqueeze(-1) * y.detach().unsqueeze(-2)
    mean, sd = prod.mean(0), prod.std(0) / np.sqrt(y.shape[0])
    eye = torch.eye(y.shape[-1], dtype=torch.float64)
    assert ((mean + eye).abs() <= 5 * sd + 1e-3).all(), f"E[score yᵀ] = {mean}, expected −I"


__all__ = ["LikelihoodTestCase"]

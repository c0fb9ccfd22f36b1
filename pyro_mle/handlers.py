"""Effect handlers that turn a Pyro program's joint density into the objective of a point fit.

A Pyro program defines :math:`p(y, \\theta) = p(y \\mid \\theta)\\, p(\\theta)`: observed sites
contribute the likelihood, latent sites (``pyro.sample`` without ``obs=``) the prior.
:func:`likelihood_only` drops the prior, so the same program gives the maximum-likelihood
objective :math:`-\\log p(y \\mid \\theta)`; without it, the objective is the MAP one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import overload

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message


class LikelihoodOnlyMessenger(Messenger):
    """Masks the log-density of every latent sample site; observed sites are untouched.

    See :func:`likelihood_only`.
    """

    def _pyro_sample(self, msg: Message) -> None:
        # The decision is taken while the message travels down the stack, so a
        # ``poutine.condition`` that makes a site observed must sit *inside* this handler;
        # applied outside it, the site still looks latent here and would be masked.
        if not msg["is_observed"]:
            # ``False`` rather than a tensor of zeros: scale_and_mask short-circuits it, and
            # point-fit code can skip the site without computing its log-prob at all.
            msg["mask"] = False


@overload
def likelihood_only(fn: None = None) -> LikelihoodOnlyMessenger: ...
@overload
def likelihood_only[F: Callable](fn: F) -> F: ...
def likelihood_only(fn=None):
    r"""Keep only the likelihood of a Pyro program: mask the log-prob of every latent site.

    Inside this handler each ``pyro.sample`` site that is not observed gets ``mask=False``,
    so its prior :math:`\log p(\theta)` adds nothing to ``trace.log_prob_sum()`` or to any
    ELBO, while observed sites keep theirs. With a point-mass guide
    (:class:`~pyro.infer.autoguide.AutoDelta`, whose entropy is zero) the ELBO is then exactly
    :math:`\log p(y \mid \theta)`, and maximising it gives the maximum-likelihood estimate of
    every latent site, ``pyro.param`` and module parameter together. Without the handler the
    same guide gives the MAP estimate.

    What counts as observed is what Pyro says: ``obs=`` given (or conditioned with
    :func:`pyro.poutine.condition` applied *inside* this handler). ``pyro.factor`` sites are
    observed, so a factor counts as part of the likelihood; ``pyro.deterministic`` sites carry
    no density either way.

    Usage, as a wrapper or a context manager::

        def model(x, y):
            w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro_mle.likelihoods.Normal(scale=0.3)("y", x @ w, obs=y)

        guide = AutoDelta(model)
        svi = SVI(pyro_mle.handlers.likelihood_only(model), guide, Adam({"lr": 0.01}), Trace_ELBO())

        with pyro_mle.handlers.likelihood_only():
            log_lik = poutine.trace(model).get_trace(x, y).log_prob_sum()

    :param callable fn: a Pyro program; leave out to get a context manager.
    :returns: ``fn`` wrapped in a :class:`LikelihoodOnlyMessenger`, or the messenger itself.
    """
    msngr = LikelihoodOnlyMessenger()
    return msngr(fn) if fn is not None else msngr


class _FixParams(Messenger):
    """Every ``pyro.param`` named in ``values`` returns that value (full param-store names,
    unlike ``poutine.substitute``, which strips the ``pyro.module`` prefix)."""

    def __init__(self, values: Mapping[str, torch.Tensor]):
        super().__init__()
        self.values = values

    def _pyro_param(self, msg: Message) -> None:
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


__all__ = ["LikelihoodOnlyMessenger", "likelihood_only"]

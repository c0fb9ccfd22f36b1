"""Full posterior inference on the same Pyro program that :func:`pyro_mle.fit` reads as MLE/MAP.

Three readings of the posterior:

* ``"nuts"``: Pyro's NUTS through :class:`pyro.infer.MCMC`, JIT-compiled where the program
  allows it (``jit_compile=True``, falling back to the interpreter when tracing fails);
  chains run one after another, each from its own seed spawned from ``seed`` (see
  :func:`pyro_mle._rng.spawn_seeds`), so a run is reproducible from its seed.
* ``"laplace"``: a Gaussian at the posterior mode in the unconstrained space, with covariance
  the inverse Hessian of the negative log joint there (exact for a linear-Gaussian model).
* ``"vi"``: SVI with a full-rank multivariate normal guide
  (:class:`~pyro.infer.autoguide.AutoMultivariateNormal`).

Every method runs inside :func:`pyro_mle._rng.rng_scope`: the draws depend on ``seed`` only,
and the caller's global generators (``random``, NumPy, torch) are left as they were, so a
bootstrap loop around :func:`posterior` does not repeat itself.

``pyro.param`` and ``pyro.module`` parameters are not random variables: every method keeps
them at their current values in Pyro's param store (fit them first with
:func:`pyro_mle.fit`, or give them priors with ``PyroSample``).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from arviz_base import from_dict
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.infer.mcmc.util import initialize_model

from . import _replay
from ._rng import rng_scope, spawn_seeds
from .diagnostics import sampling_messages, warn
from .optim.lbfgs import lbfgs
from .optim.newton import hessian_from, newton, value_and_grad_from
from .optim.stopping import default_tolerances, relative_gradient

METHODS = ("nuts", "laplace", "vi")


@dataclass(frozen=True)
class Posterior:
    """Draws from the posterior of a Pyro program's latent sites.

    Fields:
      * ``method``: ``"nuts"``, ``"laplace"`` or ``"vi"``.
      * ``samples``: latent site name → tensor of shape ``(chain, draw, *site shape)``, in
        the constrained space (a scale is positive).
      * ``sample_stats``: sampler statistics, each ``(chain, draw)``. NUTS gives
        ``diverging``, ``acceptance_rate`` (the transition's mean acceptance probability
        over its tree, Stan's ``accept_stat__``; *not* Pyro's running "acceptance rate"
        diagnostic), ``step_size``, ``tree_depth``, ``n_steps`` (leapfrog steps),
        ``energy`` (the Hamiltonian at the start of the transition) and ``lp`` (log joint
        density at the draw, unconstrained space). Laplace and VI draws are independent and
        have no sampler statistics.
      * ``info``: run facts: ``run_time_s``, ``seed``, ``chains``, ``num_samples``,
        ``warmup``, and per method ``jit`` (and ``jit_error`` when it fell back),
        ``loc``/``covariance``/``layout`` of the Gaussian (Laplace, VI; unconstrained
        space), ``elbo`` history (VI).
      * ``model``, ``args``, ``kwargs``: the program and the data it was run on, for
        :meth:`predict` and :func:`pyro_mle.to_datatree`.
    """

    method: str
    samples: Mapping[str, torch.Tensor]
    sample_stats: Mapping[str, torch.Tensor]
    info: Mapping[str, Any]
    model: Callable = field(repr=False)
    args: tuple = field(default=(), repr=False)
    kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    def flat_samples(self) -> dict[str, torch.Tensor]:
        """Samples with chain and draw merged into one leading dimension."""
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    def predict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """One posterior predictive draw of every observed site per posterior draw.

        With no arguments the program runs on the data it was fitted to; pass new inputs
        as the program's own arguments. Returns site → ``(chain, draw, *value shape)``.
        """
        if not args and not kwargs:
            args, kwargs = self.args, self.kwargs
        draws, _ = _replay.predictive_draws(self.model, self.flat_samples(), args, kwargs)
        c, d = self.num_chains, self.num_draws
        return {k: v.reshape((c, d) + v.shape[1:]) for k, v in draws.items()}


def posterior(
    model: Callable,
    *args: Any,
    method: str = "nuts",
    num_samples: int = 1000,
    warmup: int = 1000,
    chains: int = 2,
    seed: int | None = 0,
    progress: bool | None = None,
    jit: bool = True,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    vi_steps: int = 3000,
    vi_lr: float = 0.01,
    diagnose: bool = True,
    **kwargs: Any,
) -> Posterior:
    """Posterior draws of ``model(*args, **kwargs)``'s latent sites.

    :param method: ``"nuts"``, ``"laplace"`` or ``"vi"`` (see the module docstring).
    :param num_samples: draws kept per chain.
    :param warmup: NUTS warm-up (adaptation) steps per chain, discarded.
    :param chains: independent chains (for Laplace and VI: independent groups of draws,
        so r-hat is defined).
    :param seed: the run's seed: the same seed gives the same draws; ``None`` draws fresh
        entropy. The chains get independent seeds spawned from it
        (:func:`~pyro_mle._rng.spawn_seeds`). The caller's global generators are untouched.
    :param progress: progress bars; default on when stderr is a terminal.
    :param jit: JIT-compile the NUTS potential (falls back when the program won't trace).
    :param vi_steps, vi_lr: SVI steps and Adam learning rate for ``"vi"``.
    :param diagnose: after NUTS, warn (:class:`~pyro_mle.diagnostics.DiagnosticWarning`)
        about r-hat > 1.01, ESS below 100 per chain and divergent transitions.

    Example::

        post = pyro_mle.posterior(model, x, y, method="nuts", num_samples=500, warmup=500)
        post.samples["w"].shape        # (2, 500, D)
    """
    if method not in METHODS:
        raise ValueError(f"posterior: unknown method {method!r}; choose one of {list(METHODS)}.")
    for name, value in (("num_samples", num_samples), ("chains", chains)):
        if int(value) != value or value < 1:
            raise ValueError(f"posterior: {name} must be a positive integer; got {value!r}.")
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"posterior: warmup must be a non-negative integer; got {warmup!r}.")
    if progress is None:
        progress = sys.stderr.isatty()
    start = time.perf_counter()
    with rng_scope(seed):  # the caller's generators are restored on the way out, also on error
        tr = _replay.trace_model(model, args, kwargs)
        _replay.require_observed(model, tr)
        if not _replay.latent_sites(tr):
            raise ValueError(
                f"posterior: model {getattr(model, '__name__', model)!r} has no latent sample site, so there is no "
                "posterior to draw. Give the parameters priors (pyro.sample), or use pyro_mle.fit for point estimates."
            )
        if method == "nuts":
            samples, stats, info = _run_nuts(
                model,
                args,
                kwargs,
                num_samples,
                warmup,
                chains,
                seed,
                progress,
                jit,
                target_accept_prob,
                max_tree_depth,
            )
        elif method == "laplace":
            samples, stats, info = _run_laplace(model, args, kwargs, num_samples, chains, seed)
        else:
            # the guide's parameters live in a copy of the store: reproducible from the seed, and
            # the user's store is left as it was
            with _replay.param_store_copy():
                samples, stats, info = _run_vi(
                    model, args, kwargs, num_samples, chains, seed, progress, vi_steps, vi_lr
                )
    info.update(run_time_s=time.perf_counter() - start, seed=seed, chains=chains, num_samples=num_samples)
    if method == "nuts":
        info["warmup"] = warmup
    result = Posterior(method, samples, stats, info, model, tuple(args), dict(kwargs))
    if diagnose and method == "nuts":
        warn(sampling_messages(_draws_tree(result)))
    return result


def _draws_tree(result: Posterior):
    """The draws and sampler statistics as a bare DataTree, enough for
    :func:`~pyro_mle.diagnostics.sampling_messages` (which reads no dimension names).
    :func:`pyro_mle.to_datatree` builds the full one; it is not used here so that this module
    does not depend on the converter that depends on it."""
    groups = {"posterior": {k: v.detach().cpu().numpy() for k, v in result.samples.items()}}
    if result.sample_stats:
        groups["sample_stats"] = {k: v.detach().cpu().numpy() for k, v in result.sample_stats.items()}
    return from_dict(groups)


# --------------------------------------------------------------------------- NUTS


class _RecordingNUTS(NUTS):
    """NUTS that keeps per-draw statistics Pyro computes but does not store.

    The mean acceptance probability of each transition is recovered exactly from Pyro's
    running mean (a_n = n·m_n − (n−1)·m_{n−1}); tree depth and leapfrog steps are counted
    from the top-level and base-case tree builds; the energy is the Hamiltonian with the
    freshly drawn momentum, the first kinetic energy evaluated in a transition.
    """

    def setup(self, warmup_steps, *args, **kwargs):
        self.records = {k: [] for k in ("diverging", "acceptance_rate", "step_size", "tree_depth", "n_steps")}
        self.records["energy"] = []
        self.records["lp"] = []
        self._level = self._depth = self._steps = 0
        self._start_energy = None
        return super().setup(warmup_steps, *args, **kwargs)

    def _kinetic_energy(self, r_unscaled):
        k = super()._kinetic_energy(r_unscaled)
        if self._start_energy is None:
            self._start_energy = k
        return k

    def _build_tree(self, *args, **kwargs):
        if self._level == 0:
            self._depth += 1
        self._level += 1
        try:
            return super()._build_tree(*args, **kwargs)
        finally:
            self._level -= 1

    def _build_basetree(self, *args, **kwargs):
        self._steps += 1
        return super()._build_basetree(*args, **kwargs)

    def sample(self, params):
        self._depth, self._steps, self._start_energy = 0, 0, None
        n_div, mean_before = len(self._divergences), self._mean_accept_prob
        _, potential_before, _ = self._fetch_from_cache()
        z = super().sample(params)
        if self._t > self._warmup_steps:
            n = self._t - self._warmup_steps
            r = self.records
            r["diverging"].append(len(self._divergences) > n_div)
            r["acceptance_rate"].append(n * self._mean_accept_prob - (n - 1) * (mean_before if n > 1 else 0.0))
            r["step_size"].append(float(self.step_size))
            r["tree_depth"].append(self._depth)
            r["n_steps"].append(self._steps)
            start = self._start_energy
            energy = (
                float(start) + float(potential_before)
                if start is not None and potential_before is not None
                else math.nan
            )
            r["energy"].append(energy)
            _, potential, _ = self._fetch_from_cache()
            r["lp"].append(-float(potential) if potential is not None else math.nan)
        return z


def _run_nuts(model, args, kwargs, num_samples, warmup, chains, seed, progress, jit, target, depth):
    per_chain, stats = [], []
    info: dict[str, Any] = {"jit": jit}
    # one independent stream per chain; never seed + c, which would make chain 1 of seed 0
    # chain 0 of seed 1
    chain_seeds = spawn_seeds(seed, chains)
    for c in range(chains):
        for use_jit in (True, False) if info["jit"] else (False,):
            # each attempt starts from the chain's seed: the interpreted retry after a failed
            # JIT trace draws what an interpreted run would have
            with rng_scope(chain_seeds[c]):
                kernel = _RecordingNUTS(
                    model,
                    jit_compile=use_jit,
                    ignore_jit_warnings=True,
                    target_accept_prob=target,
                    max_tree_depth=depth,
                )
                mcmc = MCMC(
                    kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=1, disable_progbar=not progress
                )
                try:
                    with warnings.catch_warnings():
                        # torch ≥ 2.9 flags torch.jit.trace as deprecated; Pyro's JIT path still uses it
                        warnings.filterwarnings(
                            "ignore", message=".*torch.jit.trace.* is deprecated", category=FutureWarning
                        )
                        mcmc.run(*args, **kwargs)
                    break
                except Exception as e:  # noqa: BLE001 - a program the JIT cannot trace runs interpreted
                    if not use_jit:
                        raise
                    info["jit"], info["jit_error"] = False, f"{type(e).__name__}: {e}"
        per_chain.append({k: v.detach() for k, v in mcmc.get_samples().items()})
        stats.append(kernel.records)
    samples = {k: torch.stack([ch[k] for ch in per_chain]) for k in per_chain[0]}
    sample_stats = {}
    for k in stats[0]:
        dtype = torch.bool if k == "diverging" else torch.long if k in ("tree_depth", "n_steps") else torch.float64
        sample_stats[k] = torch.tensor([s[k] for s in stats], dtype=dtype)
    return samples, sample_stats, info


# --------------------------------------------------------------------------- Laplace and VI


def _draw_gaussian(loc, scale_tril, layout, transforms, num_samples, chains, seed):
    """Draws of a Gaussian over the flat unconstrained vector, unpacked and constrained.

    ``seed`` is a seed spawned from the run's (:func:`~pyro_mle._rng.spawn_seeds`), so the
    draws' stream is not the one that drove the fit before them.
    """
    g = torch.Generator().manual_seed(seed)
    total = num_samples * chains
    eps = torch.randn(total, loc.numel(), generator=g, dtype=loc.dtype)
    flat = loc + eps @ scale_tril.T
    samples, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        value = transforms[name].inv(flat[:, offset : offset + size].reshape((total,) + tuple(shape)))
        samples[name] = value.reshape((chains, num_samples) + value.shape[1:])
        offset += size
    return samples, {}


def _flat_potential(potential_fn, layout):
    def f(theta):
        params, offset = {}, 0
        for name, shape in layout:
            size = math.prod(shape)
            params[name] = theta[offset : offset + size].reshape(shape)
            offset += size
        return potential_fn(params)

    return f


def _run_laplace(model, args, kwargs, num_samples, chains, seed):
    # the global generators were seeded by posterior's rng_scope(seed)
    init, potential_fn, transforms, _ = initialize_model(model, model_args=args, model_kwargs=kwargs)
    layout = [(k, tuple(v.shape)) for k, v in init.items()]
    f = _flat_potential(potential_fn, layout)
    mode = _find_mode(f, torch.cat([v.detach().reshape(-1) for v in init.values()]))
    hess = torch.autograd.functional.hessian(f, mode)
    hess = 0.5 * (hess + hess.T)
    try:
        precision_tril = torch.linalg.cholesky(hess)
    except RuntimeError:
        raise ValueError(
            "posterior(method='laplace'): the Hessian of the negative log joint at the mode is not positive "
            "definite (a flat or non-identified direction). Use method='nuts', or add informative priors."
        ) from None
    eye = torch.eye(mode.numel(), dtype=mode.dtype)
    covariance = torch.cholesky_solve(eye, precision_tril)
    scale_tril = torch.linalg.cholesky(covariance)
    (draw_seed,) = spawn_seeds(seed, 1)
    samples, stats = _draw_gaussian(mode, scale_tril, layout, transforms, num_samples, chains, draw_seed)
    info = {"loc": mode, "covariance": covariance, "layout": layout}
    return samples, stats, info


def _find_mode(f: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    """The mode of the unconstrained posterior density: the same optimisers as ``fit`` (L-BFGS,
    then Newton steps on the exact Hessian), judged by the same rule; a posterior without a mode
    (a centred hierarchy, whose density is unbounded as its scale goes to 0) is refused by name."""
    theta = start.clone().requires_grad_()

    def evaluate(probe: bool) -> torch.Tensor | None:
        theta.grad = None
        with torch.enable_grad():
            try:
                loss = f(theta)
            except (ValueError, RuntimeError):
                loss = None
        if loss is None or not bool(torch.isfinite(loss)):
            if probe:
                return None
            raise ValueError(_NO_MODE.format(detail="the log density is not finite at the start"))
        loss.backward()
        return loss.detach()

    num_data = 1.0
    tolerance = default_tolerances(theta.dtype)
    lbfgs(evaluate, [theta], num_steps=1000, lr=1.0, rtol=tolerance[0], gtol=tolerance[1], num_data=num_data)
    value_and_grad = value_and_grad_from(f)

    def safe(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        try:
            loss, grad = value_and_grad(x)
            return float(loss), grad
        except (ValueError, RuntimeError):
            return math.inf, torch.zeros_like(x)

    result = newton(
        safe,
        theta.detach(),
        hessian=hessian_from(f),
        converged=lambda x, loss, g: relative_gradient(g, x, float(loss), num_data) <= tolerance[1],
        max_decrement=100 * torch.finfo(theta.dtype).eps,
        min_steps=1,
    )
    if not result.converged:
        raise ValueError(_NO_MODE.format(detail=result.message))
    return result.x


_NO_MODE = (
    "posterior(method='laplace'): no mode of the posterior density was found ({detail}). A posterior "
    "without a mode (a centred hierarchy, whose density grows without bound as its scale goes to 0) has no "
    "Laplace approximation: use method='nuts', a non-centred parameterisation, or more informative priors."
)


def _run_vi(model, args, kwargs, num_samples, chains, seed, progress, steps, lr):
    # the global generators were seeded by posterior's rng_scope(seed)
    _, potential_fn, transforms, _ = initialize_model(model, model_args=args, model_kwargs=kwargs)
    guide = AutoMultivariateNormal(model)
    # lr decays 100-fold over the run so the final iterates settle instead of jittering
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / max(steps, 1))})
    svi = SVI(model, guide, optim, Trace_ELBO())
    losses = []
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="vi", file=sys.stderr)
    for _ in iterator:
        losses.append(svi.step(*args, **kwargs))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(
                f"posterior(method='vi'): the ELBO became {losses[-1]} at step {len(losses)}. Lower vi_lr "
                "or check the model's scales."
            )
    with torch.no_grad():
        gaussian = guide.get_posterior()
        loc, scale_tril = gaussian.loc.detach().clone(), gaussian.scale_tril.detach().clone()
        # the guide's latent vector lists the sites in prototype order, unconstrained shapes
        layout = [
            (name, tuple(guide._unconstrained_shapes[name]))
            for name, _ in guide.prototype_trace.iter_stochastic_nodes()
        ]
    (draw_seed,) = spawn_seeds(seed, 1)
    samples, stats = _draw_gaussian(loc, scale_tril, layout, transforms, num_samples, chains, draw_seed)
    info = {"loc": loc, "covariance": scale_tril @ scale_tril.T, "layout": layout, "elbo": losses}
    return samples, stats, info

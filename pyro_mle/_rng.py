"""Randomness that belongs to the call.

A seeded function of this package must not reseed the caller's global generators: after
``pyro.set_rng_seed(seed)`` inside a library call, every ``np.random.rand()`` the caller makes
next is the same whatever came before, and a bootstrap loop around the call repeats one
resample forever. :func:`rng_scope` seeds the global generators for the call's body only and
hands the caller's states back afterwards; :func:`spawn_seeds` gives the independent seeds of
chains (or of any other parallel streams) of one call.

Seeds are derived through :class:`numpy.random.SeedSequence`, which hashes the seed, so nearby
seeds (0, 1, 2, …) give unrelated streams and the children of one seed never overlap those of
another: chain 1 of seed 0 is not chain 0 of seed 1, as it would be with ``seed + c``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def rng_scope(seed: int | None) -> Iterator[None]:
    """Seed Python's :mod:`random`, NumPy's global generator and torch's generators from
    ``seed`` for the body, and restore the caller's states on exit.

    Contract: the caller's generators are untouched by the call. What the caller draws after
    the ``with`` block is what it would have drawn without it, also when the body raises
    (an exception or :class:`KeyboardInterrupt`). Inside the block the draws depend on
    ``seed`` only, so the same seed gives the same result.

    The per-library seeds come from ``numpy.random.SeedSequence(seed)``; ``seed=None`` draws
    fresh entropy from the operating system (not from the caller's generators), so two calls
    differ. torch's CPU generator is always covered; CUDA generators are saved, seeded and
    restored on every device when CUDA is already initialised on entry (initialising it here
    would be a side effect of its own).

    :param seed: a non-negative integer, or ``None`` for fresh entropy.

    Example::

        with rng_scope(seed):
            pyro.sample("z", dist.Normal(0.0, 1.0))   # reproducible from seed
        np.random.rand()                              # the caller's stream, as before
    """
    words = np.random.SeedSequence(seed).generate_state(4)  # four uint32 words
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    saved = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if cuda else None,
    )
    try:
        random.seed(int(words[0]))
        np.random.seed(int(words[1]))
        torch_seed = (int(words[2]) << 32) | int(words[3])
        # the CPU generator only: torch.manual_seed would also queue a seed for a CUDA that is not
        # initialised yet, to be applied to the caller's generators whenever it is
        torch.default_generator.manual_seed(torch_seed)
        if cuda:
            torch.cuda.manual_seed_all(torch_seed)
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda:
            torch.cuda.set_rng_state_all(saved[3])


def spawn_seeds(seed: int | None, n: int) -> list[int]:
    """``n`` independent integer seeds derived from ``seed``.

    The seeds are ``SeedSequence(seed).spawn(n)``'s children, so the streams of one call's
    chains never overlap each other, nor those of a call with another seed (with ``seed + c``,
    chain 1 of seed 0 would be chain 0 of seed 1). ``seed=None`` draws fresh entropy.

    :param seed: a non-negative integer, or ``None`` for fresh entropy.
    :param n: number of seeds.
    :returns: ``n`` integers in ``[0, 2**64)``, usable with :func:`rng_scope` or
        :meth:`torch.Generator.manual_seed`.
    """
    return [int(child.generate_state(1, dtype=np.uint64)[0]) for child in np.random.SeedSequence(seed).spawn(n)]

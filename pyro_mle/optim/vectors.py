"""Lists of tensors as one flat vector: the form every optimiser here and scipy's work on."""

from __future__ import annotations

import torch


def flat(params: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' values as one flat vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def flatten(grads: tuple[torch.Tensor | None, ...], like: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor gradients (``torch.autograd.grad``'s result) as one flat vector; a tensor
    without one (``allow_unused``) counts zero."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(like, grads)])


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' ``.grad`` as one flat vector (zeros where there is none)."""
    return flatten(tuple(p.grad for p in params), params)

"""Figures of chapter 5, drawn from real fits: small matplotlib functions on arrays.

Each function takes data and predictions (numpy arrays or tensors), draws on ``ax`` (a new
figure when ``ax`` is None) and returns the figure. The examples and ``pyro-mle demo`` use
them; they compute nothing that the fits did not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .likelihoods import Normal


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _axes(ax, ncols: int = 1, width: float = 5.0, height: float = 3.6):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(1, ncols, figsize=(width * ncols, height))
    return fig, ax


def plot_likelihood_profile(y, base, intercept: float, scale: float, width: float = 1.0):
    """Likelihood, negative log-likelihood and sum of squares of the model
    ``y ≈ base + φ₀`` (Normal noise, fixed ``scale``) as the intercept φ₀ varies around
    ``intercept``, every other parameter held at its estimate (``base`` holds their part of the
    prediction, e.g. ``slope·x``; UDL figure 5.5): the three curves peak or dip at the same
    φ₀, so argmax likelihood = argmin NLL = argmin least squares."""
    y_t = torch.as_tensor(_np(y), dtype=torch.float64)
    base_t = torch.as_tensor(_np(base), dtype=torch.float64)
    grid = np.linspace(intercept - width, intercept + width, 201)
    head = Normal(scale=scale)
    nll = np.array([float(head.nll(base_t + b, y_t).sum()) for b in grid])
    sse = np.array([float(((y_t - base_t - b) ** 2).sum()) for b in grid])
    # the likelihood itself underflows for real N; show it relative to its maximum
    like = np.exp(-(nll - nll.min()))
    fig, axes = _axes(None, ncols=3, width=4.0)
    for ax, values, title, best in (
        (axes[0], like, "likelihood (relative)", np.argmax(like)),
        (axes[1], nll, "negative log-likelihood", np.argmin(nll)),
        (axes[2], sse, "sum of squares", np.argmin(sse)),
    ):
        ax.plot(grid, values, color="tab:blue")
        ax.axvline(grid[best], color="tab:red", ls="--", lw=1)
        ax.set_title(title)
        ax.set_xlabel("intercept φ₀")
    fig.suptitle(f"argmax likelihood = argmin NLL = argmin least squares (φ₀ = {grid[np.argmin(nll)]:.3f})")
    fig.tight_layout()
    return fig


def plot_regression_band(x, y, x_grid, mean, scale, ax=None, title: str = ""):
    """Data, the fitted mean and a ±2σ band (σ may vary with x: heteroscedastic)."""
    fig, ax = _axes(ax)
    xg, m, s = _np(x_grid), _np(mean), np.broadcast_to(_np(scale), _np(mean).shape)
    order = np.argsort(xg)
    ax.scatter(_np(x), _np(y), s=8, alpha=0.5, color="tab:gray", label="data")
    ax.plot(xg[order], m[order], color="tab:blue", label="mean")
    ax.fill_between(xg[order], (m - 2 * s)[order], (m + 2 * s)[order], color="tab:blue", alpha=0.2, label="±2σ")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def plot_class_probabilities(x, y, x_grid, probs, ax=None, title: str = ""):
    """Predicted class probabilities along a one-dimensional input, with the labels as a rug.

    ``probs`` is ``(G,)`` for a binary model (P(y=1)) or ``(G, K)``.
    """
    fig, ax = _axes(ax)
    xg, p = _np(x_grid), _np(probs)
    p = np.stack([1 - p, p], -1) if p.ndim == 1 else p
    order = np.argsort(xg)
    colours = [f"C{k}" for k in range(p.shape[-1])]
    for k in range(p.shape[-1]):
        ax.plot(xg[order], p[order, k], color=colours[k], label=f"P(y={k} | x)")
    labels = _np(y).astype(int)
    for k in range(p.shape[-1]):
        ax.plot(_np(x)[labels == k], np.full((labels == k).sum(), -0.04 - 0.03 * k), "|", color=colours[k], ms=6)
    ax.set_ylim(-0.05 - 0.03 * p.shape[-1], 1.05)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def plot_predictive_draws(x, y, x_grid, draws, ax=None, title: str = "", circular: bool = False):
    """Data with draws from the fitted predictive distribution (``draws``: ``(S, G)``), for
    multimodal (mixture) and circular targets where a mean and a band mislead."""
    fig, ax = _axes(ax)
    d = _np(draws)
    xs = np.broadcast_to(_np(x_grid), d.shape)
    ax.scatter(xs.reshape(-1), d.reshape(-1), s=2, alpha=0.08, color="tab:blue", label="predictive draws")
    ax.scatter(_np(x), _np(y), s=8, alpha=0.7, color="tab:red", label="data")
    if circular:
        ax.set_ylim(-math.pi, math.pi)
        ax.set_yticks([-math.pi, 0, math.pi], ["−π", "0", "π"])
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, markerscale=3)
    return fig


def plot_certificates(rows: Sequence, ax=None):
    """Bar chart of max |NLL − classical loss| per likelihood head (log scale)."""
    fig, ax = _axes(ax, width=7.0, height=0.28 * len(rows) + 1.2)
    heads = [r.head if len(r.head) < 40 else r.head[:37] + "..." for r in rows]
    diffs = [max(r.max_abs_diff, 1e-18) for r in rows]
    ax.barh(heads, diffs, color="tab:blue")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("max |NLL − classical loss| (float64)")
    ax.set_title("every loss is a negative log-likelihood")
    fig.tight_layout()
    return fig

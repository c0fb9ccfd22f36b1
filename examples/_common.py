"""Shared argparse flags and the 1-D prediction grid of the example scripts."""

import argparse
from pathlib import Path

import torch


def parser(description: str, n: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--n", type=int, default=n, help=f"rows of data (default {n})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="out/examples", help="folder for the figure (default out/examples)")
    return p


def out_dir(args) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def grid_along_first_input(x: torch.Tensor, size: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """A grid over the first input; other inputs (if any) held at their mean.

    Returns ``(inputs for the model, the first input's values)``.
    """
    first = x if x.dim() == 1 else x[:, 0]
    values = torch.linspace(float(first.min()), float(first.max()), size, dtype=x.dtype)
    if x.dim() == 1:
        return values, values
    inputs = x.mean(0).expand(size, x.shape[1]).clone()
    inputs[:, 0] = values
    return inputs, values

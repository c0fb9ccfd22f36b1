"""The ``pyro-mle`` command.

Examples::

    pyro-mle list                      # likelihood families and the losses they give
    pyro-mle certificates --n 5000     # NLL against the hand-written loss, every head
    pyro-mle demo --out out/           # the main job on built-in data

Exit status is 0 on success, 2 on a usage error, 1 on any other error (one line on stderr,
no traceback; set PYRO_MLE_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__


def _cmd_list(args: argparse.Namespace) -> int:
    from .likelihoods.base import example_heads

    rows = [(repr(h), h.loss_name, "K" if h.num_outputs is None else str(h.num_outputs)) for h in example_heads()]
    _print_rows(("likelihood head", "classical loss", "outputs"), rows)
    return 0


def _cmd_certificates(args: argparse.Namespace) -> int:
    from .certificates import certificate_table, format_table

    rows = certificate_table(n=args.n, seed=args.seed)
    print(format_table(rows))
    worst = max(r.max_rel_diff for r in rows)
    print(f"\n{len(rows)} heads, {args.n} simulated examples each: largest relative difference {worst:.1e}.")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "certificates.json").write_text(json.dumps([r.as_dict() for r in rows], indent=2))
        print(f"wrote {out / 'certificates.json'}")
    return 0 if worst < 1e-8 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print("== Every loss is a negative log-likelihood: certificates on simulated data ==\n")
    status = _cmd_certificates(args)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")
    return status


def _print_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for cells in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-mle",
        description="Loss functions as negative log-likelihoods: MLE, MAP and full Bayes for Pyro programs.",
        epilog="examples:\n  pyro-mle list\n  pyro-mle certificates --n 5000\n  pyro-mle demo --out out/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyro-mle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="likelihood families, their heads and classical losses")
    p.set_defaults(func=_cmd_list)

    for name, func, help_ in (
        ("certificates", _cmd_certificates, "NLL against the hand-written classical loss for every head"),
        ("demo", _cmd_demo, "the main job: run the chapter on built-in data"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--n", type=_positive_int, default=2000, help="simulated examples per head (default 2000)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--out", default="out" if name == "demo" else None, help="folder for the results")
        p.set_defaults(func=func)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("PYRO_MLE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pyro-mle: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

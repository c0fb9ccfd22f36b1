"""The ``pyro-mle`` command.

Examples::

    pyro-mle list                                   # models, likelihood heads and their losses
    pyro-mle fit linear_regression                  # MLE on the model's built-in data
    pyro-mle fit my_model.py --data d.csv --x a,b --y target --method map --out out/
    pyro-mle compare linear_regression --methods mle,map,nuts --out out/
    pyro-mle certificates --n 5000                  # NLL against the hand-written loss, every head
    pyro-mle demo --out out/                        # the main job: the chapter on built-in data

Exit status: 0 on success, 2 on a usage error, 1 on any other error (one line on stderr, no
traceback; set PYRO_MLE_DEBUG=1 to see it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from . import __version__


def _cmd_list(args: argparse.Namespace) -> int:
    from .likelihoods.base import example_heads
    from .model_files import builtin_models, load_model_file

    rows = []
    for name in builtin_models():
        mf = load_model_file(name)
        rows.append((name, mf.likelihood, mf.loss, mf.title))
    if rows:
        print("models (pyro-mle fit NAME):")
        _print_rows(("model", "likelihood", "loss", "title"), rows)
        print()
    print("likelihood heads (pyro_mle.likelihoods):")
    heads = [(repr(h), h.loss_name, "K" if h.num_outputs is None else str(h.num_outputs)) for h in example_heads()]
    _print_rows(("head", "classical loss", "outputs"), heads)
    return 0


def _load_data(args: argparse.Namespace, mf):
    from .model_files import read_csv

    if args.data is None:
        return mf.load_data(n=args.n, seed=args.seed) if args.n else mf.load_data(seed=args.seed)
    x_cols = tuple(args.x.split(",")) if args.x else mf.x_columns
    y_cols = tuple(args.y.split(",")) if args.y else mf.y_columns
    x0, _ = mf.load_data(seed=0)  # only to learn the dtype the model expects
    return read_csv(args.data, x_cols, y_cols, dtype=x0.dtype)


def _out_dir(args: argparse.Namespace) -> Path | None:
    if not args.out:
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cmd_fit(args: argparse.Namespace) -> int:
    from .fit import fit
    from .model_files import load_model_file
    from .results import FitInterrupted

    mf = load_model_file(args.model)
    x, y = _load_data(args, mf)
    try:
        result = fit(
            mf.model, x, y, method=args.method, optimizer=args.optimizer, seed=args.seed, progress=args.progress
        )
    except FitInterrupted as e:  # Ctrl-C: report and keep what the fit reached, exit as a shell does
        print(f"pyro-mle: {e.fit.message}", file=sys.stderr)
        _report_fit(args, mf, len(x), e.fit)
        return 130
    _report_fit(args, mf, len(x), result)
    return 0


def _report_fit(args: argparse.Namespace, mf, rows: int, result) -> None:
    print(f"{mf.name}: {args.method.upper()} fit of {rows} rows ({mf.loss or mf.likelihood or 'NLL'})")
    print(f"  converged: {result.converged} after {result.num_steps} steps ({result.message})")
    print(f"  NLL at the estimate: {result.nll:.6g}  (mean per row {result.nll / rows:.6g})")
    for name, value in result.params.items():
        flat = value.detach().reshape(-1)
        shown = ", ".join(f"{v:.4g}" for v in flat[:8].tolist()) + (", ..." if flat.numel() > 8 else "")
        print(f"  {name} {tuple(value.shape)}: [{shown}]")
    out = _out_dir(args)
    if out is not None:
        result.save(out / f"{mf.name}_{args.method}.pt")
        summary = {
            "model": mf.name,
            "method": args.method,
            "nll": result.nll,
            "converged": result.converged,
            "num_steps": result.num_steps,
            "message": result.message,
            "params": {k: v.detach().tolist() for k, v in result.params.items()},
        }
        (out / f"{mf.name}_{args.method}.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {out / (mf.name + '_' + args.method + '.pt')} and .json")


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare
    from .model_files import load_model_file

    mf = load_model_file(args.model)
    x, y = _load_data(args, mf)
    methods = tuple(m.strip() for m in args.methods.split(","))
    options = {"num_samples": args.num_samples, "warmup": args.warmup, "chains": args.chains}
    result = compare(mf.model, x, y, methods=methods, seed=args.seed, posterior_options=options, progress=args.progress)
    print(result)
    out = _out_dir(args)
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        result.table.to_csv(out / f"{mf.name}_compare_table.csv")
        result.methods.to_csv(out / f"{mf.name}_compare_methods.csv")
        result.plot().savefig(out / f"{mf.name}_compare.png", dpi=110)
        for method, tree in result.datatrees.items():
            if tree is not None:
                tree.to_netcdf(out / f"{mf.name}_{method}.nc")
        print(f"wrote {out}/{mf.name}_compare.png, tables (.csv) and DataTrees (.nc)")
    return 0


def _cmd_certificates(args: argparse.Namespace) -> int:
    from .certificates import certificate_table, format_table

    rows = certificate_table(n=args.n, seed=args.seed)
    print(format_table(rows))
    worst = max(r.max_rel_diff for r in rows)
    print(f"\n{len(rows)} heads, {args.n} simulated examples each: largest relative difference {worst:.1e}.")
    out = _out_dir(args)
    if out is not None:
        (out / "certificates.json").write_text(json.dumps([r.as_dict() for r in rows], indent=2))
        print(f"wrote {out / 'certificates.json'}")
    return 0 if worst < 1e-8 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=Path(args.out), seed=args.seed, quick=args.quick, progress=args.progress)


def _print_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for cells in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _methods(text: str) -> str:
    valid = ("mle", "map", "laplace", "vi", "nuts")
    bad = [m for m in text.split(",") if m.strip() not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(bad)}; choose from {', '.join(valid)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-mle",
        description="Loss functions as negative log-likelihoods: MLE, MAP and full Bayes for Pyro programs.",
        epilog=__doc__.split("Examples::", 1)[1].split("Exit status")[0].rstrip()
        + "\n\nMODEL is a built-in model name (see 'pyro-mle list') or the path of a model file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyro-mle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bar = common.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="show progress bars")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("model", metavar="MODEL", help="built-in model name or path to a model file")
    data.add_argument("--data", metavar="FILE.csv", help="CSV file with a header line (default: the model's own data)")
    data.add_argument("--x", metavar="COLS", help="comma-separated input columns of the CSV (default: the model's)")
    data.add_argument("--y", metavar="COLS", help="comma-separated target columns of the CSV (default: the model's)")
    data.add_argument("--n", type=_positive_int, help="rows of built-in data (default: the model's)")
    data.add_argument("--out", metavar="DIR", help="folder for results")

    p = sub.add_parser("list", help="models, likelihood heads and their losses")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "fit",
        parents=[data, common],
        help="MLE or MAP fit of a model",
        description="Fit the MLE or MAP point estimate of a model with pyro_mle.fit.",
        epilog="examples:\n  pyro-mle fit linear_regression\n"
        "  pyro-mle fit model.py --data d.csv --x a,b --y t --method map",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", choices=("mle", "map"), default="mle", help="mle (default) or map")
    p.add_argument("--optimizer", choices=("lbfgs", "adam"), help="default: lbfgs for full batch, adam to subsample")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "compare",
        parents=[data, common],
        help="MLE, MAP and posterior inference side by side",
        description="Run several methods on one model and tabulate estimates, NLL, ELPD and diagnostics.",
        epilog="example:\n  pyro-mle compare linear_regression --methods mle,map,nuts --out out/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--methods", type=_methods, default="mle,map,nuts", help="comma-separated (default mle,map,nuts)")
    p.add_argument("--num-samples", type=_positive_int, default=500, help="posterior draws per chain (default 500)")
    p.add_argument("--warmup", type=_positive_int, default=500, help="NUTS warm-up steps (default 500)")
    p.add_argument("--chains", type=_positive_int, default=2, help="chains (default 2)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "certificates",
        parents=[common],
        help="NLL against the hand-written classical loss for every head",
        description="NLL against the hand-written classical loss for every likelihood head, on simulated data.",
    )
    p.add_argument("--n", type=_positive_int, default=2000, help="simulated examples per head (default 2000)")
    p.add_argument("--out", metavar="DIR", help="folder for certificates.json")
    p.set_defaults(func=_cmd_certificates)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the main job: the chapter on built-in data",
        description="Run the chapter on built-in data: certificates, least squares and cross-entropy as MLE, "
        "MLE/MAP/NUTS comparison, every model of the shelf, figures and a DataTree.",
    )
    p.add_argument("--out", metavar="DIR", default="out", help="folder for figures and results (default out/)")
    p.add_argument("--quick", action="store_true", help="smaller settings (for tests)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if os.environ.get("PYRO_MLE_DEBUG"):
            raise
        print("pyro-mle: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError, FloatingPointError) as e:
        if os.environ.get("PYRO_MLE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pyro-mle: error: {str(msg).splitlines()[0] if str(msg) else type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``pyro-mle`` command.

Examples::

    pyro-mle list                                   # models, likelihood heads and their losses
    pyro-mle fit linear_regression                  # MLE on the model's built-in data
    pyro-mle fit my_model.py --data d.csv --x a,b --y target --method map --out out/
    pyro-mle compare linear_regression --methods mle,map,nuts --out out/
    pyro-mle certificates --n 5000                  # NLL against the hand-written loss, every head
    pyro-mle demo --out out/                        # the main job: the chapter on built-in data

Exit status: 0 on success, 2 on a usage error, 1 on any other error: one line on stderr saying
what went wrong, where (for an error in a model file: the file, the line and the Pyro site) and
the fix; ``--debug`` (or PYRO_MLE_DEBUG=1) shows the full traceback instead. Ctrl-C exits 130
after writing what the run has (an interrupted fit writes its last estimate). ``--out`` is
checked (a directory, creatable, writable) before any work. Output piped into a reader that
stops early (``| head``) ends nothing: the run goes on and writes its files, and exits 0.

Progress goes to stderr: a bar on a terminal or in a notebook, otherwise a line every few
seconds (step, loss, rate); ``--quiet`` silences it.

Data: without ``--data`` the model file's ``load_data`` is called with the arguments it takes
of ``n`` (``--n``) and ``seed`` (``--seed``). With ``--data`` it is not called: the CSV columns
are read as the model file's ``DTYPE`` (``DTYPE = "float64"``; default torch's default dtype,
float32).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

from . import __version__
from ._user_errors import describe
from .tables import format_table


def _cmd_list(args: argparse.Namespace) -> int:
    from .likelihoods.base import example_heads
    from .model_files import builtin_models, load_model_file

    rows = []
    for name, path in builtin_models().items():
        args.model_path = path
        mf = load_model_file(name)
        rows.append((name, mf.likelihood, mf.loss, mf.title))
    if rows:
        print("models (pyro-mle fit NAME):")
        print(format_table(("model", "likelihood", "loss", "title"), rows))
        print()
    print("likelihood heads (pyro_mle.likelihoods):")
    heads = [(repr(h), h.loss_name, "K" if h.num_outputs is None else str(h.num_outputs)) for h in example_heads()]
    print(format_table(("head", "classical loss", "outputs"), heads))
    return 0


def _load_model(args: argparse.Namespace):
    """The model file of ``args.model``; its path is kept in ``args.model_path`` so that an
    error raised from it, even while it is imported, is located in it."""
    from .model_files import builtin_models, load_model_file

    text = str(args.model)
    args.model_path = builtin_models().get(text, Path(text))
    return load_model_file(text)


def _load_data(args: argparse.Namespace, mf):
    """``(x, y)``: the CSV of ``--data`` if given, else the model file's ``load_data``."""
    import torch

    from .model_files import call_load_data, read_csv

    if args.data is None:
        data = call_load_data(mf, n=args.n, seed=args.seed)
        if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
            got = type(data).__name__ if not isinstance(data, tuple) else f"a tuple of {len(data)}"
            raise ValueError(f"model file {str(mf.path)!r}: load_data() returned {got}; it must return (x, y) tensors.")
        return data
    if args.n is not None:
        raise ValueError(f"--n {args.n} sizes the model's own data, but --data {args.data!r} is given; drop --n.")
    x_cols = tuple(args.x.split(",")) if args.x else mf.x_columns
    y_cols = tuple(args.y.split(",")) if args.y else mf.y_columns
    return read_csv(args.data, x_cols, y_cols, dtype=_csv_dtype(mf))


def _csv_dtype(mf):
    """The dtype of a CSV's columns: the model file's ``DTYPE`` (a torch floating dtype or its
    name), else torch's default dtype. ``load_data`` is not called to learn it: it may be slow,
    need a download, or not exist for the user's data."""
    import torch

    value = getattr(mf.module, "DTYPE", None)
    if value is None:
        return torch.get_default_dtype()
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"model file {str(mf.path)!r}: DTYPE = {value!r} is not a torch floating dtype; "
            'use e.g. DTYPE = "float64" or torch.float32.'
        )
    return dtype


def _out_dir(args: argparse.Namespace) -> Path | None:
    """The checked ``--out`` folder (see :func:`check_out`), or ``None`` without ``--out``."""
    return Path(args.out) if getattr(args, "out", None) else None


def check_out(path: str | os.PathLike) -> Path:
    """Make sure results can be written to the folder ``path`` before any work: it is created
    if missing; a path that is a file, lies under a file, or cannot be written is refused,
    naming it and the fix."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--out {str(out)!r} is a file, not a directory; give a folder path (it is created if missing)."
        )
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(
            f"--out {str(out)!r}: {str(parent)!r} is a file, so no folder can be made under it; "
            "give another folder path."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(f"--out {str(out)!r} cannot be written ({reason}); give a folder you can write to.") from e
    return out


def _cmd_fit(args: argparse.Namespace) -> int:
    from .fit import fit
    from .results import FitInterrupted

    mf = _load_model(args)
    x, y = _load_data(args, mf)
    try:
        result = fit(
            mf.model, x, y, method=args.method, optimizer=args.optimizer, seed=args.seed, progress=args.progress
        )
    except FitInterrupted as e:  # Ctrl-C: keep what the fit reached, report it, exit as a shell does
        _report_fit(args, mf, x, y, e.fit)
        print(f"pyro-mle: {e.fit.message}", file=sys.stderr)
        return 130
    _report_fit(args, mf, x, y, result)
    return 0


def _in_sample_scores(result, x, y, seed: int) -> list:
    """Scores of the fitted predictive distribution on the rows it was fitted to
    (:mod:`pyro_mle.scores`), for the observed site whose values are ``y``; none where the
    model's sites do not line up with ``y`` (several observed sites, a model that predicts
    other shapes)."""
    from .scores import score

    try:
        pred = result.predict(x, num_samples=200, seed=seed)
        return [score(pred, y, site) for site in pred.draws if tuple(pred.draws[site].shape[1:]) == tuple(y.shape)]
    except (ValueError, RuntimeError, KeyError, NotImplementedError):
        return []


def _report_fit(args: argparse.Namespace, mf, x, y, result) -> None:
    """Write the fit to ``--out`` (first: the files must not depend on stdout), then print it."""
    rows = len(x)
    scores = _in_sample_scores(result, x, y, args.seed)
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
            "scores": {
                sc.site: {"crps": sc.crps, "log_score": sc.log_score, f"coverage_{sc.prob:g}": sc.coverage}
                for sc in scores
            },
        }
        (out / f"{mf.name}_{args.method}.json").write_text(json.dumps(summary, indent=2))
    print(f"{mf.name}: {args.method.upper()} fit of {rows} rows ({mf.loss or mf.likelihood or 'NLL'})")
    print(f"  converged: {result.converged} after {result.num_steps} steps ({result.message})")
    print(f"  NLL at the estimate: {result.nll:.6g}  (mean per row {result.nll / rows:.6g})")
    for name, value in result.params.items():
        flat = value.detach().reshape(-1)
        shown = ", ".join(f"{v:.4g}" for v in flat[:8].tolist()) + (", ..." if flat.numel() > 8 else "")
        print(f"  {name} {tuple(value.shape)}: [{shown}]")
    for sc in scores:  # in-sample: how well the fitted distribution describes the rows it saw
        print(
            f"  scores of {sc.site!r} on these rows: CRPS {sc.crps:.4g}, log score {sc.log_score:.4g}, "
            f"{sc.prob:.0%} interval coverage {sc.coverage:.3f}"
        )
    if out is not None:
        print(f"wrote {out / (mf.name + '_' + args.method + '.pt')} and .json")


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    mf = _load_model(args)
    x, y = _load_data(args, mf)
    methods = tuple(m.strip() for m in args.methods.split(","))
    options = {"num_samples": args.num_samples, "warmup": args.warmup, "chains": args.chains}
    args.interrupt_note = "; nothing written (compare writes when every method has run)"
    result = compare(mf.model, x, y, methods=methods, seed=args.seed, posterior_options=options, progress=args.progress)
    out = _out_dir(args)
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        args.interrupt_note = f"; some of the results are in {out}"
        result.table.to_csv(out / f"{mf.name}_compare_table.csv")
        result.methods.to_csv(out / f"{mf.name}_compare_methods.csv")
        result.plot().savefig(out / f"{mf.name}_compare.png", dpi=110)
        for method, tree in result.datatrees.items():
            if tree is not None:
                tree.to_netcdf(out / f"{mf.name}_{method}.nc")
    print(result)
    if out is not None:
        print(f"wrote {out}/{mf.name}_compare.png, tables (.csv) and DataTrees (.nc)")
    return 0


def _cmd_certificates(args: argparse.Namespace) -> int:
    from .certificates import certificate_table
    from .certificates import format_table as certificates_table

    rows = certificate_table(n=args.n, seed=args.seed)
    worst = max(r.max_rel_diff for r in rows)
    out = _out_dir(args)
    if out is not None:
        (out / "certificates.json").write_text(json.dumps([r.as_dict() for r in rows], indent=2))
    print(certificates_table(rows))
    print(f"\n{len(rows)} heads, {args.n} simulated examples each: largest relative difference {worst:.1e}.")
    if out is not None:
        print(f"wrote {out / 'certificates.json'}")
    return 0 if worst < 1e-8 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    args.interrupt_note = f"; the sections finished are in {args.out}"
    return run_demo(out=Path(args.out), seed=args.seed, quick=args.quick, progress=args.progress)


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

    debugging = argparse.ArgumentParser(add_help=False)
    debugging.add_argument(
        "--debug", action="store_true", help="on an error, the full traceback instead of one line (or PYRO_MLE_DEBUG=1)"
    )

    common = argparse.ArgumentParser(add_help=False, parents=[debugging])
    common.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bar = common.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="progress from the first step (default: a bar on a terminal, and in a log a line every few "
        "seconds once a run takes that long)",
    )
    bar.add_argument("-q", "--quiet", "--no-progress", dest="progress", action="store_false", help="no progress")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("model", metavar="MODEL", help="built-in model name or path to a model file")
    data.add_argument(
        "--data",
        metavar="FILE.csv",
        help="CSV file with a header line, read as the model file's DTYPE (default float32); "
        "without it, the model's load_data",
    )
    data.add_argument("--x", metavar="COLS", help="comma-separated input columns of the CSV (default: the model's)")
    data.add_argument("--y", metavar="COLS", help="comma-separated target columns of the CSV (default: the model's)")
    data.add_argument("--n", type=_positive_int, help="rows of built-in data (default: the model's)")
    data.add_argument("--out", metavar="DIR", help="folder for results (checked, and created, before any work)")

    p = sub.add_parser("list", parents=[debugging], help="models, likelihood heads and their losses")
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
    debug = getattr(args, "debug", False) or bool(os.environ.get("PYRO_MLE_DEBUG"))
    with _pipe_safe_output():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = _show_warning
                if getattr(args, "out", None):
                    check_out(args.out)  # before any work: a result must never be lost to a bad --out
                return args.func(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"pyro-mle: interrupted{getattr(args, 'interrupt_note', '')}", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - every error of the user's input or code: one line
            if debug:
                raise
            print(f"pyro-mle: error: {describe(e, getattr(args, 'model_path', None))}", file=sys.stderr)
            return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, like the errors."""
    text = " ".join(str(message).split())
    print(f"pyro-mle: warning: {category.__name__}: {text}", file=sys.stderr if file is None else file)


class _PipeSafe:
    """A text stream whose reader may go away (``pyro-mle fit M | head -1``): once it has, what
    is written is dropped, so the run goes on, writes its files and exits 0 without
    "Exception ignored ... BrokenPipeError" at exit. Anything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        """Point the descriptor at /dev/null: what is still buffered goes nowhere, quietly,
        when the interpreter flushes it at exit."""
        self.broken = True
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream: nothing to redirect
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _pipe_safe_output():
    """``sys.stdout`` and ``sys.stderr`` as :class:`_PipeSafe` streams for the command's run."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _PipeSafe):
                stream.flush()
        sys.stdout, sys.stderr = saved


if __name__ == "__main__":
    sys.exit(main())

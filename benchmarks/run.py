"""Ratio benchmarks of pyro_mle against the alternatives, side by side in one run.

    python -m benchmarks.run                 # full: several minutes
    python -m benchmarks.run --quick         # a minute or two, fewer sizes and repeats
    python -m benchmarks.run --only adam lstsq --threads 1 --out results.json

Each comparison runs both sides on the same data in this process (NumPyro and the streamed
fits in fresh processes), interleaved, ``--repeats`` times after an untimed warm-up, and reports
medians and their ratio against the target of issue 6:

* ``adam``: time per Adam step of :func:`pyro_mle.fit` on a linear-Gaussian model (an
  ``nn.Linear`` under ``pyro.module``, a Normal likelihood head) against the hand-written
  PyTorch loop (``nn.Linear``, ``MSELoss``, ``torch.optim.Adam``), float32, N = 10⁴ and 10⁶,
  D = 20. Per-step time is the median gap between the starts of consecutive steps, so
  one-off costs (pyro_mle's checks, tracing and final full-data NLL; the optimiser's
  first-step imports) are left out on both sides; whole-run times are in the JSON. Plain
  Pyro SVI (Trace_ELBO, JitTrace_ELBO) is shown for context.
* ``adam-load``: the same at N = 10⁴ with one busy process per core started by the benchmark
  beside both sides (a CI runner, a shared server): target ≤ 1.5x the loop under the same load.
* ``lstsq``: time to the least-squares answer (every coefficient within 1e-6 of it), float64,
  :func:`pyro_mle.fit` (L-BFGS) against :func:`numpy.linalg.lstsq`. Two rows per size: the
  *first fit* of the program and shapes in the process (the trace cache emptied before each)
  and a *repeated fit* (refits, cross-validation, bootstraps: the cached trace reused).
* ``logistic``: time to the unpenalised logistic regression answer, float64, against
  scikit-learn's ``LogisticRegression(C=inf)`` (L-BFGS), both stopping on the same test
  (largest gradient entry of the mean loss ≤ 1e-7), both checked within 1e-5 of a tight fit;
  first and repeated fits as for ``lstsq``.
* ``nuts``: smallest bulk effective sample size per CPU-second, 500 warm-up + 500 draws,
  ``--chains`` (default 1) on every side, of :func:`pyro_mle.posterior` (nutpie) against raw
  Pyro NUTS with ``jit_compile=True`` (what ``posterior`` ran before nutpie) and, when NumPyro
  is installed (``pip install -e .[bench]``), NumPyro's first run in a fresh process
  (compilation included, imports not), on Bayesian logistic regression (N = 1000, D = 10 and
  N = 10⁴, D = 50) and the non-centred eight schools (:func:`nuts`).
* ``streaming``: a fit on 10⁵, 10⁶, 10⁷ rows memory-mapped from ``.npy`` files in minibatches
  of 10⁴ (a fresh process per size): rows per second and peak memory.
* ``csv``: reading 10⁶ rows x 3 columns of CSV (:mod:`benchmarks.csv_read`) against
  ``pandas.read_csv`` alone.

The table is printed and written as JSON (``--out``, default ``benchmarks/results.json``).
Timings depend on the machine and on what else runs on it: the JSON records the load average
before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

import pyro_mle

from . import problems

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One comparison: medians in seconds (or ESS per second), their ratio and the target."""

    name: str
    ours: float
    reference: float
    reference_name: str
    ratio: float
    target: str  # "<= 1.5", ">= 1", "" (context only)
    unit: str = "s"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, bound = self.target.split()
        return self.ratio <= float(bound) if op == "<=" else self.ratio >= float(bound)


# --------------------------------------------------------------------------- timing
def _time(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


_RESULTS: dict[int, dict[str, list[Any]]] = {}


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall time of each run over ``repeats`` rounds (more for runs of milliseconds:
    until every side has run for a second), after one untimed warm-up each; the order rotates
    every round so that drifts of the machine fall on every side alike. Every
    timed run's return value is kept (:func:`_all_results`); the last one is returned."""
    names = list(runs)
    last = {}
    for name in names:
        last[name] = runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list[Any]] = {name: [] for name in names}
    r = 0
    # short runs (milliseconds) repeat until each side has run for a second, so that a burst
    # of load on the machine cannot make their median
    while r < repeats or (r < 200 and min(sum(t) for t in times.values()) < 1.0):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t, last[name] = _time(runs[name])
            times[name].append(t)
            results[name].append(last[name])
        r += 1
    _RESULTS[id(runs)] = results
    return {name: statistics.median(t) for name, t in times.items()}, last


def _all_results(runs: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    return _RESULTS.pop(id(runs))


def _quiet_fit(*args: Any, **kwargs: Any) -> pyro_mle.Fit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyro_mle.ConvergenceWarning)
        return pyro_mle.fit(*args, progress=False, **kwargs)


# --------------------------------------------------------------------------- Adam per step
class _StepClock:
    """Timestamps at the start of every optimiser step; the median gap is the time per step,
    one-off costs (checks, tracing, the final full-data NLL, first-step imports) left out."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())

    def per_step(self) -> float:
        return float(np.median(np.diff(self.stamps)))


@contextlib.contextmanager
def _clock_fit_steps(clock: _StepClock):
    """Tick ``clock`` at every evaluation of pyro_mle's optimisation loop (one per Adam step)."""
    run_class = importlib.import_module("pyro_mle.evaluation").Evaluator
    evaluate = run_class.evaluate

    def ticking(self, *args, **kwargs):
        clock.tick()
        return evaluate(self, *args, **kwargs)

    run_class.evaluate = ticking
    try:
        yield
    finally:
        run_class.evaluate = evaluate


@contextlib.contextmanager
def _busy_cores(count: int | None = None):
    """One process per core spinning in a Python loop while the block runs: the load of a CI
    runner or a shared server, started and stopped by the benchmark itself."""
    count = count or os.cpu_count() or 1
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    time.sleep(0.5)  # let the scheduler see them
    try:
        yield count
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


def adam(n: int, steps: int, repeats: int, context: bool, loaded: bool = False) -> list[Row]:
    """Time per Adam step against the hand-written loop; ``loaded``: with one busy process per
    core beside both sides (:func:`_busy_cores`)."""
    if loaded:
        with _busy_cores() as busy:
            rows = adam(n, steps, repeats, context=False)
        for row in rows:
            row.name += f", under load ({busy} busy processes)"
            row.details["busy_processes"] = busy
        return rows
    x, y = problems.linear_gaussian(n, torch.float32)
    lr = 1e-3  # small enough that neither side converges within the steps

    def torch_loop() -> tuple[float, int]:
        clock = _StepClock()
        torch.manual_seed(0)
        net = torch.nn.Linear(problems.D, 1)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        loss_fn = torch.nn.MSELoss()
        for _ in range(steps):
            clock.tick()
            opt.zero_grad()
            loss = loss_fn(net(x).squeeze(-1), y)
            loss.backward()
            opt.step()
        clock.tick()
        return clock.per_step(), steps

    def ours() -> tuple[float, int]:
        clock = _StepClock()
        torch.manual_seed(0)
        net = torch.nn.Linear(problems.D, 1)
        with _clock_fit_steps(clock):
            result = _quiet_fit(problems.network_model(net), x, y, optimizer="adam", lr=lr, num_steps=steps)
        return clock.per_step(), result.num_steps

    def svi(elbo: type) -> Callable[[], tuple[float, int]]:
        def run() -> tuple[float, int]:
            clock = _StepClock()
            torch.manual_seed(0)
            pyro.clear_param_store()
            net = torch.nn.Linear(problems.D, 1)
            model = problems.network_model(net)
            engine = pyro.infer.SVI(model, lambda *a, **kw: None, pyro.optim.Adam({"lr": lr}), elbo())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # JIT tracer warnings, torch.jit.trace deprecation
                for _ in range(steps):
                    clock.tick()
                    engine.step(x, y)
            clock.tick()
            return clock.per_step(), steps

        return run

    runs = {"torch": torch_loop, "ours": ours}
    if context:
        runs.update({"svi": svi(pyro.infer.Trace_ELBO), "jitsvi": svi(pyro.infer.JitTrace_ELBO)})
    times, last = interleaved(runs, repeats)  # wall time of whole runs, one-off costs included
    per_step = {name: statistics.median(v[0] for v in results) for name, results in _all_results(runs).items()}
    if last["ours"][1] != steps:
        raise RuntimeError(f"adam benchmark: pyro_mle.fit stopped after {last['ours'][1]} of {steps} steps")
    base = per_step["torch"]
    size = f"N=10^{round(math.log10(n))}"
    target = "<= 1.5" if n <= 10_000 else "<= 1.1"
    details = {"n": n, "steps": steps, "per_step_s": per_step, "whole_run_s": times}
    rows = [Row(f"Adam step, {size}, D=20", per_step["ours"], base, "PyTorch loop", per_step["ours"] / base, target)]
    rows[0].details = details
    if context:
        for side, label in (("svi", "Pyro SVI Trace_ELBO"), ("jitsvi", "Pyro SVI JitTrace_ELBO")):
            rows.append(
                Row(
                    f"  (context) {label}, {size}",
                    per_step[side],
                    base,
                    "PyTorch loop",
                    per_step[side] / base,
                    "",
                    details={"whole_run_s": times[side]},
                )
            )
    return rows


# --------------------------------------------------------------------------- least squares
def _first_fit(*args: Any, **kwargs: Any) -> pyro_mle.Fit:
    """A fit as the first of its program and shapes in the process: with an empty trace cache."""
    pyro_mle.clear_trace_cache()
    return _quiet_fit(*args, **kwargs)


def _which(first: bool) -> tuple[Callable[..., pyro_mle.Fit], str]:
    return (_first_fit, "first fit") if first else (_quiet_fit, "repeated fit")


def lstsq(n: int, repeats: int, first: bool = False) -> Row:
    x, y = problems.linear_gaussian(n, torch.float64)
    X1, Y = np.c_[x.numpy(), np.ones(n)], y.numpy()
    run, which = _which(first)
    times, out = interleaved(
        {
            "numpy": lambda: np.linalg.lstsq(X1, Y, rcond=None)[0],
            "ours": lambda: run(problems.least_squares_model, x, y),
        },
        repeats,
    )
    answer = out["numpy"]
    result = out["ours"]
    error = float(np.abs(np.r_[result.params["w"].numpy(), result.params["b"].numpy()] - answer).max())
    if error > 1e-6:
        raise RuntimeError(f"lstsq benchmark: pyro_mle.fit is {error:.2g} from the answer (> 1e-6)")
    return Row(
        f"least squares to 1e-6, N=10^{round(math.log10(n))}, {which}",
        times["ours"],
        times["numpy"],
        "numpy.linalg.lstsq",
        times["ours"] / times["numpy"],
        "<= 2" if first else "<= 2.5",
        details={"n": n, "max_abs_error": error, "lbfgs_steps": result.num_steps},
    )


# --------------------------------------------------------------------------- logistic regression
def logistic(n: int, repeats: int, first: bool = False) -> Row:
    from sklearn.linear_model import LogisticRegression

    X, Y = problems.logistic(n)
    x, y = torch.as_tensor(X), torch.as_tensor(Y)
    tol = 1e-7  # pyro_mle's default gtol in float64: the same gradient test on both sides
    run, which = _which(first)
    times, out = interleaved(
        {
            "sklearn": lambda: LogisticRegression(C=np.inf, tol=tol, max_iter=10_000).fit(X, Y),
            "ours": lambda: run(problems.logistic_model, x, y),
        },
        repeats,
    )
    tight = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, Y)
    answer = np.r_[tight.coef_[0], tight.intercept_]
    sk, result = out["sklearn"], out["ours"]
    errors = {
        "pyro_mle": float(np.abs(np.r_[result.params["w"].numpy(), result.params["b"].numpy()] - answer).max()),
        "sklearn": float(np.abs(np.r_[sk.coef_[0], sk.intercept_] - answer).max()),
    }
    if max(errors.values()) > 1e-5:
        raise RuntimeError(f"logistic benchmark: a solver is off the answer by more than 1e-5: {errors}")
    return Row(
        f"logistic regression to 1e-5, N=10^{round(math.log10(n))}, {which}",
        times["ours"],
        times["sklearn"],
        "sklearn LogisticRegression",
        times["ours"] / times["sklearn"],
        "<= 1.5" if first else "<= 1.3",
        details={"n": n, "max_abs_error": errors, "lbfgs_steps": result.num_steps, "sklearn_iter": int(sk.n_iter_[0])},
    )


# --------------------------------------------------------------------------- NUTS
def _min_ess(draws: dict[str, np.ndarray]) -> float:
    """Smallest bulk ESS over every scalar of every site; draws are (chain, draw, ...)."""
    from arviz_stats.base import array_stats

    worst = math.inf
    for value in draws.values():
        flat = value.reshape(value.shape[0], value.shape[1], -1)
        for j in range(flat.shape[-1]):
            worst = min(worst, float(array_stats.ess(flat[..., j], chain_axis=0, draw_axis=1, method="bulk")))
    return worst


@dataclass(frozen=True)
class NutsProblem:
    """A posterior of the NUTS rows: the Pyro program, its data, and the NumPyro process's flags."""

    label: str
    model: Callable
    args: tuple
    numpyro_flags: tuple[str, ...]
    targets: dict[str, str]  # side → target of ours / side ("numpyro", "pyro")


def nuts_problems(only_small: bool = False) -> list[NutsProblem]:
    def logistic(rows: int, features: int) -> NutsProblem:
        X, Y = problems.logistic_nuts_data(rows=rows, features=features)
        size = f"N=10^{round(math.log10(rows))} D={features}" if rows > 1000 else f"N={rows} D={features}"
        return NutsProblem(
            f"logistic {size}",
            problems.bayesian_logistic_model,
            (torch.as_tensor(X), torch.as_tensor(Y)),
            ("--problem", "logistic", "--rows", str(rows), "--features", str(features)),
            {"numpyro": ">= 2.5", "pyro": ">= 3"},
        )

    schools = NutsProblem(
        "eight schools non-centred",
        problems.eight_schools_noncentred,
        (torch.as_tensor(problems.SCHOOLS_SD), torch.as_tensor(problems.SCHOOLS_Y)),
        ("--problem", "schools"),
        {"numpyro": ">= 1"},
    )
    out = [logistic(1000, 10), schools]
    return out if only_small else out + [logistic(10_000, 50)]


def _timed(fn: Callable[[], dict[str, np.ndarray]]) -> dict[str, Any]:
    """Wall and CPU seconds (this process, every thread: nutpie's and torch's) of one run, and
    its smallest bulk ESS."""
    wall, cpu = time.perf_counter(), time.process_time()
    draws = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "min_bulk_ess": _min_ess(draws)}


def nuts(repeats: int, env: dict[str, str], chains: int = 1, quick: bool = False, low_rank: bool = True) -> list[Row]:
    """NUTS min-bulk ESS per CPU-second (500 warm-up + 500 draws, ``chains`` chains on every side).

    Sides, interleaved in this process with a rotating order, seeds 0 … repeats−1:
    pyro_mle (nutpie, ``adaptation="diag"``; and ``"low_rank"`` for context), and raw Pyro NUTS
    with ``jit_compile=True`` (what ``posterior`` ran before nutpie; ``sampler="pyro"`` today
    runs the same engine on the checked potential). Every pyro_mle call traces, checks and
    compiles its potential: that cost is in its time. Each problem's first call is run before
    the timed ones and recorded as ``first_call`` in the details (after ``import nutpie``, whose
    CPU time is recorded apart, as NumPyro's imports are).
    NumPyro runs in a fresh process per repeat, its time from building the sampler (JIT
    compilation included, imports not).

    CPU time, not wall time: the shared machine's load moves wall times by 2–5× between runs;
    the CPU seconds a run consumed hardly depend on it (wall times are in the details).
    """
    from pyro.infer import MCMC, NUTS

    rows: list[Row] = []
    try:
        import numpyro
    except ImportError:
        numpyro = None
    # imports are left out on every side (NumPyro's process times them apart); nutpie's pulls in
    # ArviZ with its plotting stack
    cpu = time.process_time()
    import nutpie  # noqa: F401

    import_cpu_s = time.process_time() - cpu
    for problem in nuts_problems(only_small=quick):

        def raw(seed: int, problem=problem) -> dict[str, np.ndarray]:
            pyro.set_rng_seed(seed)
            kernel = NUTS(problem.model, jit_compile=True, ignore_jit_warnings=True)
            mcmc = MCMC(kernel, num_samples=500, warmup_steps=500, num_chains=chains, disable_progbar=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace deprecation
                mcmc.run(*problem.args)
            samples = mcmc.get_samples(group_by_chain=True)
            return {k: v.numpy() for k, v in samples.items()}

        def ours(seed: int, adaptation: str = "diag", problem=problem) -> dict[str, np.ndarray]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pyro_mle.DiagnosticWarning)
                post = pyro_mle.posterior(
                    problem.model,
                    *problem.args,
                    num_samples=500,
                    warmup=500,
                    chains=chains,
                    seed=seed,
                    progress=False,
                    adaptation=adaptation,
                )
            return {k: v.numpy() for k, v in post.samples.items()}

        sides: dict[str, Callable[[int], dict[str, np.ndarray]]] = {"ours": ours}
        if low_rank:
            sides["ours_low_rank"] = lambda seed, ours=ours: ours(seed, "low_rank")
        if "pyro" in problem.targets:
            sides["pyro"] = raw
        first_call = _timed(lambda: ours(10_000))  # untimed warm-up of the side; recorded
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        names = list(sides)
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(_timed(functools.partial(sides[name], r)))
        if numpyro is not None:
            runs["numpyro"] = _numpyro_runs(problem, repeats, chains, env)

        rate = functools.partial(_rate, runs)
        details = {
            "chains": chains,
            "warmup": 500,
            "draws": 500,
            "runs": runs,
            "first_call": first_call,
            "nutpie_import_cpu_s": import_cpu_s,
            "median_wall_s": {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()},
            "median_cpu_s": {k: statistics.median(x["cpu_s"] for x in v) for k, v in runs.items()},
        }
        references = {"pyro": "Pyro NUTS (jit_compile=True)"}
        if numpyro is not None:
            references["numpyro"] = f"NumPyro {numpyro.__version__} (fresh process)"
        for side, target in problem.targets.items():
            if side not in runs:
                rows.append(
                    Row(
                        f"NUTS ESS/CPU-s, {problem.label}",
                        math.nan,
                        math.nan,
                        "NumPyro (not installed)",
                        math.nan,
                        target,
                        "ESS/s",
                    )
                )
                continue
            for mine, suffix, tgt in (("ours", "", target), ("ours_low_rank", ", low_rank", "")):
                if mine not in runs:
                    continue
                rows.append(
                    Row(
                        f"NUTS ESS/CPU-s, {problem.label}{suffix}",
                        rate(mine),
                        rate(side),
                        references[side],
                        rate(mine) / rate(side),
                        tgt,
                        unit="ESS/s",
                        details=details,
                    )
                )
    return rows


def _rate(runs: dict[str, list[dict[str, Any]]], name: str) -> float:
    """Median over the repeats of the smallest bulk ESS per CPU-second."""
    return statistics.median(run["min_bulk_ess"] / run["cpu_s"] for run in runs[name])


def _numpyro_runs(problem: NutsProblem, repeats: int, chains: int, env: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(repeats):
            path = Path(tmp, f"numpyro{seed}.npz")
            command = [sys.executable, "-m", "benchmarks._numpyro_nuts", str(path), "--seed", str(seed)]
            command += [*problem.numpyro_flags, "--chains", str(chains)]
            subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=900)
            with np.load(path) as f:
                draws = {k: f[k] for k in f.files if k not in ("run_s", "cpu_s", "import_s", "version")}
                out.append(
                    {
                        "wall_s": float(f["run_s"]),
                        "cpu_s": float(f["cpu_s"]),
                        "import_s": float(f["import_s"]),
                        "min_bulk_ess": _min_ess(draws),
                    }
                )
    return out


# --------------------------------------------------------------------------- streaming
def streaming(sizes: list[int], batch: int, steps: int, env: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    directory = Path(tempfile.mkdtemp(prefix="pyro_mle_bench_"))
    try:
        for rows in sizes:
            data = directory / str(rows)
            command = [sys.executable, "-m", "benchmarks._streaming"]
            subprocess.run([*command, "write", str(data), str(rows)], cwd=ROOT, env=env, check=True, timeout=900)
            result = data / "result.json"
            subprocess.run(
                [*command, "fit", str(data), "--batch", str(batch), "--steps", str(steps), "--out", str(result)],
                cwd=ROOT,
                env=env,
                check=True,
                timeout=900,
            )
            out.append(json.loads(result.read_text()))
            shutil.rmtree(data)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- report
def _fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit == "ESS/s":
        return f"{value:.1f} ESS/s"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def table(rows: list[Row], streamed: list[dict[str, Any]]) -> str:
    lines = [
        f"{'comparison':<44} {'pyro_mle':>11} {'reference':>11}  {'against':<34} {'ratio':>6}  {'target':<7} met",
    ]
    for r in rows:
        met = {True: "yes", False: "NO", None: ""}[r.met]
        ratio = f"{r.ratio:.2f}" if math.isfinite(r.ratio) else "n/a"
        lines.append(
            f"{r.name:<44} {_fmt(r.ours, r.unit):>11} {_fmt(r.reference, r.unit):>11}  {r.reference_name:<34} "
            f"{ratio:>6}  {r.target:<7} {met}"
        )
    if streamed:
        lines += [
            "",
            f"{'streamed fit (memory-mapped .npy)':<34} {'rows/s (Adam)':>14} {'rows/s (NLL sweep)':>19} "
            f"{'peak anon MiB':>14} {'over baseline':>14} {'peak RSS MiB':>13}",
        ]
        for s in streamed:
            lines.append(
                f"{'N=10^' + str(round(math.log10(s['rows']))) + f', batch {s["batch"]}, {s["steps"]} steps':<34} "
                f"{s['train_rows_per_s']:>14,.0f} {s['sweep_rows_per_s']:>19,.0f} {s['peak_anon_mib']:>14.0f} "
                f"{s['peak_anon_mib'] - s['baseline_anon_mib']:>14.1f} {s['peak_rss_mib']:>13.0f}"
            )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import sklearn

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "pyro_mle": pyro_mle.__version__,
    }
    try:
        import jax
        import numpyro

        out.update(numpyro=numpyro.__version__, jax=jax.__version__)
    except ImportError:
        pass
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a minute or two)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument(
        "--only", nargs="+", choices=["adam", "adam-load", "lstsq", "logistic", "nuts", "streaming", "csv"]
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per comparison (default 5, quick 3)")
    parser.add_argument("--threads", type=int, help="torch and BLAS threads (default: the libraries' own)")
    parser.add_argument("--chains", type=int, default=1, help="NUTS chains on every side of the nuts rows (default 1)")
    args = parser.parse_args(argv)
    only = set(args.only or ["adam", "adam-load", "lstsq", "logistic", "nuts", "streaming", "csv"])
    repeats = args.repeats or (3 if args.quick else 5)
    env = dict(os.environ)
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
        if args.threads == 1:  # NumPyro's XLA: one thread for its kernels too
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows: list[Row] = []
    streamed: list[dict[str, Any]] = []
    if "adam" in only:
        rows += adam(10_000, 1000, repeats, context=not args.quick)
        rows += adam(1_000_000, 200, max(1, repeats - 2), context=False)
    if "adam-load" in only:
        rows += adam(10_000, 300 if args.quick else 1000, repeats, context=False, loaded=True)
    sizes = (10_000, 100_000, 1_000_000) if not args.quick else (10_000, 100_000)
    if "lstsq" in only:
        for n in sizes:
            rows += [lstsq(n, repeats, first=True), lstsq(n, repeats)]
    if "logistic" in only:
        for n in sizes:
            rows += [logistic(n, repeats, first=True), logistic(n, repeats)]
    if "csv" in only:
        from .csv_read import csv_read

        rows.append(csv_read(1_000_000, max(1, repeats - 2)))
    if "nuts" in only:
        rows += nuts(3 if args.quick else max(3, repeats), env, chains=args.chains, quick=args.quick)
    if "streaming" in only:
        sizes = [100_000, 1_000_000] + ([] if args.quick else [10_000_000])
        streamed = streaming(sizes, batch=10_000, steps=300, env=env)
    text = table(rows, streamed)
    print(text)
    report = {
        "command": "python -m benchmarks.run" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "versions": _versions(),
        "wall_s": time.perf_counter() - start,
        "comparisons": [dict(asdict(r), met=r.met) for r in rows],
        "streaming": streamed,
        "table": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sites of one sequential loop stacked into one variable with a step dim.

A ``pyro.markov`` (or plain Python) loop names one site per step::

    for t in pyro.markov(range(1, T)):
        pyro.sample(f"y_{t}", dist.Normal(rho * y[t - 1], sigma), obs=y[t])

and the converter would write ``T - 1`` variables ``y_1 … y_{T-1}``, each one observation,
which ``arviz_stats.loo`` cannot read as one data set. ``stack={"y": r"y_\\d+"}`` (a regular
expression matched against whole site names) or ``stack=True`` (every family ``name_<int>`` of
two or more sites) makes them one variable ``y`` with a new dim ``y_dim_0`` after the sample
dims, steps ordered by the number in their names: the layout ArviZ's NumPyro converter gives
the same model written with ``numpyro.contrib.control_flow.scan``. Every group is stacked
alike (posterior for latent loops, the observation groups, prior and predictions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import xarray as xr

from .diagnostics import warn

_STEP = re.compile(r"^(?P<base>.+?)_(?P<step>\d+)$")
_SAMPLE_DIMS = ("chain", "draw")


def loop_families(names: Iterable[str]) -> dict[str, list[str]]:
    """``name_<int>`` families of two or more names: base → members, in step order."""
    families: dict[str, list[tuple[int, str]]] = {}
    for n in names:
        m = _STEP.match(n)
        if m:
            families.setdefault(m["base"], []).append((int(m["step"]), n))
    return {base: [n for _, n in sorted(members)] for base, members in families.items() if len(members) > 1}


def _step_key(name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in re.findall(r"\d+", name))


def resolve(spec: bool | Mapping[str, str] | None, names: Iterable[str]) -> dict[str, list[str]]:
    """Stacked variable → its member variables (in step order), from ``stack=`` and the
    variable names of the tree."""
    names = list(dict.fromkeys(names))
    if spec is None or spec is False:
        return {}
    if spec is True:
        return loop_families(names)
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"to_datatree: stack must be True or a mapping variable → regular expression of its sites, e.g. "
            f"stack={{'y': r'y_\\d+'}}; got {spec!r}."
        )
    out = {}
    for var, pattern in spec.items():
        members = sorted((n for n in names if re.fullmatch(pattern, n)), key=_step_key)
        if len(members) < 1:
            raise ValueError(
                f"to_datatree: stack={{{var!r}: {pattern!r}}} matches no site; sites: {names}. The pattern must "
                "match whole site names, e.g. r'y_\\d+' for y_0, y_1, …"
            )
        out[var] = members
    return out


def hint(names: Iterable[str]) -> None:
    """Warn when observation variables look like the steps of one loop and are not stacked."""
    families = loop_families(names)
    if families:
        base, members = next(iter(families.items()))
        warn(
            [
                f"to_datatree: the observed sites {members[0]!r} … {members[-1]!r} ({len(members)} sites) look like "
                "the steps of one sequential loop: each is a variable of its own, and arviz_stats.loo needs one "
                f"variable with an observation dim. Stack them: to_datatree(..., stack={{{base!r}: "
                f"r'{re.escape(base)}_\\d+'}}) or stack=True."
            ]
        )


def _step_number(name: str, position: int) -> int:
    key = _step_key(name)
    return key[-1] if key else position


def _stack_dataset(ds: xr.Dataset, var: str, members: list[str], group: str, dropped: dict) -> xr.Dataset:
    """``members`` of ``ds`` stacked into ``var``. A member with no values (a step masked out
    whole, ``poutine.mask(mask=False)`` or ``obs_mask=False``) is left out, recorded in
    ``dropped[var]``, and the step dim's coordinate is then the step numbers of the sites kept
    (a NaN in its place would make ``arviz_stats.loo`` NaN)."""
    present = [m for m in members if m in ds.data_vars]
    if not present:
        return ds
    empty = [m for m in present if ds[m].size == 0]
    if empty and len(empty) < len(present):
        dropped.setdefault(var, set()).update(empty)
        ds = ds.drop_vars(empty)
        members = [m for m in members if m not in empty]
        present = [m for m in present if m not in empty]
    if len(present) != len(members):
        absent = [m for m in members if m not in ds.data_vars]
        raise ValueError(
            f"to_datatree: stack {var!r}: group {group!r} holds {present} but not {absent}; a stacked variable's "
            "sites must all be latent or all observed."
        )
    if var in ds.data_vars and var not in present:
        raise ValueError(
            f"to_datatree: stack {var!r}: group {group!r} already has a variable {var!r}; name the stacked "
            "variable differently."
        )
    shapes = {m: ds[m].shape for m in present}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"to_datatree: stack {var!r}: its sites differ in shape, {shapes}; they cannot be stacked.")
    parts = []
    for m in present:
        da = ds[m]
        rename = {d: f"{var}_dim_{int(d[len(m) + 5 :]) + 1}" for d in da.dims if d.startswith(f"{m}_dim_")}
        da = da.rename(rename)
        parts.append(da.drop_vars([c for c in da.coords if c not in da.dims]).reset_coords(drop=True))
    new = xr.concat(parts, dim=f"{var}_dim_0", coords="minimal", compat="override", join="override")
    lead = [d for d in _SAMPLE_DIMS if d in new.dims]
    new = new.transpose(*lead, f"{var}_dim_0", ...)
    steps = range(len(present))
    if var in dropped:  # the steps kept, by number
        steps = [_step_number(m, i) for i, m in enumerate(members) if m in present]
    new = new.assign_coords({f"{var}_dim_0": steps})
    out = ds.drop_vars(present)
    # coords of the members' own dims go with them
    out = out.drop_vars([c for c in out.coords if c not in {d for v in out.data_vars.values() for d in v.dims}])
    return out.assign({var: new})


def stack_tree(dt: xr.DataTree, groups: Mapping[str, list[str]]) -> None:
    """Stack ``groups`` (variable → member variables) in every group of ``dt``, in place."""
    if not groups:
        return
    dropped: dict[str, set] = {}
    # the groups with dropped steps first, so that every group gets the step-number coordinate
    names = sorted(dt.children, key=lambda g: not any(_has_empty(dt[g], m) for ms in groups.values() for m in ms))
    for name in names:
        ds = dt[name].to_dataset()
        attrs = dict(ds.attrs)
        for var, members in groups.items():
            ds = _stack_dataset(ds, var, members, name, dropped)
        ds.attrs = attrs
        dt[name] = xr.DataTree(ds)
    for var, empty in dropped.items():
        sites = sorted(empty, key=_step_key)
        warn(
            [
                f"to_datatree: stack {var!r}: the sites {sites} are masked out whole (no observed value), so they are "
                f"left out of {var!r}; its dim {var + '_dim_0'!r} is labelled with the step numbers of the sites kept."
            ]
        )


def _has_empty(node: xr.DataTree, name: str) -> bool:
    return name in node.data_vars and node[name].size == 0

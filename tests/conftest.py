"""Shared checks of the test suite (fixtures only; nothing here runs around other tests)."""

import numpy as np
import pytest


def _same_groups(ours_tree, ref_tree, dtypes=True, groups=("posterior", "log_likelihood", "observed_data")):
    """Our DataTree against a reference converter's (``arviz_base.from_numpyro``) on the same
    draws: the same variables in each group, with the same dims (and dtypes), values to 1e-10."""
    for group in groups:
        ours, theirs = ours_tree[group].to_dataset(), ref_tree[group].to_dataset()
        assert set(ours.data_vars) == set(theirs.data_vars), group
        for name in theirs.data_vars:
            assert ours[name].dims == theirs[name].dims, (group, name)
            if dtypes:
                assert ours[name].dtype == theirs[name].dtype, (group, name)
            np.testing.assert_allclose(ours[name].values, theirs[name].values, rtol=1e-10, err_msg=f"{group}/{name}")


@pytest.fixture
def same_groups():
    """:func:`_same_groups`, the group-by-group comparison with a reference DataTree."""
    return _same_groups

"""exprc.config: Config's checks of its fields."""

from __future__ import annotations

import numpy as np
import pytest

import exprc


@pytest.mark.parametrize("bad", [1, 0, 1.0, np.True_, "math", 2])
def test_row_fusion_is_none_true_or_false(bad):
    """row_fusion is tri-state; 1 or 0.0 (equal to True/False, not them) are refused like any other
    value, so a config's repr (part of the graph index key) has one spelling per meaning."""
    with pytest.raises(ValueError, match="row_fusion must be None, True or False"):
        exprc.Config(row_fusion=bad)
    for good in (None, True, False):
        assert exprc.Config(row_fusion=good).row_fusion is good


@pytest.mark.parametrize("bad", ["-1", "1e9", "512MiB", " 5", "0x10", "\u00b2", "\u0663", str(1 << 63)])
def test_pool_bytes_from_the_environment_is_a_number_of_bytes(bad):
    from exprc.config import _pool_bytes

    with pytest.raises(ValueError, match="EXPRC_POOL_BYTES must be a number of bytes"):
        _pool_bytes({"EXPRC_POOL_BYTES": bad})  # (a huge one made every call raise OverflowError)
    assert _pool_bytes({}) is None and _pool_bytes({"EXPRC_POOL_BYTES": "0"}) == 0
    assert _pool_bytes({"EXPRC_POOL_BYTES": "100000000"}) == 100_000_000
    assert _pool_bytes({"EXPRC_POOL_BYTES": str((1 << 63) - 1)}) == (1 << 63) - 1

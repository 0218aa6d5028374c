"""exprc/digest.py: the same SHA-256 digests as hashlib, whichever implementation it picks."""

from __future__ import annotations

import hashlib
import os

import pytest

from exprc import digest


@pytest.mark.parametrize("n", [0, 1, 55, 56, 64, 1000, digest.LARGE, digest.LARGE + 1])
def test_same_digest_as_hashlib(n):
    data = os.urandom(n)
    assert digest.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    h = digest.sha256(size=n)  # incremental, in uneven pieces
    for i in range(0, n, 7919):
        h.update(data[i:i + 7919])
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_large_inputs_take_hashlib():
    small, large = digest.sha256(b"x"), digest.sha256(size=digest.LARGE + 1)
    assert type(large) is type(hashlib.sha256())
    assert digest._builtin is None or type(small) is not type(large)

"""Profile mode: every kernel and NumPy step timed, with exact elements and bytes."""

from __future__ import annotations

import numpy as np

import exprc


def test_profile_counts_calls_elements_and_bytes_per_kernel_and_step():
    x, y = exprc.vector("x"), exprc.matrix("y")
    outs = [exprc.exp(x) * 2.0 + 1.0, exprc.sum(y * x, axis=1), exprc.argmax(y, axis=1)]
    f = exprc.function([x, y], outs, profile=True, backend="c")
    plain = exprc.function([x, y], outs, backend="c")
    X, Y = np.linspace(0, 1, 1000), np.random.default_rng(0).normal(size=(50, 1000))
    for _ in range(3):
        for g, w in zip(f(X, Y), plain(X, Y)):
            np.testing.assert_array_equal(g, w)
    d = f.profile.to_dict()
    rows = {r["name"]: r for r in d["kernels"]}
    ew = next(r for r in d["kernels"] if r["kind"] == "elemwise")
    red = next(r for r in d["kernels"] if r["kind"] == "reduce")
    assert ew["calls"] == red["calls"] == rows["step argmax"]["calls"] == 3
    assert ew["elements"] == 1000 and ew["bytes"] == 2 * 1000 * 8  # x read, the result written
    assert red["elements"] == 50 * 1000 and red["bytes"] == (50 * 1000 + 1000 + 50) * 8  # y, x once, the sums
    assert all(r["total_s"] > 0 and r["mean_s"] == r["total_s"] / 3 for r in d["kernels"])
    assert ew["gb_per_s"] > 0 and 0 < d["bandwidth_gb_per_s"] < 10_000
    assert {"optimize", "lower", "render", "load"} <= set(d["compile"]) and min(d["compile"].values()) >= 0
    text = str(f.profile)
    assert ew["name"] in text and "step argmax" in text and "compile: optimize" in text
    assert plain.profile is None


def test_profile_by_config_times_loops_as_a_whole():
    h0, xs = exprc.vector("h0"), exprc.matrix("xs")
    hs, _ = exprc.scan(lambda x_t, h: exprc.tanh(h + x_t), sequences=[xs], outputs_info=[h0], name="rnn")
    f = exprc.function([h0, xs], hs[-1], config=exprc.Config(profile=True))
    XS = np.ones((7, 3)) * 0.1
    want = np.zeros(3)
    for row in XS:
        want = np.tanh(want + row)
    for _ in range(2):
        np.testing.assert_allclose(f(np.zeros(3), XS), want, rtol=1e-15)
    rows = f.profile.to_dict()["kernels"]
    loop = [r for r in rows if r["kind"] == "loop"]
    assert len(loop) == 1 and loop[0]["calls"] == 2 and loop[0]["name"] == "scan rnn" and loop[0]["total_s"] > 0
    assert "optimize" in f.profile.to_dict()["compile"]

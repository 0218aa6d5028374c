"""The graph index (exprc/graph_index.py): a warm function() skips optimize, lowering and rendering,
and every record that is not exactly right is a miss that the full path repairs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import exprc
from exprc import cache, graph_index
from exprc.backends.c import compile as cc
from exprc.config import Config, current
from exprc.function import clear_memo
from exprc.printing import pprint
from exprc.rewrite import core

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(cc.probe(Config(cache=False)) is not None, reason="no working C compiler")


@pytest.fixture
def index_cache(cache_dir, monkeypatch):
    """conftest's fresh cache, with the index on whatever ran before in this process."""
    monkeypatch.delenv("EXPRC_GRAPH_INDEX", raising=False)
    # Tests that ran before in this process may have registered rules of their own, which turns the
    # index off (as it must for a user); none of them matches the graphs here.
    generation = core.GENERATION[0]
    core.GENERATION[0] = 0
    clear_memo()
    yield cache_dir
    clear_memo()
    core.GENERATION[0] = generation


def _graph():
    a, b = exprc.vector("a"), exprc.vector("b")
    e = a
    for i in range(5):
        e = exprc.sin(e) * b + exprc.log1p(b * b) * (i + 1.0)
    return a, b, e


def _records(d: Path) -> list[Path]:
    """The records in cache folder ``d`` (its one root, per exprc version and Python)."""
    folders = list(d.glob(f"*/{graph_index.FOLDER}"))
    return sorted(p for f in folders for p in f.iterdir() if not p.name.startswith("."))


def _no_full_path(monkeypatch):
    """Make the full compile path (optimize -> build) fail loudly: a hit must not reach it."""
    fn = sys.modules["exprc.function"]  # (the module: exprc.function is the function)

    def boom(*args, **kwargs):
        raise AssertionError("the full compile path ran")

    monkeypatch.setattr(fn, "_compile", boom)


def test_hit_skips_the_compile_and_gives_the_same_function(index_cache, monkeypatch):
    a, b, e = _graph()
    f = exprc.function([a, b], e)
    assert len(_records(index_cache)) == 1
    x, y = np.linspace(-3, 3, 101), np.linspace(-2, 5, 101)
    expected = f(x, y)
    clear_memo()
    _no_full_path(monkeypatch)
    g = exprc.function([a, b], e)
    np.testing.assert_array_equal(g(x, y), expected)
    assert pprint(list(g.graph.outputs)) == pprint(list(f.graph.outputs))
    assert g.rewrites == f.rewrites and g.rewrites
    assert g.graph.inputs == (a, b)  # the record's inputs are the caller's own nodes
    assert g._kernel.cache_entry == f._kernel.cache_entry
    # a strided input and a broadcast one go through the same restored plan machinery
    np.testing.assert_array_equal(g(x[::2], y[::2]), expected[::2])
    assert "exprc_run" in g.source and g.source == f.source  # rendered on demand


def test_renamed_inputs_share_a_record_and_keep_their_own_names(index_cache, monkeypatch):
    a, b, e = _graph()
    exprc.function([a, b], e)
    p, q = exprc.vector("p"), exprc.vector("q")
    e2 = exprc.graph.substitute([e], {a: p, b: q})[0]
    clear_memo()
    _no_full_path(monkeypatch)
    g = exprc.function([p, q], e2)
    assert g.graph.inputs == (p, q)
    with pytest.raises(exprc.errors.InputError, match="q"):
        g(np.ones(3), np.ones((3, 3)))


def test_key_follows_everything_that_decides_the_kernel(index_cache):
    cfg = current()
    a, b = exprc.vector("a"), exprc.vector("b")
    a32 = exprc.vector("a", dtype="float32")

    def key(ins, out, c=cfg):
        return graph_index.key("c", ins, [out], c)

    base = key([a, b], a * 2.0 + b)
    assert base == key([a, b], a * 2.0 + b) and len(base) == 32
    different = [
        key([a, b], a * 3.0 + b),  # a constant
        key([a, b], a * 2.0000000000000004 + b),  # its last bit
        key([a, b], a * -0.0 + b),
        key([a, b], a * 0.0 + b),
        key([b, a], a * 2.0 + b),  # input order
        key([a, b], a * 2.0 - b),
        key([a32, b], a32 * 2.0 + b),  # a dtype
        key([a, b], a * 2.0 + b, cfg.replace(precise_math=True)),
        key([a, b], a * 2.0 + b, cfg.replace(exclude=("fusion",))),
        key([a, b], a * 2.0 + b, cfg.replace(num_threads=1)),
        key([a, b], exprc.sum(a * 2.0 + b)),
        key([a, b], exprc.sum(a * 2.0 + b, keepdims=True)),
    ]
    assert None not in different
    assert len(set(different + [base])) == len(different) + 1
    # the same function up to the names of its inputs: one record
    assert key([b, a], b * 2.0 + a) == base


def test_key_is_the_same_in_every_process(index_cache):
    code = textwrap.dedent("""
        import exprc
        from exprc import graph_index
        from exprc.config import current
        a, b = exprc.vector("a"), exprc.matrix("b")
        out = exprc.logsumexp(b * a + 1.5, axis=1) - exprc.tanh(a).sum()
        print(graph_index.key("c", [a, b], [out], current()))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(index_cache), "PYTHONHASHSEED": "0"}
    keys = set()
    for seed in ("1", "2"):
        env["PYTHONHASHSEED"] = seed
        out = subprocess.run([sys.executable, "-c", "import numpy as np\n" + code], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        keys.add(out.stdout.strip())
    assert len(keys) == 1 and len(next(iter(keys))) == 32


def test_a_warm_process_loads_no_rules_renderer_or_openssl(index_cache):
    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        import exprc
        from exprc import cache
        a, b = exprc.vector("a"), exprc.vector("b")
        e = a
        for i in range(6):
            e = exprc.sin(e) * b + exprc.log1p(b * b) * (i + 1.0)
        f = exprc.function([a, b], e)
        x = np.linspace(-2, 2, 7)
        r = f(x, x + 1)
        print(json.dumps({"r": r.tolist(), "rewrites": f.rewrites, "compiles": cache.STATS["compiles"],
                          "loaded": sorted(m for m in ("exprc.rewrite.rules", "exprc.backends.c.render",
                                                       "hashlib") if m in sys.modules)}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(index_cache)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      timeout=120, check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    cold, warm = runs
    assert cold["compiles"] == 1 and warm["compiles"] == 0
    assert "exprc.rewrite.rules" in cold["loaded"] and warm["loaded"] == []  # (hashlib: OpenSSL, exprc.digest)
    assert warm["r"] == cold["r"] and warm["rewrites"] == cold["rewrites"]
    x = np.linspace(-2, 2, 7)
    e = x
    for i in range(6):
        e = np.sin(e) * (x + 1) + np.log1p((x + 1) ** 2) * (i + 1.0)
    np.testing.assert_allclose(warm["r"], e, rtol=1e-13)


def _corruptions(record: Path):
    good = record.read_bytes()
    head = len(graph_index.FORMAT) + 65
    payload = good[head:]

    def signed(p: bytes) -> bytes:
        return graph_index.FORMAT + hashlib.sha256(p).hexdigest().encode() + b"\n" + p

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {record.parent / 'pwned'}",))

    yield "truncated", good[: len(good) // 2]
    yield "empty", b""
    yield "garbage", os.urandom(300)
    yield "payload bit flipped", good[:-10] + bytes([good[-10] ^ 1]) + good[-9:]
    yield "checksum of other bytes", signed(payload)[:head] + payload[:-1] + b"\x00"
    yield "other format", b"exprc graph index 0\n" + good[len(graph_index.FORMAT):]
    yield "os.system in a signed pickle", signed(pickle.dumps(Evil()))

    def short(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    # os.system reached as a dotted name through an allowed module (STACK_GLOBAL follows dots)
    gadget = (b"\x80\x04" + short("exprc.graph_index") + short("os.system") + b"\x93"
              + short(f"touch {record.parent / 'pwned'}") + b"\x85R.")
    yield "os.system through exprc.graph_index", signed(gadget)
    yield "a record of the wrong types", signed(pickle.dumps(([], (record.name, 5, None))))
    yield "signed pickle of another shape", signed(pickle.dumps(("x", 1)))

    class Stray(pickle.Pickler):
        def persistent_id(self, obj):
            return 99 if obj == "an input" else None

    buf = io.BytesIO()
    Stray(buf).dump(([], ("r", "an input", None)))
    yield "input index out of range", signed(buf.getvalue())


@pytest.mark.parametrize("case", ["truncated", "empty", "garbage", "payload bit flipped", "checksum of other bytes",
                                  "other format", "os.system in a signed pickle", "os.system through exprc.graph_index",
                                  "a record of the wrong types", "signed pickle of another shape",
                                  "input index out of range"])
def test_a_bad_record_is_a_miss_and_is_rewritten(index_cache, case):
    a, b, e = _graph()
    x, y = np.linspace(-3, 3, 11), np.linspace(-2, 5, 11)
    expected = exprc.function([a, b], e)(x, y)
    (record,) = _records(index_cache)
    good = record.read_bytes()
    bad = dict(_corruptions(record))[case]
    record.write_bytes(bad)
    clear_memo()
    np.testing.assert_array_equal(exprc.function([a, b], e)(x, y), expected)
    assert not (record.parent / "pwned").exists()
    assert record.read_bytes() == good  # the full path wrote it again (the same bytes: deterministic)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "writable by others"])
def test_a_record_that_is_not_a_regular_file_is_a_miss(index_cache, kind, tmp_path, monkeypatch):
    a, b, e = _graph()
    x = np.linspace(-1, 1, 5)
    expected = exprc.function([a, b], e)(x, x)
    (record,) = _records(index_cache)
    good = record.read_bytes()
    record.unlink()
    if kind == "fifo":
        os.mkfifo(record)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(good)
        record.symlink_to(tmp_path / "elsewhere")
    elif kind == "directory":
        record.mkdir()
    else:  # (another user could have put anything there: not read, as such a library is not loaded)
        record.write_bytes(good)
        record.chmod(0o666)
        clear_memo()
        _no_full_path(monkeypatch)
        with pytest.raises(AssertionError, match="full compile path"):
            exprc.function([a, b], e)
        return
    clear_memo()
    np.testing.assert_array_equal(exprc.function([a, b], e)(x, x), expected)  # no hang, no error


def test_an_evicted_library_is_rebuilt(index_cache):
    a, b, e = _graph()
    x = np.linspace(-1, 1, 5)
    f = exprc.function([a, b], e)
    expected = f(x, x)
    assert cache.evict(f._kernel.cache_entry)
    clear_memo()
    before = cache.STATS["compiles"]
    g = exprc.function([a, b], e)
    np.testing.assert_array_equal(g(x, x), expected)
    assert cache.STATS["compiles"] == before + 1


def test_what_is_not_indexed(index_cache, monkeypatch):
    a, b, e = _graph()
    x = np.linspace(-1, 1, 5)
    monkeypatch.setenv("EXPRC_GRAPH_INDEX", "0")
    exprc.function([a, b], e)(x, x)
    assert _records(index_cache) == []
    monkeypatch.delenv("EXPRC_GRAPH_INDEX")
    exprc.function([a, b], e, profile=True)(x, x)
    exprc.function([a, b], e, backend="numpy")(x, x)
    s = exprc.shared(np.ones(5), name="s")
    exprc.function([a], a * s + 1.0)(x)
    exprc.function([a], a * 3.0, updates=[(s, s * 2.0)])(x)
    exprc.function([a], exprc.log(1 + a), accuracy="search", domain={a: (0.0, 1.0)})
    assert _records(index_cache) == []
    assert graph_index.key("c", [a], [a * 2.0], current().replace(cache=False)) is not None  # (the key is)
    assert not graph_index.enabled(current().replace(cache=False))


def test_user_rules_and_custom_ops_turn_it_off(index_cache):
    code = textwrap.dedent("""
        import json
        import exprc
        from exprc import graph_index
        from exprc.config import current
        x = exprc.vector("x")
        before = graph_index.key("c", [x], [exprc.exp(x) + 1.0], current())
        from exprc.rewrite import P, X
        op = exprc.custom_op("twice_gi", numpy=lambda v: 2.0 * v, c="(2.0 * {0})")
        plain = graph_index.key("c", [x], [exprc.exp(x) + 1.0], current())
        custom = graph_index.key("c", [x], [op(x) + 1.0], current())

        @exprc.rewrite_rule("gi_test_rule", tags=("canonicalize",), pattern=P("exp", X("x")))
        def _never(node, x):
            return None

        after = graph_index.key("c", [x], [exprc.exp(x) + 1.0], current())
        print(json.dumps([before, plain, custom, after]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(index_cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    before, plain, custom, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before is not None and plain == before  # defining an op does not touch other graphs
    assert custom is None and after is None


def test_a_deep_graph_is_indexed(index_cache, monkeypatch):
    x = exprc.vector("x")
    e = x
    for i in range(3000):
        e = e * 0.999 + (i % 7) if i % 2 else exprc.abs(e) - 0.5
    f = exprc.function([x], e)
    assert len(_records(index_cache)) == 1
    v = np.linspace(-2, 2, 9)
    expected = f(v)
    clear_memo()
    _no_full_path(monkeypatch)
    np.testing.assert_array_equal(exprc.function([x], e)(v), expected)


def test_code_fingerprint_follows_the_files(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "t.h").write_text("int f;\n")
    first = graph_index.code_fingerprint(str(pkg))
    (pkg / "sub" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    graph_index.code_fingerprint.cache_clear()
    assert graph_index.code_fingerprint(str(pkg)) == first  # bytecode is not code
    (pkg / "sub" / "t.h").write_text("int g_;\n")
    graph_index.code_fingerprint.cache_clear()
    second = graph_index.code_fingerprint(str(pkg))
    assert second != first
    os.utime(pkg / "a.py", ns=(1, 1))
    graph_index.code_fingerprint.cache_clear()
    assert graph_index.code_fingerprint(str(pkg)) not in (first, second)
    graph_index.code_fingerprint.cache_clear()


def test_records_are_pruned_least_recently_used_first(index_cache, monkeypatch):
    monkeypatch.setattr(graph_index, "MAX_RECORDS", 4)
    x = exprc.vector("x")
    keys = []
    for k in range(4):
        exprc.function([x], x * (k + 2.0) + 1.0)
        keys.append(graph_index.key("c", [x], [x * (k + 2.0) + 1.0], current()))
    folder = _records(index_cache)[0].parent
    for i, key in enumerate(keys):  # written long ago, the first one used since
        os.utime(folder / key, (1000.0 + i, 1000.0 + i))
    clear_memo()
    exprc.function([x], x * 2.0 + 1.0)  # a hit on the first: now the most recently used
    (folder / "stray").write_bytes(b"")
    (folder / ".tmp-old").write_bytes(b"")
    os.utime(folder / ".tmp-old", (1000.0, 1000.0))
    exprc.function([x], x * 9.0 + 1.0)  # a fifth record and a stray file: 6 > 4, the oldest 3 go
    names = {p.name for p in _records(index_cache)}
    assert keys[0] in names and keys[1] not in names and keys[2] not in names
    assert not (folder / ".tmp-old").exists()


def test_restored_constants_are_the_interned_ones_in_another_process(index_cache):
    """A constant's hash is of its bytes, which Python salts per process: the record must not carry
    the storing process's, or 2.5 in the restored graph would be another node than a new 2.5."""
    code = textwrap.dedent("""
        import json
        import numpy as np
        import exprc
        from exprc.graph import toposort
        x = exprc.vector("x")
        f = exprc.function([x], x * 2.5 + 1.25)
        consts = [n for n in toposort(list(f.graph.outputs)) if n.op == "constant"]
        same = all(exprc.graph.constant_node(n.value, n.dtype) is n for n in consts)
        print(json.dumps({"same": same, "n": len(consts), "r": f(np.array([2.0])).tolist()}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPRC_CACHE_DIR": str(index_cache)}
    out = []
    for seed in ("1", "2"):
        env["PYTHONHASHSEED"] = seed
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                             check=True)
        out.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert len(_records(index_cache)) == 1
    assert out[0]["n"] >= 1 and all(o["same"] for o in out) and out[0]["r"] == out[1]["r"] == [6.25]


def test_unused_inputs_are_part_of_the_key(index_cache):
    x, y = exprc.vector("x"), exprc.vector("y")
    y_int = exprc.matrix("y", dtype="int32")
    assert graph_index.key("c", [x, y], [x * 2.0], current()) != graph_index.key("c", [x, y_int], [x * 2.0],
                                                                                     current())
    assert graph_index.key("c", [x, y], [x * 2.0], current()) != graph_index.key("c", [x], [x * 2.0], current())

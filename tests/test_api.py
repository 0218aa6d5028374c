"""The public API: names are a contract; variables, constructors, build-time shape errors."""

import numpy as np
import pytest

import exprc
from exprc.errors import ShapeError

CONTRACT = str.split("""scalar vector matrix tensor3 tensor constant exp exp2 expm1 log log2 log10 log1p sqrt cbrt square
reciprocal sin cos tan arcsin arccos arctan arctan2 sinh cosh tanh arcsinh arccosh arctanh sigmoid softplus erf erfc
floor ceil round sign abs minimum maximum clip where hypot logaddexp isnan isinf isfinite sum prod mean max min var
std logsumexp argmax argmin all any softmax log_softmax dot matmul reshape transpose expand_dims squeeze broadcast_to
concatenate stack equal not_equal function jit optimize pprint debugprint to_networkx from_networkx Function errors
astype""")


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_names_exist(name):
    assert hasattr(exprc, name) and name in exprc.__all__


def test_variable_constructors():
    assert exprc.scalar("s").type.shape == ()
    v = exprc.vector("v", "int32")
    assert v.dtype == "int32" and v.ndim == 1 and v.name == "v"
    assert exprc.matrix("m", shape=(2, None)).type.shape == (2, None)
    assert exprc.tensor3("t", np.float32).type.shape == (None, None, None)
    assert exprc.tensor("u", "bool", ndim=4).ndim == 4
    assert exprc.tensor("w", shape=(1, 3)).type.broadcastable == (True, False)
    with pytest.raises(TypeError):
        exprc.tensor("z")
    with pytest.raises(ShapeError):
        exprc.tensor("z", ndim=2, shape=(1,))
    with pytest.raises(ShapeError):
        exprc.vector("z", shape=(-1,))
    with pytest.raises(exprc.errors.DTypeError):
        exprc.vector("z", "complex128")


def test_equality_is_identity_and_comparisons_are_bool():
    x, y = exprc.vector("x"), exprc.vector("y")
    same = x
    assert (x == y) is False and (x == same) is True and (x != y) is True
    for e in (x < y, x <= y, x > y, x >= y, exprc.equal(x, y), exprc.not_equal(x, y)):
        assert e.dtype == "bool"
    d = {x: np.array([1.0, 2.0]), y: np.array([2.0, 2.0])}
    np.testing.assert_array_equal(exprc.equal(x, y).eval(d), [False, True])
    np.testing.assert_array_equal(exprc.not_equal(x, y).eval(d), [True, False])


@pytest.mark.parametrize("build", [
    lambda: exprc.vector("a", shape=(3,)) + exprc.vector("b", shape=(4,)),
    lambda: exprc.maximum(exprc.matrix("a", shape=(2, 3)), exprc.matrix("b", shape=(3, 2))),
    lambda: exprc.where(exprc.vector("c", "bool", shape=(2,)), exprc.vector("a", shape=(3,)), 0.0),
])
def test_broadcast_errors_name_op_and_shapes(build):
    with pytest.raises(ShapeError) as exc:
        build()
    msg = str(exc.value)
    assert msg.split(":")[0] in ("add", "maximum", "where")
    assert msg.count("(") >= 2 and "cannot be broadcast" in msg


def test_dot_shape_errors():
    with pytest.raises(ShapeError, match=r"^dot: shapes \(3,\) and \(4,\) are not aligned"):
        exprc.dot(exprc.vector("a", shape=(3,)), exprc.vector("b", shape=(4,)))
    with pytest.raises(ShapeError, match=r"^dot: shapes \(2, 3\) and \(2, 3\)"):
        exprc.dot(exprc.matrix("a", shape=(2, 3)), exprc.matrix("b", shape=(2, 3)))
    # 3-d operands follow np.dot's rule since issue 14 (tests/test_creation.py checks the values)
    assert exprc.dot(exprc.tensor3("a", shape=(2, 3, 4)), exprc.vector("b", shape=(4,))).type.shape == (2, 3)
    with pytest.raises(ShapeError, match=r"^matmul: .*\(3, 4\) and \(5,\)"):
        exprc.matrix("a", shape=(3, 4)) @ exprc.vector("b", shape=(5,))
    with pytest.raises(ShapeError, match="matmul"):
        exprc.matmul(exprc.scalar("a"), exprc.vector("b"))


def test_other_build_time_errors():
    x = exprc.matrix("x", shape=(2, 3))
    with pytest.raises(ShapeError, match="reshape"):
        x.reshape(4, 2)
    with pytest.raises(ShapeError, match="squeeze"):
        exprc.squeeze(x, 0)
    with pytest.raises(ShapeError, match="concatenate"):
        exprc.concatenate([x, exprc.matrix("y", shape=(3, 3))], axis=1)
    with pytest.raises(ShapeError, match="broadcast_to"):
        exprc.broadcast_to(x, (3, 3))
    with pytest.raises(ShapeError, match="out of bounds"):
        x.sum(axis=2)
    with pytest.raises(IndexError, match="out of bounds"):
        x[5]
    with pytest.raises(IndexError, match="too many"):
        x[0, 0, 0]
    with pytest.raises(ShapeError, match="transpose"):
        x.transpose(0, 0)
    with pytest.raises(TypeError):
        x + "a"


def test_static_shapes_propagate():
    x = exprc.matrix("x", shape=(2, 3))
    assert (x + exprc.vector("v", shape=(3,))).type.shape == (2, 3)
    assert x.sum(axis=0).type.shape == (3,)
    assert x.sum(axis=0, keepdims=True).type.shape == (1, 3)
    assert x[:, 1:].type.shape == (2, 2)
    assert x[None, ..., ::2].type.shape == (1, 2, 2)
    assert x.T.type.shape == (3, 2)
    assert (x @ exprc.matrix("y", shape=(3, 5))).type.shape == (2, 5)
    assert exprc.concatenate([x, x]).type.shape == (4, 3)
    assert exprc.stack([x, x], axis=1).type.shape == (2, 2, 3)
    assert x.reshape(-1).type.shape == (6,)

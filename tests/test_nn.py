"""Module base class, Embedding, Linear (with weight tying), Dropout and the losses.

Forward and backward are checked against PyTorch autograd in float64 (relative error <= 1e-9)
and float32 (<= 1e-5); the rest checks the module conventions and every input error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lstmkit.nn import Dropout, Embedding, Linear, Module, mse_loss, softmax_cross_entropy
from lstmkit.nn.module import resolve_dtype, resolve_rng
from lstmkit.optim import SGD

TOL = {np.float64: 1e-9, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is needed for the parity tests")


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def t(torch, array, grad=False):
    return torch.tensor(np.array(array), requires_grad=grad)


# ------------------------------------------------------------------------------------------
# Module


class Scale(Module):
    """y = w * x, the smallest module with a parameter."""

    def __init__(self):
        super().__init__()
        self.add_param("w", np.array([2.0, 3.0]))

    def forward(self, x):
        self.x = x
        return self.params["w"] * x

    def backward(self, dout):
        self.grads["w"] += (dout * self.x).sum(axis=0)
        return dout * self.params["w"]


def test_module_children_share_arrays_and_modes():
    parent, child, drop = Module(), Scale(), Dropout(0.5)
    parent.add_module("scale", child)
    parent.add_module("drop", drop)
    assert parent.params["scale.w"] is child.params["w"]
    assert parent.grads["scale.w"] is child.grads["w"]
    assert parent.eval() is parent and not parent.training and not drop.training
    parent.train()
    assert drop.training and child.training
    child(np.ones((4, 2)))
    child.backward(np.ones((4, 2)))
    np.testing.assert_array_equal(parent.grads["scale.w"], [4.0, 4.0])
    grad = child.grads["w"]
    parent.zero_grad()
    assert child.grads["w"] is grad and not grad.any()
    with pytest.raises(ValueError, match="already has a child named 'scale'"):
        parent.add_module("scale", Scale())
    with pytest.raises(ValueError, match="without '.'"):
        parent.add_module("a.b", Scale())
    with pytest.raises(TypeError, match="expects a Module"):
        parent.add_module("x", object())
    with pytest.raises(ValueError, match="already has a parameter named 'w'"):
        child.add_param("w", np.zeros(2))
    with pytest.raises(NotImplementedError, match="does not define forward"):
        Module()(np.zeros(1))


def test_state_dict_copies_and_load_copies_in_place():
    m = Scale()
    sd = m.state_dict()
    sd["w"][0] = 100.0
    assert m.params["w"][0] == 2.0
    live = m.params["w"]
    m.load_state_dict({"w": [5, 6]})
    assert m.params["w"] is live
    np.testing.assert_array_equal(live, [5.0, 6.0])
    with pytest.raises(KeyError, match=r"missing keys \['w'\], unexpected keys \['v'\]"):
        m.load_state_dict({"v": np.zeros(2)})
    with pytest.raises(ValueError, match=r"'w' has shape \(3,\), expected \(2,\)"):
        m.load_state_dict({"w": np.zeros(3)})
    np.testing.assert_array_equal(live, [5.0, 6.0])


def test_dtype_and_seed_helpers():
    assert resolve_dtype("float32") == np.float32
    assert resolve_dtype(np.float64) == np.float64
    for bad in ("float16", "int32", "banana", None):
        with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
            resolve_dtype(bad)
    rng = np.random.default_rng(0)
    assert resolve_rng(rng) is rng
    assert resolve_rng(3).random() == np.random.default_rng(3).random()
    with pytest.raises(TypeError, match="seed must be None, an int"):
        resolve_rng(1.5)


# ------------------------------------------------------------------------------------------
# Embedding


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_matches_torch(torch, dtype, padding_idx):
    emb = Embedding(11, 5, padding_idx=padding_idx, dtype=np.dtype(dtype).name, seed=0)
    ref = torch.nn.Embedding(11, 5, padding_idx=padding_idx).to(getattr(torch, dtype.__name__))
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(emb.weight))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 11, size=(7, 4))
    x[0, :2] = 3  # repeated indices, and the padding row
    dout = rng.standard_normal((7, 4, 5)).astype(dtype)
    y = emb(x)
    y_ref = ref(torch.tensor(x))
    assert y.dtype == dtype and y.shape == (7, 4, 5)
    assert rel_err(y, y_ref.detach().numpy()) <= TOL[dtype]
    emb.backward(dout)
    y_ref.backward(torch.tensor(dout))
    assert rel_err(emb.grads["weight"], ref.weight.grad.numpy()) <= TOL[dtype]
    if padding_idx is not None:
        assert not emb.weight[padding_idx].any() and not emb.grads["weight"][padding_idx].any()


def test_embedding_accumulates_and_handles_any_index_shape():
    emb = Embedding(6, 3, dtype="float64", seed=0)
    x = np.array([[1, 1], [5, 0]])
    y = emb(x)
    np.testing.assert_array_equal(y[0, 1], emb.weight[1])
    emb.backward(np.ones((2, 2, 3)))
    emb.backward(np.ones((2, 2, 3)))
    np.testing.assert_array_equal(emb.grads["weight"][:, 0], [2, 4, 0, 0, 0, 2])
    assert emb(np.int64(4)).shape == (3,)
    assert emb(np.zeros((2, 0, 3), dtype=np.int32)).shape == (2, 0, 3, 3)
    emb.backward(np.zeros((2, 0, 3, 3)))


def test_embedding_init_is_standard_normal_and_seeded():
    w = Embedding(400, 50, seed=7).weight
    assert w.dtype == np.float32 and w.shape == (400, 50)
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1.0) < 0.02
    np.testing.assert_array_equal(w, Embedding(400, 50, seed=7).weight)
    assert not np.array_equal(w, Embedding(400, 50, seed=8).weight)


def test_embedding_errors():
    emb = Embedding(5, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        emb.backward(np.zeros((1, 2)))
    with pytest.raises(IndexError, match=r"must be in \[0, 5\).*e\.g\. 5"):
        emb(np.array([[0, 5]]))
    with pytest.raises(IndexError, match=r"must be in \[0, 5\).*e\.g\. -1"):
        emb(np.array([-1, 2]))
    with pytest.raises(TypeError, match="integer index array"):
        emb(np.array([0.0, 1.0]))
    emb(np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"dout has shape \(3, 2\), expected \(1, 3, 2\)"):
        emb.backward(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="num_embeddings must be a positive int"):
        Embedding(0, 2)
    with pytest.raises(ValueError, match="embedding_dim must be a positive int"):
        Embedding(3, 2.5)
    with pytest.raises(ValueError, match=r"padding_idx must be in \[-5, 5\)"):
        Embedding(5, 2, padding_idx=5)


# ------------------------------------------------------------------------------------------
# Linear


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(torch, dtype, bias):
    lin = Linear(6, 4, bias=bias, dtype=np.dtype(dtype).name, seed=0)
    ref = torch.nn.Linear(6, 4, bias=bias).to(getattr(torch, dtype.__name__))
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(lin.weight))
        if bias:
            ref.bias.copy_(torch.tensor(lin.bias))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 6)).astype(dtype)
    dout = rng.standard_normal((5, 3, 4)).astype(dtype)
    xt = t(torch, x, grad=True)
    y_ref = ref(xt)
    y = lin(x)
    assert y.dtype == dtype and y.shape == (5, 3, 4)
    assert rel_err(y, y_ref.detach().numpy()) <= TOL[dtype]
    dx = lin.backward(dout)
    y_ref.backward(torch.tensor(dout))
    assert dx.dtype == dtype
    assert rel_err(dx, xt.grad.numpy()) <= TOL[dtype]
    assert rel_err(lin.grads["weight"], ref.weight.grad.numpy()) <= TOL[dtype]
    assert set(lin.grads) == ({"weight", "bias"} if bias else {"weight"})
    if bias:
        assert rel_err(lin.grads["bias"], ref.bias.grad.numpy()) <= TOL[dtype]


def test_linear_init_bounds_and_seed():
    lin = Linear(25, 300, seed=3)
    assert lin.weight.shape == (300, 25) and lin.bias.shape == (300,)
    assert lin.weight.dtype == np.float32
    assert np.abs(lin.weight).max() <= 0.2 and np.abs(lin.weight).max() > 0.19
    assert np.abs(lin.bias).max() <= 0.2
    np.testing.assert_array_equal(lin.weight, Linear(25, 300, seed=3).weight)
    y = lin(np.ones((2, 25)))  # float64 data into a float32 layer: cast, result float32
    assert y.dtype == np.float32 and lin.backward(np.ones((2, 300))).dtype == np.float32


def test_linear_errors():
    lin = Linear(3, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        lin.backward(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"input of shape \(\.\.\., 3\), got \(4, 2\)"):
        lin(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"input of shape \(\.\.\., 3\), got \(\)"):
        lin(np.float32(1.0))
    with pytest.raises(TypeError, match="floating-point input"):
        lin(np.zeros((4, 3), dtype=np.int64))
    lin(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"dout has shape \(4, 3\), expected \(4, 2\)"):
        lin.backward(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        Linear(0, 2)


def test_weight_tying_shares_one_array_and_sums_gradients(torch):
    """A tied language-model head: Embedding(V, E) in, Linear(E, V) out, one weight."""
    V, E = 9, 4
    emb = Embedding(V, E, dtype="float64", seed=0)
    head = Linear(E, V, dtype="float64", seed=1, tied_to=emb)
    assert head.tied and head.weight is emb.params["weight"]
    assert set(head.params) == {"bias"} and set(head.grads) == {"bias"}
    model = Module()
    model.add_module("embedding", emb)
    model.add_module("decoder", head)
    assert list(model.params) == ["embedding.weight", "decoder.bias"]

    ref_emb = torch.nn.Embedding(V, E).double()
    ref_head = torch.nn.Linear(E, V).double()
    ref_head.weight = ref_emb.weight  # PyTorch's tying
    with torch.no_grad():
        ref_emb.weight.copy_(torch.tensor(emb.weight))
        ref_head.bias.copy_(torch.tensor(head.bias))

    rng = np.random.default_rng(0)
    x = rng.integers(0, V, size=(5, 2))
    targets = rng.integers(0, V, size=(5, 2))
    h = np.tanh(emb(x))
    loss, dlogits = softmax_cross_entropy(head(h), targets)
    emb.backward(head.backward(dlogits) * (1 - h * h))

    ref_logits = ref_head(torch.tanh(ref_emb(torch.tensor(x))))
    ref_loss = torch.nn.functional.cross_entropy(
        ref_logits.reshape(-1, V), torch.tensor(targets).reshape(-1)
    )
    ref_loss.backward()
    assert rel_err(loss, ref_loss.item()) <= 1e-9
    assert rel_err(emb.grads["weight"], ref_emb.weight.grad.numpy()) <= 1e-9
    assert rel_err(head.grads["bias"], ref_head.bias.grad.numpy()) <= 1e-9

    before = emb.weight.copy()
    SGD(model.params, model.grads, lr=0.1).step()  # one update of the one shared array
    np.testing.assert_allclose(before - emb.weight, 0.1 * ref_emb.weight.grad.numpy(), rtol=1e-12)
    assert head.weight is emb.weight


def test_tie_weight_errors():
    emb = Embedding(9, 4)
    with pytest.raises(ValueError, match=r"shape \(9, 4\).*\(4, 9\).*Embedding\(4, 9\)"):
        Linear(9, 4, tied_to=emb)
    with pytest.raises(ValueError, match="embedding weight is float32, the Linear is float64"):
        Linear(4, 9, dtype="float64", tied_to=emb)
    with pytest.raises(TypeError, match="expects an Embedding"):
        Linear(4, 9).tie_weight(Linear(4, 9))
    head = Linear(4, 9)
    head.tie_weight(emb)
    with pytest.raises(ValueError, match="already tied"):
        head.tie_weight(emb)


# ------------------------------------------------------------------------------------------
# Dropout


def test_dropout_training_mask_scale_and_backward():
    drop = Dropout(0.3, seed=0)
    x = np.random.default_rng(1).uniform(1.0, 2.0, size=(200, 300)).astype(np.float32)
    y = drop(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    dropped = y == 0
    assert abs(dropped.mean() - 0.3) < 0.01
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.7, rtol=1e-6)
    dout = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    dx = drop.backward(dout)
    assert not dx[dropped].any()
    np.testing.assert_allclose(dx[~dropped], dout[~dropped] / 0.7, rtol=1e-6)
    assert not np.array_equal(drop(x) == 0, dropped)  # a fresh mask per call


def test_dropout_eval_and_p_zero_are_identity():
    x = np.arange(12.0).reshape(3, 4)
    drop = Dropout(0.5, seed=0).eval()
    np.testing.assert_array_equal(drop(x), x)
    np.testing.assert_array_equal(drop.backward(2 * x), 2 * x)
    drop.train()
    assert (drop(x + 1) == 0).any()
    np.testing.assert_array_equal(Dropout(0.0)(x), x)


def test_dropout_is_seeded():
    x = np.ones((50, 50))
    np.testing.assert_array_equal(Dropout(0.5, seed=4)(x), Dropout(0.5, seed=4)(x))
    assert not np.array_equal(Dropout(0.5, seed=4)(x), Dropout(0.5, seed=5)(x))


@pytest.mark.parametrize("p", [1.0, -0.1, float("nan"), "0.5", True])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\)"):
        Dropout(p)


def test_dropout_input_errors():
    drop = Dropout(0.5)
    with pytest.raises(RuntimeError, match="before forward"):
        drop.backward(np.zeros(2))
    with pytest.raises(TypeError, match="floating-point input"):
        drop(np.arange(3))
    drop(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dout has shape \(3, 2\), expected \(2, 3\)"):
        drop.backward(np.zeros((3, 2)))


# ------------------------------------------------------------------------------------------
# Losses


def ce_case(dtype, shape=(6, 3), vocab=17, ignore_index=-100, n_ignored=4, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape + (vocab,)) * scale).astype(dtype)
    targets = rng.integers(0, vocab, size=shape)
    targets.ravel()[rng.choice(targets.size, n_ignored, replace=False)] = ignore_index
    return logits, targets


def torch_ce(torch, logits, targets, **kwargs):
    z = t(torch, logits, grad=True)
    loss = torch.nn.functional.cross_entropy(
        z.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1), **kwargs
    )
    if loss.ndim:
        loss.backward(torch.ones_like(loss))
        return loss.detach().numpy().reshape(targets.shape), z.grad.numpy()
    loss.backward()
    return loss.item(), z.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index, n_ignored", [(-100, 0), (-100, 4), (5, 3)])
def test_cross_entropy_matches_torch(torch, dtype, reduction, ignore_index, n_ignored):
    logits, targets = ce_case(dtype, ignore_index=ignore_index, n_ignored=n_ignored)
    loss, dlogits = softmax_cross_entropy(
        logits, targets, ignore_index=ignore_index, reduction=reduction
    )
    ref_loss, ref_grad = torch_ce(
        torch, logits, targets, ignore_index=ignore_index, reduction=reduction
    )
    assert np.asarray(loss).dtype == dtype and dlogits.dtype == dtype
    assert dlogits.shape == logits.shape
    assert np.shape(loss) == (targets.shape if reduction == "none" else ())
    assert rel_err(loss, ref_loss) <= TOL[dtype]
    assert rel_err(dlogits, ref_grad) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_on_2d_logits(torch, dtype):
    logits, targets = ce_case(dtype, shape=(40,), vocab=300, n_ignored=5)
    loss, dlogits = softmax_cross_entropy(logits, targets)
    ref_loss, ref_grad = torch_ce(torch, logits, targets)
    assert rel_err(loss, ref_loss) <= TOL[dtype]
    assert rel_err(dlogits, ref_grad) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_cross_entropy_huge_logits_no_warnings(torch, dtype, scale):
    logits, targets = ce_case(dtype, scale=scale)
    logits[0, 0, :] = scale  # a row of ties at the top
    logits[1, 1, :] = -scale
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss, dlogits = softmax_cross_entropy(logits, targets)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    ref_loss, ref_grad = torch_ce(torch, logits, targets)
    assert rel_err(loss, ref_loss) <= TOL[dtype]
    assert rel_err(dlogits, ref_grad) <= TOL[dtype]


def test_cross_entropy_all_ignored_is_nan_with_zero_grad(torch):
    logits, targets = ce_case(np.float64, n_ignored=18)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, dlogits = softmax_cross_entropy(logits, targets)
    ref_loss, ref_grad = torch_ce(torch, logits, targets)
    assert np.isnan(loss) and np.isnan(ref_loss)
    np.testing.assert_array_equal(dlogits, ref_grad)
    assert softmax_cross_entropy(logits, targets, reduction="sum")[0] == 0.0


def test_cross_entropy_out_and_no_grad():
    logits, targets = ce_case(np.float32)
    loss, dlogits = softmax_cross_entropy(logits, targets)
    loss2, none = softmax_cross_entropy(logits, targets, compute_grad=False)
    assert none is None and loss2 == loss
    buf = np.empty_like(logits)
    loss3, d3 = softmax_cross_entropy(logits, targets, out=buf)
    assert np.shares_memory(d3, buf) and loss3 == loss
    np.testing.assert_array_equal(d3, dlogits)
    z = logits.copy()
    loss4, d4 = softmax_cross_entropy(z, targets, out=z)  # in place over the logits
    assert np.shares_memory(d4, z) and loss4 == loss
    np.testing.assert_array_equal(d4, dlogits)
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0, atol=1e-6)  # softmax minus one-hot


def test_cross_entropy_errors():
    logits, targets = ce_case(np.float32, n_ignored=0)
    with pytest.raises(ValueError, match=r"targets of shape \(\.\.\.\): got logits \(6, 3, 17\)"):
        softmax_cross_entropy(logits, targets.T)
    bad = targets.copy()
    bad[2, 1] = 17
    with pytest.raises(IndexError, match=r"targets must be in \[0, 17\) or equal ignore_index"):
        softmax_cross_entropy(logits, bad)
    bad[2, 1] = -1
    with pytest.raises(IndexError, match="e.g. -1"):
        softmax_cross_entropy(logits, bad)
    with pytest.raises(TypeError, match="targets must be an integer array"):
        softmax_cross_entropy(logits, targets.astype(np.float32))
    with pytest.raises(TypeError, match="logits must be float32 or float64"):
        softmax_cross_entropy(logits.astype(np.int32), targets)
    with pytest.raises(ValueError, match="reduction must be one of"):
        softmax_cross_entropy(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="out must be a C-contiguous ndarray of shape"):
        softmax_cross_entropy(logits, targets, out=np.empty_like(logits, dtype=np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch(torch, dtype, reduction):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 2)).astype(dtype)
    y = rng.standard_normal((5, 4, 2)).astype(dtype)
    loss, dx = mse_loss(x, y, reduction=reduction)
    xt = t(torch, x, grad=True)
    ref = torch.nn.functional.mse_loss(xt, torch.tensor(y), reduction=reduction)
    ref.backward(torch.ones_like(ref))
    assert np.asarray(loss).dtype == dtype and dx.dtype == dtype
    assert rel_err(loss, ref.detach().numpy()) <= TOL[dtype]
    assert rel_err(dx, xt.grad.numpy()) <= TOL[dtype]


def test_mse_errors():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"same shape, got \(3, 2\) and \(2, 3\)"):
        mse_loss(x, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        mse_loss(x.astype(int), x)
    with pytest.raises(TypeError, match="target must be numeric"):
        mse_loss(x, x.astype(str))
    with pytest.raises(ValueError, match="reduction must be one of"):
        mse_loss(x, x, reduction="total")

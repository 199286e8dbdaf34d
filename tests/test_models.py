"""Whole models: the char LM against the same model in PyTorch, the sequence model's read-out."""

from __future__ import annotations

import numpy as np
import pytest

from lstmkit.models import CharLM, SequenceModel
from lstmkit.nn import mse_loss, softmax_cross_entropy


@pytest.mark.parametrize("cell,tie", [("lstm", False), ("gru", True), ("rnn", False)])
def test_char_lm_matches_torch(cell, tie):
    torch = pytest.importorskip("torch")
    V, H, T, B = 11, 8, 7, 3
    model = CharLM(V, H, num_layers=2, cell=cell, tie_weights=tie, dtype="float64", seed=0)
    emb = torch.nn.Embedding(V, H).double()
    rnn = getattr(torch.nn, cell.upper())(H, H, num_layers=2).double()
    dec = torch.nn.Linear(H, V).double()
    with torch.no_grad():
        emb.weight.copy_(torch.tensor(model.params["embedding.weight"]))
        for name, p in rnn.named_parameters():
            p.copy_(torch.tensor(model.params[f"rnn.{name}"]))
        if tie:
            dec.weight = emb.weight
        else:
            dec.weight.copy_(torch.tensor(model.params["decoder.weight"]))
        dec.bias.copy_(torch.tensor(model.params["decoder.bias"]))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    logits, _ = model(ids)
    loss, d_logits = softmax_cross_entropy(logits, targets)
    model.zero_grad()
    model.backward(d_logits)
    logits_t = dec(rnn(emb(torch.tensor(ids)))[0])
    loss_t = torch.nn.functional.cross_entropy(
        logits_t.reshape(-1, V), torch.tensor(targets).reshape(-1)
    )
    loss_t.backward()
    assert abs(float(loss) - loss_t.item()) < 1e-12
    pairs = [("embedding.weight", emb.weight), ("decoder.bias", dec.bias)]
    pairs += [(f"rnn.{n}", p) for n, p in rnn.named_parameters()]
    if not tie:
        pairs.append(("decoder.weight", dec.weight))
    assert sorted(n for n, _ in pairs) == sorted(model.grads)
    for name, p in pairs:
        assert np.allclose(model.grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12), name


def test_char_lm_config_rebuilds_and_state_carries():
    model = CharLM(5, 6, num_layers=1, peepholes=True, seed=0)
    again = CharLM(**model.config(), seed=1)
    again.load_state_dict(model.state_dict())
    ids = np.array([[0, 1], [2, 3], [4, 0]])
    a, state = model(ids)
    b, _ = again(ids)
    assert np.array_equal(a, b)
    _, first = model(ids[:1])
    c, _ = model(ids[1:], first)
    assert np.allclose(c, a[1:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="T, B"):
        model(np.array([1, 2, 3]))


def test_sequence_model_reads_each_sequence_at_its_last_step():
    model = SequenceModel(2, 5, 1, cell="lstm", dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 2))
    lengths = np.array([6, 2, 4])
    y, _ = model(x, lengths=lengths)
    for b, n in enumerate(lengths):
        alone, _ = model(x[:n, b : b + 1])
        assert np.allclose(alone[0], y[b])
    # gradient check of the read-out path on one weight
    target = rng.standard_normal((3, 1))

    def loss():
        return float(mse_loss(model(x, lengths=lengths)[0], target)[0])

    model.zero_grad()
    y, _ = model(x, lengths=lengths)
    _, dy = mse_loss(y, target)
    model.backward(dy)
    w = model.params["rnn.weight_hh_l0"]
    eps = 1e-6
    w[0, 0] += eps
    up = loss()
    w[0, 0] -= 2 * eps
    down = loss()
    w[0, 0] += eps
    assert abs((up - down) / (2 * eps) - model.grads["rnn.weight_hh_l0"][0, 0]) < 1e-7

"""The zero-skipping first-layer kernels against the dense products they replace."""

import pytest
import torch

import rbp
from rbp.data import Dataset, load
from rbp.errors import ConfigError
from rbp.nn import _sparse, use_sparse_input
from rbp.train import Trainer, TrainSpec, sparse_inputs, train_group

pytestmark = pytest.mark.skipif(_sparse.load() is None, reason="no C compiler: the kernels are not built")


def _sparse_x(*shape, zeros=0.8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=gen)
    x[torch.rand(*shape, generator=gen) < zeros] = 0.0
    return x


# sizes that are not multiples of the kernels' blocks (8 inputs, 6 or 12 outputs, pairs of examples)
SHAPES = [(7, 13, 5), (10, 64, 12), (33, 37, 100), (1, 8, 1), (4, 785, 19)]


@pytest.mark.parametrize("N,I,O", SHAPES)
@pytest.mark.parametrize("K", [None, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_kernels_equal_the_dense_products(N, I, O, K, bias):
    lead = (K,) if K else ()
    gen = torch.Generator().manual_seed(N * I + O)
    x = _sparse_x(*lead, N, I, seed=I)
    w = torch.randn(*lead, O, I, generator=gen)
    b = torch.randn(*lead, O, generator=gen) if bias else None
    g = torch.randn(*lead, N, O, generator=gen)
    got = _sparse.affine(x, w, b, bool(K))
    want = (x @ w.transpose(-1, -2)) + (b.unsqueeze(-2) if bias else 0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_sparse.grad_weight(g, x), g.transpose(-1, -2) @ x, rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_members_partners_or_threads():
    x, w, b = _sparse_x(4, 21, 50, seed=1), torch.randn(4, 11, 50), torch.randn(4, 11)
    g = torch.randn(4, 21, 11)
    y, gw = _sparse.affine(x, w, b, True), _sparse.grad_weight(g, x)
    for k in range(4):                       # member k alone: bit for bit
        assert torch.equal(_sparse.affine(x[k], w[k], b[k], False), y[k])
        assert torch.equal(_sparse.grad_weight(g[k], x[k]), gw[k])
    assert torch.equal(_sparse.affine(x[0, 3:8], w[0], b[0], False), y[0, 3:8])   # other pairs of examples
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _sparse.affine(x, w, b, True), _sparse.grad_weight(g, x)
        torch.set_num_threads(2)
        two = _sparse.affine(x, w, b, True), _sparse.grad_weight(g, x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_nan_inputs_propagate():
    x = _sparse_x(3, 16)
    x[1, 5] = float("nan")
    y = _sparse.affine(x, torch.randn(4, 16), None, False)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()


def test_kernels_decline_float64_and_autograd():
    x = _sparse_x(3, 16).double()
    assert _sparse.affine(x, torch.randn(4, 16, dtype=torch.float64), None, False) is None
    assert _sparse.affine(x.float(), torch.randn(4, 16, requires_grad=True), None, False) is None


def _sparse_digits():
    ds = load("digits")
    cut = lambda t: torch.where(t > 0.45, t, torch.zeros_like(t))   # noqa: E731  (32 % nonzero)
    return Dataset("digits-sparse", cut(ds.x_train), ds.y_train, cut(ds.x_test), ds.y_test, ds.input_shape,
                   ds.num_classes)


def test_trainer_uses_the_kernels_for_sparse_data_and_matches_the_dense_run(monkeypatch):
    ds = _sparse_digits()
    assert sparse_inputs(ds.flat().x_train) and not sparse_inputs(load("digits").flat().x_train)
    spec = TrainSpec(dataset="digits", algorithm=rbp.algorithm("rbp"), epochs=2, hidden=(24, 24))
    tr = Trainer(spec, [0, 1], dataset=ds)
    assert tr.sparse_input and tr.model[0].sparse_input
    _, fast = train_group(spec, [0, 1], ds)
    _, alone = train_group(spec, [1], ds)                 # member 1 alone: the same numbers
    for a, b in zip(fast[1], alone[0]):               # (the hidden layers' batched products round differently)
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-5, abs=1e-6)
    monkeypatch.setattr(_sparse, "DENSITY_LIMIT", 0.0)   # the dense products
    _, dense = train_group(spec, [0, 1], ds)
    for a, b in zip(fast[0] + fast[1], dense[0] + dense[1]):
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-4)
        assert a.test_accuracy == pytest.approx(b.test_accuracy, abs=0.01)


def test_use_sparse_input_needs_a_linear_layer():
    with pytest.raises(ConfigError):
        use_sparse_input(torch.nn.Sequential(torch.nn.Tanh()))
    with pytest.raises(ConfigError):
        use_sparse_input(rbp.mlp([10, 5, 3], "tanh", seed=0))          # plain torch layers: convert first
    model = rbp.convert(rbp.mlp([10, 5, 3], "tanh", seed=0), "rbp", seed=0)
    assert use_sparse_input(model) is model[0] and model[0].sparse_input


def test_mismatched_shapes_fall_back_to_the_dense_error():
    assert _sparse.affine(_sparse_x(3, 15), torch.randn(4, 16), None, False) is None
    assert _sparse.grad_weight(torch.randn(3, 4), _sparse_x(5, 16)) is None
    model = rbp.convert(rbp.mlp([16, 4, 3], "tanh", seed=0), "rbp", seed=0)
    use_sparse_input(model)
    with pytest.raises(RuntimeError):
        model(_sparse_x(2, 15))

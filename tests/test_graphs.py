"""Sites on module graphs: the output site found from the graph run, routes and the Site interface."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.channel.algorithm import ALGORITHMS
from rbp.channel.routes import Chain, Distinct, PerSynapse, Product, Route, Skip, Top, route_of
from rbp.cost import cost
from rbp.nn.site import Site

from helpers import assert_grads_equal, batch, grads


class Residual(nn.Module):
    """x -> x + W2 tanh(W1 x): a residual block."""

    def __init__(self, n):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n, n), nn.Linear(n, n)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


class HeadFirst(nn.Module):
    """The head is registered before the body, and two parallel branches meet by addition."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.left, self.right = nn.Linear(7, 6), nn.Linear(7, 6)
        self.block = Residual(6)

    def forward(self, x):
        h = torch.tanh(self.left(x)) + torch.tanh(self.right(x))
        return self.head(torch.tanh(self.block(h)))


def _double(model):
    torch.manual_seed(0)
    return model.double()


def _transpose_feedback(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Site) and m.feedback is not None:
                m.feedback.copy_(m.weight)


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "kp", "usf"])
def test_output_layer_registered_first_gets_the_exact_gradient(alg):
    x, y = batch()
    plain = _double(HeadFirst())
    ref = grads(plain, x, y)
    if alg == "srbp":      # the skip matrices' height: the last layer registered is not the output here
        with pytest.raises(rbp.ConfigError, match="output_size="):
            grads(rbp.convert(plain, alg, seed=1), x, y)
    m = rbp.convert(plain, alg, seed=1, output_size=3)
    got = grads(m, x, y)
    lam = m.rbp_channel.algorithm.weight_decay        # kp's shared decay is part of every update
    assert torch.allclose(got["head.weight"] - lam * m.head.weight, ref["head.weight"])
    assert torch.allclose(got["head.bias"] - lam * m.head.bias, ref["head.bias"])
    if alg == "bp":
        assert_grads_equal(got, ref)


def test_rbp_with_transposed_feedback_equals_bp_on_a_graph():
    x, y = batch()
    plain = _double(HeadFirst())
    ref = grads(plain, x, y)
    m = rbp.convert(plain, "rbp", seed=1)
    assert m.head.feedback is None      # registered first: rbp.convert took it for the bottom layer
    m(x)                                # the first pass shows its input is computed: its feedback is drawn
    assert m.head.feedback.shape == (3, 6)
    _transpose_feedback(m)
    assert_grads_equal({k: v for k, v in grads(m, x, y).items() if "feedback" not in k}, ref)


def test_srbp_on_a_graph_sends_the_projected_error_to_every_hidden_site():
    """Every hidden site's input receives C E^L (summed where several sites read one tensor)."""
    x, y = batch()
    m = rbp.convert(_double(HeadFirst()), "srbp", seed=1, output_size=3)
    got = grads(m, x, y)
    logits = m(x)
    E = -(torch.softmax(logits, -1) - F.one_hot(y, 3).double()) / x.shape[0]   # autograd's units: -E / B
    # fc2's input is tanh(fc1(x)): its signal is C_fc2 E times tanh', and fc1's update follows from it
    with torch.no_grad():
        h = torch.tanh(m.left(x)) + torch.tanh(m.right(x))
        a = torch.tanh(m.block.fc1(h))
    g_fc1 = (-E @ m.block.fc2.feedback) * (1 - a ** 2)
    assert torch.allclose(got["block.fc1.weight"], g_fc1.T @ h)


def test_submodule_called_directly_finds_its_own_top():
    """A submodule called on its own: its last site is the output of that pass, not of the model."""
    x, y = batch(n_in=6)
    plain = _double(HeadFirst())
    m = rbp.convert(plain, "rbp", seed=1)
    sub = nn.Sequential(m.block, nn.Tanh(), m.head)     # a new root without the channel's pre-hook
    ref_sub = nn.Sequential(plain.block, nn.Tanh(), plain.head)
    for _ in range(2):                                   # a second pass starts after the first backward
        got = grads(sub, x, y)
        ref = grads(ref_sub, x, y)
        assert torch.allclose(got["2.weight"], ref["2.weight"])      # the head's gradient is exact
        assert not torch.allclose(got["0.fc1.weight"], ref["0.fc1.weight"])   # random feedback below


def test_shared_weights_sum_their_updates():
    """One layer applied twice: bp equals autograd, the updates of both applications add up."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.head = nn.Linear(7, 7), nn.Linear(7, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))

    x, y = batch()
    plain = _double(Twice())
    assert_grads_equal(grads(rbp.convert(plain, "bp"), x, y), grads(plain, x, y))
    m = rbp.convert(plain, "rbp", seed=1)
    m(x)                  # its second application's input is computed: the shared layer gets feedback
    _transpose_feedback(m)
    assert_grads_equal({k: v for k, v in grads(m, x, y).items() if "feedback" not in k}, grads(plain, x, y))


def test_two_output_layers_are_refused_by_the_skipped_route_only():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.a, self.b = nn.Linear(7, 5), nn.Linear(5, 3), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.tanh(self.body(x))
            return self.a(h) + self.b(h)

    x, y = batch()
    plain = _double(TwoHeads())
    ref = grads(plain, x, y)
    got = grads(rbp.convert(plain, "rbp", seed=1), x, y)
    for k in ("a.weight", "b.weight", "a.bias", "b.bias"):     # both outputs are exact
        assert torch.allclose(got[k], ref[k])
    with pytest.raises(rbp.ConfigError, match="2 output layers"):
        grads(rbp.convert(plain, "srbp", seed=1), x, y)


def test_evaluation_without_gradients_does_not_enter_the_pass():
    x, y = batch()
    m = rbp.convert(rbp.mlp([7, 5, 3], seed=0).double(), "rbp", seed=1)
    with torch.no_grad():
        m(x)
    assert m.rbp_channel._pass is None or not m.rbp_channel._pass.order


def test_every_registry_algorithm_has_a_route():
    kinds = {type(route_of(rbp.algorithm(n))) for n in ALGORITHMS}
    assert kinds >= {Chain, Product, Skip, Top}
    assert isinstance(route_of(rbp.algorithm("srbp", backward_hidden=(4,))), Distinct)
    assert isinstance(route_of(rbp.algorithm("srbp", feedback="per-synapse")), PerSynapse)
    for n in ALGORITHMS:
        assert issubclass(type(route_of(rbp.algorithm(n))), Route)


def test_cost_asks_the_route():
    N = [784, 100, 100, 10]
    assert cost(N, "rbp")["channel"] == 100 * 100 + 100 * 10
    assert cost(N, "srbp")["channel"] == 10 * 200
    assert cost(N, "top")["channel"] == 0
    assert cost(N, rbp.algorithm("srbp", backward_hidden=(4,)))["channel"] == 10 * 4 + 4 * 200


def test_site_is_abstract():
    with pytest.raises(TypeError):
        Site()

    class Half(Site):            # a new layer type must declare the whole algebra
        def affine(self, x, weight, bias):
            return x

    with pytest.raises(TypeError):
        Half()


def test_lazy_skip_matrices_save_and_load():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Conv2d(2, 2, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3))
    torch.manual_seed(0)
    m = rbp.convert(conv.double(), "asrbp", seed=3)        # adaptive: the skip matrices are parameters
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert m[5].feedback.shape == (3, 32)                  # a linear layer's is sized at convert
    held = m[2].feedback                                    # a conv layer's input map: sized at the first pass,
    assert isinstance(held, nn.Parameter) and held.numel() == 0   # held by an empty Parameter until then
    assert "2.feedback" not in m.state_dict()               # which is not state
    m(x)                                                    # the dry run sizes it (as torch's Lazy modules)
    assert m[2].feedback is held and m[2].feedback.shape == (3, 2 * 6 * 6)   # the same Parameter object
    state = m.state_dict()
    other = rbp.convert(conv.double(), "asrbp", seed=4)
    other.load_state_dict(state)
    assert isinstance(other[2].feedback, nn.Parameter)
    for k, v in state.items():
        assert torch.equal(other.state_dict()[k], v)

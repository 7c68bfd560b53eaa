"""torch.compile(fullgraph=True) of converted models: the compiled driver (rbp/nn/compiled.py) against eager.

Most cases trace with ``backend="aot_eager"`` (dynamo and AOTAutograd, the parts that see the channel; fast), and
the training steps must then match eager to float rounding.  A few run inductor, the default backend, which fuses
and reorders arithmetic, so they compare at a tolerance; one of them guards a rewrite that used to lose a factor.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.models import gpt, resnet18

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _mlp():
    return nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))


def _cnn():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 5))


class _Residual(nn.Module):
    """A residual MLP whose output layer is not the last module registered."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 5)
        self.inp = nn.Linear(20, 16)
        self.mid = nn.Linear(16, 16)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + torch.tanh(self.mid(h))
        return self.head(h)


class _Encoder(nn.Module):
    """torch's TransformerEncoder (nn.MultiheadAttention sites), mean-pooled, linear head: the transformer bench."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def _data(kind, n=6):
    g = torch.Generator().manual_seed(1)
    if kind == "encoder":
        return torch.randn(n, 4, 16, generator=g), torch.randint(0, 5, (n,), generator=g)
    if kind == "cnn":
        return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)
    if kind == "gpt":
        ids = torch.randint(0, 64, (2, 8), generator=g)
        return ids, torch.randint(0, 64, (2, 8), generator=g)
    return torch.randn(n, 20, generator=g), torch.randint(0, 5, (n,), generator=g)


def _loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


BUILD = {"mlp": _mlp, "cnn": _cnn, "residual": _Residual, "encoder": _Encoder,
         "gpt": lambda: gpt(vocab=64, context=8, dim=16, depth=2, heads=2, seed=0)}


def _pair(kind, alg, **options):
    torch.manual_seed(0)
    base = BUILD[kind]()
    x, y = _data(kind)
    a = rbp.convert(copy.deepcopy(base), alg, seed=3, example_input=x, **options)
    b = rbp.convert(copy.deepcopy(base), alg, seed=3, example_input=x, **options)
    return a, b, x, y


def _train(model, step_model, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        _loss(step_model(x), y).backward()
        opt.step()
        model.rbp_channel.after_step()
    return opt


def _eager_then_compiled(eager, comp, x, y, steps, backend):
    """One eager step each (the channel notes the structure), then ``steps`` more: ``comp`` compiled."""
    _train(eager, eager, x, y, 1)
    _train(comp, comp, x, y, 1)
    torch._dynamo.reset()
    compiled = torch.compile(comp, fullgraph=True, backend=backend)
    _train(eager, eager, x, y, steps)
    _train(comp, compiled, x, y, steps)


def _compare(a, b, atol):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=atol, rtol=1e-5), (k, (sa[k] - sb[k]).abs().max().item())
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=atol, rtol=1e-5), (n, (p.grad - q.grad).abs().max().item())


CASES = [("mlp", a, {}) for a in ("bp", "rbp", "srbp", "arbp", "asrbp", "kp", "wm", "usf", "frsf", "top")] + [
    ("mlp", "srbp", {"skip_projection": "shared"}),
    ("mlp", "rbp", {"update": "sign"}),
    ("mlp", "rbp", {"weight_decay": 0.01}),
    ("residual", "srbp", {}),
    ("residual", "kp", {}),
    ("cnn", "rbp", {}), ("cnn", "srbp", {}), ("cnn", "kp", {}), ("cnn", "usf", {}),
    ("gpt", "rbp", {}), ("gpt", "srbp", {"skip_projection": "shared"}), ("gpt", "kp", {}),
    ("encoder", "rbp", {}), ("encoder", "srbp", {}), ("encoder", "kp", {}), ("encoder", "usf", {}),
]


@pytest.mark.parametrize("kind,alg,options", CASES, ids=[f"{k}-{a}-{'-'.join(f'{o}={v}' for o, v in opt.items())}"
                                                          for k, a, opt in CASES])
def test_fullgraph_steps_equal_eager(kind, alg, options):
    """Three optimizer steps: weights, feedback (adaptive, mirrored or sign-following) and grads as in eager."""
    eager, comp, x, y = _pair(kind, alg, **options)
    _eager_then_compiled(eager, comp, x, y, 3, "aot_eager")
    _compare(eager, comp, atol=1e-6)


@pytest.mark.parametrize("alg", ["kp", "srbp", "usf"])
def test_inductor_steps_equal_eager(alg):
    """The default backend.  Kolen-Pollack's decay, lambda W added to a matmul's result, was once lost in
    inductor's rewrite to addmm: the first layer's update was off by (1 - lambda) W."""
    eager, comp, x, y = _pair("mlp", alg)
    _eager_then_compiled(eager, comp, x, y, 2, "inductor")
    _compare(eager, comp, atol=1e-5)


@pytest.mark.parametrize("alg", ["rbp", "srbp"])
def test_autocast_compiled_equals_autocast_eager(alg):
    """Mixed precision: under bfloat16 autocast the compiled step computes what the eager one does."""
    eager, comp, x, y = _pair("mlp", alg)
    _eager_then_compiled(eager, comp, x, y, 0, "aot_eager")
    compiled = torch.compile(comp, fullgraph=True, backend="aot_eager")
    for model, run in ((eager, eager), (comp, compiled)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _loss(run(x), y).backward()
    for p, q in zip(eager.parameters(), comp.parameters()):
        assert p.grad.dtype == torch.float32 and torch.equal(p.grad, q.grad)


def test_a_second_model_compiled_in_the_same_process():
    """No dynamo reset between two converted models whose decay differs (0, then Kolen-Pollack's): dynamo made
    the changed float a symbolic input, which a traced backward could not lift, until the channel read its
    coefficients as constants."""
    torch._dynamo.reset()
    for alg in ("rbp", "kp"):
        eager, comp, x, y = _pair("mlp", alg)
        for m in (eager, comp):
            _loss(m(x), y).backward()
            m.zero_grad()
        compiled = torch.compile(comp, fullgraph=True, backend="aot_eager")
        _loss(eager(x), y).backward()
        _loss(compiled(x), y).backward()
        _compare(eager, comp, atol=1e-6)


def test_one_graph_for_the_whole_model():
    """No graph break: dynamo makes one graph of a converted three-layer MLP (it made one per site)."""
    m, _, x, y = _pair("mlp", "srbp")
    _train(m, m, x, y, 1)
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounter
    counter = CompileCounter()
    compiled = torch.compile(m, backend=counter)
    _loss(compiled(x), y).backward()
    assert counter.frame_count == 1


def test_resnet18_compiles_with_rbp():
    """torchvision's resnet18 layout (in-house), batch norm and residual adds, compiled in one graph."""
    torch.manual_seed(0)
    base = resnet18(num_classes=5, seed=0, cifar_stem=True)
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([1, 3])
    a = rbp.convert(copy.deepcopy(base), "srbp", seed=1, example_input=x)
    b = rbp.convert(copy.deepcopy(base), "srbp", seed=1, example_input=x)
    a.eval(), b.eval()                         # batch norm's running statistics out of the comparison
    _eager_then_compiled(a, b, x, y, 1, "aot_eager")
    _compare(a, b, atol=1e-5)


@pytest.mark.parametrize("alg,options,words", [
    ("twin", {}, "route (product)"),
    ("rbp", {"dropout": 0.2}, "dropout"),
    ("brsf", {}, "drawn afresh"),
    ("rbp", {"quantize_error": 4}, "batch size"),
])
def test_what_cannot_compile_is_refused_in_one_line(alg, options, words):
    m, _, x, y = _pair("mlp", alg, **options)
    _train(m, m, x, y, 1)
    torch._dynamo.reset()
    with pytest.raises(Exception) as info:
        _loss(torch.compile(m, fullgraph=True, backend="aot_eager")(x), y).backward()
    assert words in str(info.value) and "torch.compile" in str(info.value)


def test_the_skipped_route_needs_one_eager_pass_first():
    """SRBP's output layer is found on an eager pass; before one, compiling is refused (never guessed)."""
    torch.manual_seed(0)
    m = rbp.convert(_Residual(), "srbp", seed=0, example_input=torch.randn(2, 20))
    x, y = _data("mlp")
    torch._dynamo.reset()
    with pytest.raises(Exception) as info:
        _loss(torch.compile(m, fullgraph=True, backend="aot_eager")(x), y).backward()
    assert "eager pass" in str(info.value)
    torch._dynamo.reset()
    _train(m, m, x, y, 1)                      # one eager step: now it compiles
    _train(m, torch.compile(m, fullgraph=True, backend="aot_eager"), x, y, 1)


@pytest.mark.parametrize("alg,options", [("sbp", {}), ("rbp", {"dropout": 0.3})])
def test_without_fullgraph_a_refused_channel_runs_eager_and_gives_its_update(alg, options):
    """What the compiled driver refuses is a graph break without fullgraph=True: dynamo runs those sites
    eagerly, and the update (channel dropout's draws included) is the eager one."""
    eager, comp, x, y = _pair("mlp", alg, **options)
    for m in (eager, comp):
        _train(m, m, x, y, 1)
    torch._dynamo.reset()
    compiled = torch.compile(comp, backend="aot_eager")
    _train(eager, eager, x, y, 2)
    _train(comp, compiled, x, y, 2)
    _compare(eager, comp, atol=1e-7)

"""SRBP's block ("macro") mode (rbp.nn.blocks, docs/blocks.md): gradients against plain autograd."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.errors import ConfigError
from rbp.models import resnet20, vit
from rbp.nn.blocks import BUFFER, resolve
from rbp.nn.fused import FusedNetwork

from helpers import assert_grads_equal, batch, grads


def _x_y(n_in=5, n_out=3, rows=6, seed=0):
    return batch(n_in, n_out, rows, seed)


def _set_C(model, name, value):
    with torch.no_grad():
        getattr(model.get_submodule(name), BUFFER).copy_(value)


class ResBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), nn.Tanh(), nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class ResMLP(nn.Module):
    def __init__(self, n_in=5, d=6, n_out=3, depth=3):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(n_in, d)
        self.blocks = nn.Sequential(*[ResBlock(d, 7) for _ in range(depth)])
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        return self.head(torch.tanh(self.blocks(self.inp(x))))


def _reference(model, names, Cs, x, y):
    """Block mode by hand on the unconverted model: detach each block's output, send it g @ C_k by autograd."""
    kept = []

    def hook(mod, inp, out):
        kept.append(out)
        return out.detach()

    hooks = [model.get_submodule(n).register_forward_hook(hook) for n in names]
    try:
        model.zero_grad()
        out = model(x)
        g, = torch.autograd.grad(F.cross_entropy(out, y), out, retain_graph=True)
        out.backward(g)
        for y_k, C in zip(kept, Cs):
            y_k.backward((g @ C).reshape(y_k.shape))
    finally:
        for h in hooks:
            h.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- gradients

def test_one_block_with_the_top_weights_as_its_matrix_equals_bp():
    """The block output feeds the top layer directly: C = W^L is what backprop sends there."""
    base = rbp.mlp([5, 7, 6, 3], seed=0).double()
    model = rbp.convert(base, "srbp", blocks=["3"], block_feedback="bp", seed=1)
    x, y = _x_y()
    model(x)                                   # sizes the block matrix lazily
    assert getattr(model[3], BUFFER).shape == (3, 6)
    _set_C(model, "3", model[4].weight.detach())
    assert_grads_equal(grads(model, x, y), grads(base, x, y), tol=1e-13)


@pytest.mark.parametrize("inside", ["bp", "rbp"])
def test_blocks_at_every_hidden_output_equal_per_layer_srbp(inside):
    """Blocks = the activation modules: each site's signal is f'(S^h) * C^h E^L, per-layer SRBP exactly."""
    base = rbp.mlp([5, 8, 7, 6, 3], seed=0).double()
    srbp = rbp.convert(base, "srbp", seed=3)
    model = rbp.convert(base, "srbp", blocks=["1", "3", "5"], block_feedback=inside, seed=4)
    x, y = _x_y()
    model(x)
    sites = srbp.rbp_channel.sites
    for name, site in zip(("1", "3", "5"), sites[1:]):
        _set_C(model, name, site.feedback)
    assert_grads_equal(grads(model, x, y), grads(srbp, x, y), tol=1e-13)


def test_residual_mlp_blocks_equal_the_hand_computation():
    base = ResMLP().double()
    names = ["blocks.0", "blocks.1"]           # the last block is reached from the head by the chain
    model = rbp.convert(base, "srbp", blocks=names, seed=0)
    x, y = _x_y()
    model(x)
    Cs = [getattr(model.get_submodule(n), BUFFER).clone() for n in names]
    got = grads(model, x, y)
    assert_grads_equal(got, _reference(base, names, Cs, x, y), tol=1e-13)
    # and the block signal really replaces backprop's: the lower blocks differ from bp
    bp = grads(base, x, y)
    assert not torch.allclose(got["blocks.0.fc1.weight"], bp["blocks.0.fc1.weight"])
    assert torch.equal(got["head.weight"], bp["head.weight"])       # the output layer is exact


def test_rbp_inside_blocks_with_the_forward_weights_equals_bp_inside():
    base = ResMLP().double()
    names = ["blocks.*"]
    a = rbp.convert(base, "srbp", blocks=names, block_feedback="bp", seed=0)
    b = rbp.convert(base, "srbp", blocks=names, block_feedback="rbp", seed=0)
    x, y = _x_y()
    a(x), b(x)
    for n, m in a.named_modules():
        if getattr(m, BUFFER, None) is not None:
            assert torch.equal(getattr(m, BUFFER), getattr(b.get_submodule(n), BUFFER))   # same seed, same C
    with torch.no_grad():
        for s in b.rbp_channel.sites[1:]:
            s.feedback.copy_(s.weight)
    ga, gb = grads(a, x, y), grads(b, x, y)
    assert_grads_equal(ga, gb, tol=1e-13)
    assert b.rbp_channel.declared.describe() == "srbp[blocks blocks.*, rbp inside]"


@pytest.mark.parametrize("alg,opts", [("srbp", dict(block_feedback="bp")), ("srbp", dict(block_feedback="rbp")),
                                      ("srbp", dict(feedback="uniform", feedback_scale=0.5))])
def test_the_output_layer_gradient_is_exact(alg, opts):
    base = ResMLP().double()
    model = rbp.convert(base, alg, blocks=["blocks.*"], seed=2, **opts)
    x, y = _x_y()
    got, bp = grads(model, x, y), grads(base, x, y)
    assert_grads_equal({k: got[k] for k in ("head.weight", "head.bias")},
                       {k: bp[k] for k in ("head.weight", "head.bias")}, tol=1e-13)


def test_conv_resnet_stages_as_blocks_equal_the_hand_computation():
    base = resnet20(in_channels=1, image_size=8, num_classes=3, seed=0, width=4).double()
    names = ["blocks.2", "blocks.5"]           # the ends of stages 1 and 2; stage 3 is reached from the head
    model = rbp.convert(base, "srbp", blocks=names, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    model(x)
    shapes = [getattr(model.get_submodule(n), BUFFER).shape for n in names]
    assert shapes == [(3, 4 * 8 * 8), (3, 8 * 4 * 4)]
    Cs = [getattr(model.get_submodule(n), BUFFER).clone() for n in names]
    base.train(), model.train()
    assert_grads_equal(grads(model, x, y), _reference(base, names, Cs, x, y), tol=1e-12)


# ----------------------------------------------------------------------------- nothing above a block

class _Probe(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        _Probe.calls += 1
        return g


class Probe(nn.Module):
    def forward(self, x):
        return _Probe.apply(x)


def test_no_signal_is_computed_above_a_block_output():
    """Above the block's output neither autograd nor a site ever differentiates with respect to it."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), Probe(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = _x_y()
    for inside in ("bp", "rbp"):
        model = rbp.convert(base, "srbp", blocks=["1"], block_feedback=inside, seed=0)
        above = model[3]
        counted = {"above": 0}
        plain = type(above).grad_input

        def counting(g, matrix, x_):
            counted["above"] += 1
            return plain(above, g, matrix, x_)

        above.grad_input = counting
        _Probe.calls = 0
        got = grads(model, x, y)
        assert _Probe.calls == 0 and counted["above"] == 0
        assert all(v is not None and v.abs().sum() > 0 for v in got.values())   # every layer still learns
    _Probe.calls = 0
    bp = rbp.convert(base, "bp")
    grads(bp, x, y)
    assert _Probe.calls == 1                   # the same probe runs under backprop


def test_only_the_head_is_an_output_site():
    """The sites below a block feed its signal: the pass does not take them for output sites."""
    model = rbp.convert(ResMLP().double(), "srbp", blocks=["blocks.*"], seed=0)
    x, _ = _x_y()
    model(x)
    pas = model.rbp_channel.current_pass()
    assert [pas.order[p] for p in pas.outputs()] == [model.head]


# ----------------------------------------------------------------------------- state, names, errors

def test_state_dict_keys_and_round_trip():
    base = ResMLP().double()
    names = ["blocks.0", "blocks.1"]
    model = rbp.convert(base, "srbp", blocks=names, seed=0)
    assert list(model.state_dict()) == list(base.state_dict())   # not sized yet: nothing added
    x, y = _x_y()
    model(x)
    keys = set(model.state_dict())
    assert keys == set(base.state_dict()) | {f"{n}.{BUFFER}" for n in names}
    saved = model.state_dict()
    fresh = rbp.convert(base, "srbp", blocks=names, seed=9)      # other matrices, not drawn yet
    fresh.load_state_dict(saved)
    for n in names:
        assert torch.equal(getattr(fresh.get_submodule(n), BUFFER), saved[f"{n}.{BUFFER}"])
    assert_grads_equal(grads(fresh, x, y), grads(model, x, y), tol=0)
    base.load_state_dict({k: v for k, v in saved.items() if not k.endswith(BUFFER)})   # and back


def test_patterns_and_seeds():
    base = ResMLP().double()
    assert [n for n, _ in resolve(base, ["blocks.*"])] == ["blocks.0", "blocks.1", "blocks.2"]
    assert [n for n, _ in resolve(base, ["blocks.1", "inp"])] == ["inp", "blocks.1"]
    x, _ = _x_y()
    a, b, c = (rbp.convert(base, "srbp", blocks=["blocks.*"], seed=s) for s in (0, 0, 1))
    for m in (a, b, c):
        m(x)
    Ca, Cb, Cc = (getattr(m.blocks[1], BUFFER) for m in (a, b, c))
    assert torch.equal(Ca, Cb) and not torch.equal(Ca, Cc)
    assert Ca.std().item() == pytest.approx((2 / (3 + 6)) ** 0.5, rel=0.6)     # Glorot scale of (N_L, d)


@pytest.mark.parametrize("alg,opts,words", [
    ("rbp", dict(blocks=["1"]), "is not srbp"),
    ("asrbp", dict(blocks=["1"]), "is not srbp"),
    ("bp", dict(blocks=["1"]), "is not srbp"),
    ("srbp", dict(block_feedback="rbp"), "needs blocks="),
    ("srbp", dict(blocks=["1"], block_feedback="sbp"), "block_feedback must be one of"),
    ("srbp", dict(blocks=["7"]), "no module named '7'"),
    ("srbp", dict(blocks=["4"]), "contains the output layer"),
    ("srbp", dict(blocks=["1"], quantize_error=3), "quantize_error is not defined in srbp's block mode"),
    ("srbp", dict(blocks=["1"], feedback="congruent"), "not defined in srbp's block mode"),
    ("srbp", dict(blocks=[""]), "blocks must be a list of module names"),
])
def test_refusals_are_one_line(alg, opts, words):
    base = rbp.mlp([5, 7, 6, 3], seed=0)
    with pytest.raises(ConfigError) as err:
        rbp.convert(base, alg, **opts)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_ensembles_are_refused():
    base = rbp.mlp([5, 7, 3], seed=0, ensemble=2)
    with pytest.raises(ConfigError, match="one network at a time"):
        rbp.convert(base, "srbp", blocks=["1"])


# ----------------------------------------------------------------------------- driver, diagnostics, trainer

def test_diagnostics_measure_the_block_signal():
    from rbp.diagnostics import model_alignment
    base = rbp.mlp([5, 7, 6, 3], seed=0).double()
    model = rbp.convert(base, "srbp", blocks=["3"], seed=1)
    x, y = _x_y(rows=20)
    model(x)
    random = model_alignment(model, x, y)[0]
    _set_C(model, "3", model[4].weight.detach())
    exact = model_alignment(model, x, y)[0]
    assert exact["signal_angle_2"] == pytest.approx(0, abs=1e-5) and exact["signal_angle_1"] == pytest.approx(0, abs=1e-5)
    assert random["signal_angle_2"] > 5 and random["update_angle_1"] > 1
    assert FusedNetwork.plan(model) is None        # block mode lives in hooks: the autograd driver


def test_trainer_and_experiment_plumbing():
    from rbp import experiments
    from rbp.experiments.experiment import from_spec
    from rbp.train import TrainSpec, train
    alg = rbp.algorithm("srbp", blocks=["1", "3"], block_feedback="rbp")
    spec = TrainSpec(dataset="digits", algorithm=alg, hidden=(32, 32), epochs=2, batch_size=32, lr=0.05, momentum=0.9)
    hist = train(spec, [0, 1])
    accs = [h[-1].test_accuracy for h in hist]
    assert min(accs) > 0.8, accs
    again = train(spec, [1])
    assert again[0][-1].test_accuracy == hist[1][-1].test_accuracy      # seed 1 alone, same numbers
    exp = from_spec(spec, [0])
    assert exp.configs[0].algorithm == alg
    text = '''name = "b"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "x"\nalgorithm = "srbp"
blocks = ["1", "3"]\nblock_feedback = "rbp"\n'''
    assert experiments.parse(text).configs[0].algorithm == alg
    with pytest.raises(ConfigError, match="is not srbp"):
        experiments.parse(text.replace('"srbp"', '"rbp"'))


# ----------------------------------------------------------------------------- the models and the experiment files

def test_vit_builds_from_torch_modules_and_is_seeded():
    m = vit(seed=0, depth=2)
    x = torch.randn(3, 1, 28, 28)
    assert m(x).shape == (3, 10)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), vit(seed=0, depth=2).parameters()))
    assert not torch.equal(m.layers[0].linear1.weight, vit(seed=1, depth=2).layers[0].linear1.weight)
    assert not torch.equal(m.layers[0].linear1.weight, m.layers[1].linear1.weight)
    assert isinstance(m.patch_embed, nn.Conv2d) and m.patch_embed.stride == (7, 7) and m.tokens == 16
    assert all(isinstance(l, nn.TransformerEncoderLayer) and l.norm_first for l in m.layers)
    assert [n for n, _ in resolve(m, ["layers.*"])] == ["layers.0", "layers.1"]
    assert sum(p.numel() for p in vit(seed=0).parameters()) == 138890
    with pytest.raises(ConfigError, match="does not divide"):
        vit(patch=5)
    loss = F.cross_entropy(m(x), torch.tensor([0, 1, 2]))   # plain autograd trains every parameter
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("name,model,blocks", [("vit-mnist", "vit", 4), ("resnet20-cifar10", "resnet20", 3)])
def test_issue14_experiment_files(name, model, blocks):
    from rbp import experiments
    exp = experiments.load(name)
    assert exp.protocol["model"] == model
    algs = {c.id: c.algorithm for c in exp.configs}
    assert {"bp", "rbp", "srbp"} <= set(algs)
    block_cfgs = [a for a in algs.values() if a.blocks]
    assert block_cfgs and all(len(a.blocks) == blocks for a in block_cfgs)
    spec = exp.spec(exp.configs[0], epochs=1)
    assert spec.model == model


def test_block_mode_on_the_resnet_experiment_network_takes_a_step():
    from rbp import experiments
    exp = experiments.load("resnet20-cifar10")
    cfg = next(c for c in exp.configs if c.algorithm.blocks)
    base = resnet20(in_channels=3, image_size=8, width=4, seed=0)
    model = rbp.convert(base, cfg.algorithm, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    before = model.conv1.weight.detach().clone()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(before, model.conv1.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_block_mode_on_cuda_equals_cpu():
    base = ResMLP().double()
    cpu = rbp.convert(base, "srbp", blocks=["blocks.*"], block_feedback="rbp", seed=0)
    gpu = rbp.convert(base, "srbp", blocks=["blocks.*"], block_feedback="rbp", seed=0).to("cuda")
    x, y = _x_y()
    got = grads(gpu, x.cuda(), y.cuda())
    assert getattr(gpu.blocks[0], BUFFER).device.type == "cuda"
    assert_grads_equal({k: v.cpu() for k, v in got.items()}, grads(cpu, x, y), tol=1e-10)


def test_adam_optimizer_in_protocols_and_stores():
    from rbp.experiments.store import spec_key
    from rbp.optim import Adam
    from rbp.train import TrainSpec, Trainer
    w = torch.nn.Parameter(torch.ones(3))
    opt = Adam([w], lr=0.1, decay=0.5)
    for t in range(3):
        w.grad = torch.tensor([1.0, -2.0, 3.0])
        opt.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / (1 + 0.5 * t))
    assert opt.current_lr() == pytest.approx(0.1 / 2.5)
    # a constant gradient: each Adam step moves by lr_t * sign(g) (bias-corrected moments)
    assert torch.allclose(w.detach(), 1 - 0.1 * torch.tensor([1.0, -1.0, 1.0]) * (1 + 1 / 1.5 + 1 / 2), atol=1e-5)
    spec = TrainSpec(dataset="digits", optimizer="adam", lr=1e-3, hidden=(16,), epochs=1)
    assert isinstance(Trainer(spec.validate(), [0], probe_size=0).opt, Adam)
    assert spec_key(spec)["optimizer"] == "adam" and "optimizer" not in spec_key(TrainSpec())   # old stores resume
    with pytest.raises(ConfigError, match="momentum is SGD's"):
        TrainSpec(optimizer="adam", momentum=0.9).validate()
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainSpec(optimizer="lbfgs").validate()


def test_shared_block_matrix_is_one_matrix_for_every_block():


    class Stream(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 6)
            self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.inp(x)
            for layer in self.layers:
                h = h + torch.tanh(layer(h))
            return self.head(h)

    x = torch.randn(4, 5)
    for seed in (3, None):
        shared = rbp.convert(Stream(), "srbp", blocks=["layers.*"], block_matrix="shared", seed=seed)
        shared(x)
        mats = [m.skip_feedback for m in shared.layers]
        assert all(torch.equal(mats[0], c) for c in mats[1:])
    own = rbp.convert(Stream(), "srbp", blocks=["layers.*"], seed=3)
    own(x)
    assert not torch.equal(own.layers[0].skip_feedback, own.layers[1].skip_feedback)
    with pytest.raises(rbp.ConfigError, match="block_matrix"):
        rbp.algorithm("srbp", block_matrix="shared")
    with pytest.raises(rbp.ConfigError, match="block_matrix must be"):
        rbp.algorithm("srbp", blocks=["layers.*"], block_matrix="mine")
    assert "shared C" in rbp.algorithm("srbp", blocks=["layers.*"], block_matrix="shared").describe()

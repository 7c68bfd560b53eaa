"""Training runs: determinism, ensembles, frozen layers, and short real-data runs on MNIST."""

import pytest
import torch

import rbp
from rbp.data import load
from rbp.train import TrainSpec, train, train_group


def _spec(alg="rbp", **kw):
    opts = kw.pop("opts", {})
    return TrainSpec(dataset="digits", algorithm=rbp.algorithm(alg, **opts), epochs=kw.pop("epochs", 3), **kw)


def test_same_seed_gives_bitwise_identical_runs():
    m1, h1 = train_group(_spec("srbp", opts={"dropout": 0.2}), [5])
    m2, h2 = train_group(_spec("srbp", opts={"dropout": 0.2}), [5])
    assert [r.test_accuracy for r in h1[0]] == [r.test_accuracy for r in h2[0]]
    assert [r.train_loss for r in h1[0]] == [r.train_loss for r in h2[0]]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    _, h3 = train_group(_spec("srbp", opts={"dropout": 0.2}), [6])
    assert [r.train_loss for r in h3[0]] != [r.train_loss for r in h1[0]]


@pytest.mark.parametrize("alg,opts", [("rbp", {}), ("srbp", {"dropout": 0.1}), ("bp", {"quantize_error": 5})])
def test_ensemble_training_matches_separate_runs(alg, opts):
    spec = _spec(alg, opts=opts, epochs=2)
    together = train(spec, [0, 1, 2], ensemble=True)
    apart = train(spec, [0, 1, 2], ensemble=False)
    for a, b in zip(together, apart):
        for ra, rb in zip(a, b):
            assert ra.seed == rb.seed and ra.ensemble == 3 and rb.ensemble == 1
            assert abs(ra.train_loss - rb.train_loss) < 1e-4
            assert abs(ra.test_accuracy - rb.test_accuracy) <= 2 / 297   # at most a couple of flipped test digits


def test_autograd_and_fused_drivers_train_alike():
    a = train(_spec("arbp", epochs=2), [3])[0]
    b = train(_spec("arbp", epochs=2, driver="autograd"), [3])[0]
    for ra, rb in zip(a, b):
        assert abs(ra.train_loss - rb.train_loss) < 1e-4


def test_frozen_layer_keeps_its_weights():
    spec = _spec("srbp", frozen=(2,), epochs=1)
    model, _ = train_group(spec, [0])
    fresh = rbp.convert(rbp.mlp([64, 100, 100, 100, 100, 10], seed=0), spec.algorithm, seed=0)
    assert torch.equal(model[2].weight, fresh[2].weight)
    assert not torch.equal(model[0].weight, fresh[0].weight)


def test_top_only_learns_but_less_than_bp():
    top = train(_spec("top", epochs=15), [0])[0][-1].test_accuracy
    bp = train(_spec("bp", epochs=15), [0])[0][-1].test_accuracy
    assert 0.3 < top < bp


@pytest.mark.slow
def test_mnist_two_epochs_well_above_chance(data_dir):
    ds = load("mnist", data_dir=data_dir)
    accs = {}
    for alg in ("bp", "rbp", "srbp"):
        spec = TrainSpec(dataset="mnist", algorithm=rbp.algorithm(alg), epochs=2)
        accs[alg] = train(spec, [0], dataset=ds)[0][-1].test_accuracy
    assert all(a > 0.85 for a in accs.values()), accs
    assert accs["bp"] >= accs["rbp"] - 0.01, accs


def test_alignment_diagnostics():
    _, h = train_group(_spec("bp", epochs=1), [0])
    a = h[0][-1].alignment
    assert all(a[f"signal_angle_{k}"] < 1e-3 and a[f"update_angle_{k}"] < 1e-3 for k in (1, 2, 3, 4))
    _, h = train_group(_spec("rbp", epochs=8), [0, 1])
    for hist in h:
        first, last = hist[0].alignment, hist[-1].alignment
        assert set(first) >= {"signal_angle_4", "update_angle_1", "feedback_angle_2", "feedback_norm_ratio_3"}
        # feedback alignment: the top hidden layer's signal turns towards the gradient during training
        assert last["signal_angle_4"] < 85 and last["signal_angle_4"] < first["signal_angle_4"]


def test_probe_does_not_change_training():
    spec = _spec("srbp", opts={"dropout": 0.3}, epochs=2)
    _, with_probe = train_group(spec, [2])
    _, without = train_group(spec, [2], probe_size=0)
    assert [r.train_loss for r in with_probe[0]] == [r.train_loss for r in without[0]]
    assert without[0][0].alignment == {}


def test_ensembles_are_split_to_fit_memory():
    spec = _spec("rbp", epochs=1)
    from rbp.train import ensemble_capacity
    assert ensemble_capacity(spec, 64, 10, memory=1 << 40) > 1000
    assert ensemble_capacity(spec, 64, 10, memory=1) == 1
    h = train(spec, [0, 1, 2], max_ensemble=2)
    assert [r[0].ensemble for r in h] == [2, 2, 1]
    assert [r[0].seed for r in h] == [0, 1, 2]


def test_freeze_counts_the_channels_weight_layers_vit():
    """--freeze N of a vit counts the channel's 19 sites: 3 is block 0's in_proj, 16 block 3's out_proj."""
    from rbp.train import build
    for h, want in ((3, "layers.0.self_attn.in_proj"), (16, "layers.3.self_attn.out_proj")):
        spec = TrainSpec(algorithm=rbp.algorithm("rbp"), model="vit", frozen=(h,)).validate()
        model = build(spec, [0], 196, 10, (1, 14, 14))
        assert len(model.rbp_channel.sites) == 19
        frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
        assert frozen and all(n.startswith(want) for n in frozen), frozen


@pytest.mark.parametrize("model,shape", [("convnet", (3, 32, 32)), ("lenet", (1, 28, 28)),
                                         ("resnet20", (3, 32, 32)), ("vit", (1, 14, 14))])
def test_the_range_trainspec_allows_is_the_channels_count(model, shape):
    from rbp.train import CONV_WEIGHT_LAYERS, build, weight_layers
    spec = TrainSpec(algorithm=rbp.algorithm("bp"), model=model).validate()
    assert len(weight_layers(build(spec, [0], 0, 10, shape))) == CONV_WEIGHT_LAYERS[model]

"""Ensembles of conv networks: K networks as one grouped-convolution network.

Member k of an ensemble must follow the network trained alone with seed k: the
same initial weights, feedback kernels and skip matrices, channel noise, and so the
same gradients and weights after a few optimizer steps (float tolerance).  The
networks are tiny (2 conv blocks of 3 channels on 16x16 images, float64).
"""

import pytest
import torch
import torch.nn.functional as F

import rbp
from rbp.models import cifar_convnet
from rbp.nn import FeedbackConv2d
from rbp.nn.conv import EnsembleFlatten, EnsembleFold, StackedConv2d
from rbp.optim import KerasSGD

K = 3
SEEDS = [4, 5, 6]


def _net(seed=None, ensemble=None):
    return cifar_convnet(1, 16, 4, seed=seed, channels=3, hidden=8, blocks=2, ensemble=ensemble).double()


def _pair(alg, **opts):
    ens = rbp.convert(_net(SEEDS[0], ensemble=SEEDS), alg, seed=SEEDS, **opts)
    alone = [rbp.convert(_net(s), alg, seed=s, **opts) for s in SEEDS]
    return ens, alone


def _batches(steps, rows=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(K, rows, 1, 16, 16, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (K, rows), generator=g)) for _ in range(steps)]


def _ensemble_loss(logits, y):
    """The trainer's ensemble loss: each member's batch-mean cross-entropy, summed over members."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum") / y.shape[1]


def test_the_model_layout_and_initial_weights():
    m = _net(SEEDS[0], ensemble=SEEDS)
    assert isinstance(m[0], EnsembleFold) and isinstance(m[1], StackedConv2d)
    assert any(isinstance(layer, EnsembleFlatten) for layer in m)
    assert m(torch.zeros(K, 2, 1, 16, 16, dtype=torch.float64)).shape == (K, 2, 4)
    for k, s in enumerate(SEEDS):          # member k is initialised as the network with seed k
        for p, q in zip(_net(s).parameters(), m.parameters()):
            assert torch.equal(p, q[k])
    with pytest.raises(rbp.ConfigError, match=r"\(3, batch, C, H, W\)"):
        m(torch.zeros(2, 1, 16, 16, dtype=torch.float64))


@pytest.mark.parametrize("alg,opts", [
    ("bp", {}), ("rbp", {}), ("srbp", {}),
    ("asrbp", {}), ("arbp", {}), ("rbp", {"feedback": "sign-concordant"}), ("srbp", {"derivative": False}),
    ("rbp", {"dropout": 0.2, "quantize_error": 3}), ("srbp", {"quantize_update": 3}), ("sbp", {}),
])
def test_member_k_equals_the_network_trained_alone_with_seed_k(alg, opts):
    ens, alone = _pair(alg, **opts)
    sites = [m for m in ens.modules() if isinstance(m, FeedbackConv2d)]
    assert sites and all(s.ensemble == K for s in sites)
    opt = KerasSGD(ens.parameters(), lr=0.05, decay=1e-3, momentum=0.9)
    opts_alone = [KerasSGD(m.parameters(), lr=0.05, decay=1e-3, momentum=0.9) for m in alone]
    for x, y in _batches(3):
        opt.zero_grad()
        _ensemble_loss(ens(x), y).backward()
        for k, (m, o) in enumerate(zip(alone, opts_alone)):
            o.zero_grad()
            F.cross_entropy(m(x[k]), y[k]).backward()
            for (name, p), q in zip(m.named_parameters(), ens.parameters()):
                assert torch.allclose(p.grad, q.grad[k], rtol=1e-9, atol=1e-12), (k, name)
            o.step()
        opt.step()
    for k, m in enumerate(alone):
        for (name, v), w in zip(m.state_dict().items(), ens.state_dict().values()):
            assert torch.allclose(v, w[k], rtol=1e-9, atol=1e-12), (k, name)
    # the ensemble kernels and skip matrices are per-member (K, ...) tensors of one network's shapes
    for s, a in zip(sites, [m for m in alone[0].modules() if isinstance(m, FeedbackConv2d)]):
        assert s.weight.shape == (K, *a.weight.shape)
        if a.feedback is not None:
            assert s.feedback.shape == (K, *a.feedback.shape)


def test_state_dict_round_trip_of_an_adaptive_conv_ensemble():
    ens, _ = _pair("asrbp")
    x, y = _batches(1)[0]
    _ensemble_loss(ens(x), y).backward()
    with torch.no_grad():
        for p in ens.parameters():
            p.sub_(0.1 * p.grad)
    fresh = rbp.convert(_net(0, ensemble=SEEDS), "asrbp", seed=[0, 1, 2])
    fresh.load_state_dict(ens.state_dict())
    for (k, v), w in zip(ens.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(v, w), k
    assert torch.equal(fresh(x), ens(x))


def test_trainer_trains_conv_seeds_as_one_ensemble(data_dir):
    """`train` puts several conv seeds in one ensemble; the histories match the seeds trained one by one."""
    from rbp.data import Dataset, load
    from rbp.train import TrainSpec, Trainer, train

    full = load("fashion-mnist", data_dir=data_dir, download=False)
    ds = Dataset("fm-small", full.x_train[:48], full.y_train[:48], full.x_test[:20], full.y_test[:20],
                 full.input_shape, 10)
    spec = TrainSpec(dataset="fashion-mnist", algorithm=rbp.algorithm("srbp"), model="convnet", augment=True,
                     batch_size=16, lr=0.01, decay=1e-5, momentum=0.9, epochs=1)
    tr = Trainer(spec, [0, 1], ds, probe_size=0)
    assert tr.K == 2 and all(m.ensemble == 2 for m in tr.model.modules() if isinstance(m, FeedbackConv2d))
    together = train(spec, [0, 1], ds, max_ensemble=2, probe_size=0)
    apart = train(spec, [0, 1], ds, ensemble=False, probe_size=0)
    for ha, hb in zip(together, apart):
        assert ha[0].ensemble == 2 and hb[0].ensemble == 1
        assert abs(ha[0].train_loss - hb[0].train_loss) < 1e-5
        assert abs(ha[0].test_loss - hb[0].test_loss) < 1e-5
        assert ha[0].test_accuracy == hb[0].test_accuracy

"""Paper 3's MNIST experiment: the engine's RBP training with a penalty on the output weights."""

import argparse
import json
import math

import pytest
import torch

from rbp.channel.algorithm import algorithm as make_algorithm
from rbp.data import load
from rbp.errors import ConfigError
from rbp.theory.cli import register
from rbp.theory.mnist import _penalised_trainer, train_mnist_fa
from rbp.train import TrainSpec


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_penalty_moves_only_the_output_weights_by_minus_lr_lambda_w(digits):
    spec = TrainSpec(dataset="digits", algorithm=make_algorithm("rbp"), hidden=(32,), activation="relu",
                     epochs=1, lr=0.1, decay=0.0)
    lam = 0.5
    plain, pen = (_penalised_trainer(spec, [3], l, digits, probe_size=0) for l in (0.0, lam))
    sites_p, sites_q = plain.model.rbp_channel.sites, pen.model.rbp_channel.sites
    w_out0 = sites_q[-1].weight.detach().clone()
    assert torch.equal(w_out0, sites_p[-1].weight)
    plain.train_epoch(max_steps=1)
    pen.train_epoch(max_steps=1)
    # the hidden layer sees the same minibatch and the same error: identical update
    assert torch.equal(sites_p[0].weight, sites_q[0].weight)
    expected = sites_p[-1].weight - 0.1 * lam * w_out0
    assert torch.allclose(sites_q[-1].weight, expected, atol=1e-6)
    assert not torch.allclose(sites_q[-1].weight, sites_p[-1].weight, atol=1e-4)


def test_train_reports_alignment_and_penalty_shrinks_output_weights(digits):
    kw = dict(hidden=64, epochs=6, seeds=(0, 1), dataset=digits, lr=0.1)
    free = train_mnist_fa(0.0, **kw)
    reg = train_mnist_fa(1.0, **kw)
    bp = train_mnist_fa(0.0, algorithm="bp", **kw)
    assert len(free) == 2 and len(free[0]) == 6
    for h in free + reg:
        row = h[-1]
        assert -1.0 <= row["alignment"] <= 1.0
        assert math.isclose(row["alignment"], math.cos(math.radians(row["feedback_angle"])))
    assert all(r[-1]["alignment"] is None for r in bp)
    assert max(h[-1]["out_norm"] for h in reg) < min(h[-1]["out_norm"] for h in free)
    assert min(h[-1]["test_accuracy"] for h in free + bp) > 0.5    # it learns


@pytest.mark.parametrize("kw", [dict(lam=-0.1), dict(lam=float("nan")), dict(algorithm="srbp"),
                                dict(hidden=0), dict(seeds=())])
def test_bad_input_is_a_config_error(kw, digits):
    base = dict(lam=0.0, dataset=digits, epochs=1, max_steps=1)
    base.update(kw)
    lam = base.pop("lam")
    with pytest.raises(ConfigError):
        train_mnist_fa(lam, **base)


def test_cli_on_mnist_writes_json_and_png(capsys, tmp_path, data_dir):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["theory", "mnist", "--lams", "0", "0.1", "--bp", "--epochs", "1", "--max-steps", "5",
                              "--seeds", "2", "--data-dir", str(data_dir), "--out", str(tmp_path), "--json"])
    assert args.func(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(s["algorithm"], s["lam"]) for s in r["summary"]] == [("rbp", 0.0), ("rbp", 0.1), ("bp", 0.0)]
    assert (tmp_path / "mnist_fa.png").stat().st_size > 10_000
    assert len(json.loads((tmp_path / "mnist_fa.json").read_text())["rows"]) == 6
    with pytest.raises(ConfigError):
        args = parser.parse_args(["theory", "mnist", "--lams", "-1", "--data-dir", str(data_dir)])
        args.func(args)

"""One table of defaults (rbp.protocols): the CLI, TrainSpec and the experiment files read it."""

import dataclasses

import pytest

from rbp import protocols
from rbp.cli import build_parser, train_spec_from_args
from rbp.experiments.experiment import load, parse
from rbp.train import TrainSpec


def _spec(*argv):
    return train_spec_from_args(build_parser().parse_args(["train", *argv]))


def test_cifar10_follows_the_conv_net_protocol():
    spec = _spec("--dataset", "cifar10", "--algorithm", "rbp")
    assert spec.model in ("cifar_convnet", "convnet") and spec.augment is True
    assert (spec.momentum, spec.lr, spec.decay, spec.batch_size, spec.epochs) == (0.9, 0.01, 1e-5, 128, 100)
    # the same numbers as the Table 1 experiment file
    exp = load("table1-cifar10")
    file_spec = exp.spec(exp.configs[0])
    for key in ("model", "augment", "momentum", "lr", "decay", "batch_size", "epochs"):
        assert getattr(spec, key) == getattr(file_spec, key), key


def test_mnist_protocol_and_explicit_flags_override():
    spec = _spec("-d", "mnist")
    assert (spec.model, spec.hidden, spec.lr, spec.decay, spec.momentum, spec.batch_size, spec.augment) == \
        ("mlp", (100, 100, 100, 100), 0.1, 1e-6, 0.0, 100, False)
    spec = _spec("-d", "cifar10", "--lr", "0.05", "--momentum", "0", "--no-augment", "--batch-size", "64",
                 "--model", "mlp", "--hidden", "30")
    assert (spec.lr, spec.momentum, spec.augment, spec.batch_size, spec.model, spec.hidden) == \
        (0.05, 0.0, False, 64, "mlp", (30,))
    assert spec.decay == 1e-5                                # not given: the protocol's


def test_trainspec_and_experiment_defaults_are_the_table():
    mnist = protocols.MNIST
    spec = TrainSpec()
    for f in dataclasses.fields(mnist):
        if f.name != "seeds":
            assert getattr(spec, f.name) == getattr(mnist, f.name), f.name
    assert TrainSpec.paper("cifar10").momentum == protocols.CIFAR10.momentum
    text = 'name = "x"\ndescription = "x"\ndataset = "{}"\n[[config]]\nid = "a"\nalgorithm = "bp"\n'
    assert parse(text.format("mnist")).protocol == mnist.as_dict()
    assert parse(text.format("cifar10")).protocol == protocols.CIFAR10.as_dict()
    with pytest.raises(Exception, match="unknown dataset"):
        protocols.protocol("imagenet")


def test_version_is_written_once():
    import pathlib
    import re

    import rbp
    root = pathlib.Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and re.search(r"^version\s*=\s*\"", pyproject, re.M) is None
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", rbp.__version__)


def test_package_data_names_files_that_exist():
    import glob
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    block = text[text.index("[tool.setuptools.package-data]"):]
    patterns = re.findall(r'"([^"]+)"', block.split("\n[", 1)[0])
    assert patterns
    for pat in patterns:
        assert glob.glob(str(root / "src" / "rbp" / pat)), pat

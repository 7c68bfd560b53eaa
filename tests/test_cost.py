"""Multiplications in the learning channel (paper 1, Eqs. 14-15)."""

import json

import pytest

import rbp
from rbp.cli import main
from rbp.cost import cost

MNIST = [784, 100, 100, 100, 100, 10]


def test_mnist_network_counts():
    bp, srbp = cost(MNIST, "bp"), cost(MNIST, "srbp")
    assert bp["paper_W_eq14"] == 784 * 100 + 3 * 100 * 100 + 100 * 10 == 109_400
    assert bp["channel"] == 3 * 100 * 100 + 100 * 10 == 31_000          # hidden layers only
    assert srbp["channel"] == srbp["paper_srbp_eq15"] == 10 * 400 == 4_000
    assert cost(MNIST, "rbp")["channel"] == cost(MNIST, "sbp")["channel"] == bp["channel"]
    assert bp["derivative"] == 400 and cost(MNIST, rbp.algorithm("rbp", derivative=False))["derivative"] == 0
    assert cost(MNIST, "arbp")["adaptation"] == 31_000 and cost(MNIST, "asrbp")["adaptation"] == 4_000
    top = cost(MNIST, "top")
    assert top["channel"] == top["derivative"] == 0 and top["update"] == 1000


def test_one_hidden_layer_rbp_and_srbp_cost_the_same():
    assert cost([50, 30, 7], "rbp")["channel"] == cost([50, 30, 7], "srbp")["channel"] == 30 * 7


def test_frozen_layers_do_not_update():
    assert cost(MNIST, "srbp", frozen=[1])["update"] == 109_400 - 78_400


def test_cost_cli(capsys):
    assert main(["cost", "--algorithm", "srbp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["sizes"] == MNIST and out["algorithms"][0]["channel"] == 4000
    assert main(["cost", "--sizes", "784,100,10"]) == 0
    text = capsys.readouterr().out
    assert "srbp" in text and "1,000" in text


@pytest.mark.parametrize("args", [["cost", "--sizes", "784"], ["cost", "--sizes", "a,b"],
                                  ["cost", "--algorithm", "foo"]])
def test_cost_cli_errors(args, capsys):
    assert main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_distinct_backward_network_counts_its_relay_layer():
    try:
        alg = rbp.algorithm("distinct")
    except rbp.ConfigError:
        pytest.skip("paper 2's distinct network is not in the engine")
    if not getattr(alg, "backward_hidden", ()):
        pytest.skip("distinct has no backward hidden layer here")
    (b,) = alg.backward_hidden
    assert cost(MNIST, alg)["channel"] == 10 * b + b * 400

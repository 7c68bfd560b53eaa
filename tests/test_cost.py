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


# ------------------------------------------------------------------ against what the engine computes

ENGINE = [("bp", {}), ("sbp", {}), ("rbp", {}), ("arbp", {}), ("srbp", {}), ("asrbp", {}), ("top", {}),
          ("twin", {}), ("atwin", {}), ("distinct", {"backward_hidden": (6,)}),
          ("distinct", {"backward_hidden": (6, 5)}), ("distinct", {"backward_hidden": (3, 6, 2)}),
          ("adistinct", {"backward_hidden": (5, 3)}), ("ndistinct", {"backward_hidden": (2, 7, 4, 3)})]


@pytest.mark.parametrize("name,opts", ENGINE)
def test_count_equals_the_multiplications_the_engine_performs(name, opts):
    """One example through the autograd driver: every matrix product of its backward pass is the
    channel, the adaptation of feedback matrices or a forward weight update; nothing else multiplies."""
    from torch.utils.flop_counter import FlopCounterMode
    import torch
    import torch.nn.functional as F

    sizes = [9, 8, 7, 6, 5, 4]                 # four hidden layers, all of different widths
    alg = rbp.algorithm(name, **opts)
    model = rbp.convert(rbp.mlp(sizes, "tanh", seed=0).double(), alg, seed=1)
    x = torch.randn(1, sizes[0], dtype=torch.float64)
    loss = F.cross_entropy(model(x), torch.tensor([2]))
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    multiplications = counter.get_total_flops() // 2      # a matrix product's flops = 2 x its multiplications
    c = cost(sizes, alg)
    adaptation = c["adaptation"]
    if alg.route == "chain" and alg.adaptive:
        # ARBP's dC is the forward update's own outer product R^{h+1} (O^h)^T, scaled entry by entry
        # (one multiplication per synapse of C, not a matrix product): the engine reuses it
        assert adaptation == sum(n * m for n, m in zip(sizes[1:-1], sizes[2:]))
        adaptation = 0
    assert multiplications == c["channel"] + adaptation + c["update"], c


def test_deeper_distinct_network_hand_count():
    """784-100-100-100-100-10 with a distinct network 10 -> 50 -> 30: the top hidden layer reads the
    50-unit layer, the three below it the 30-unit layer."""
    alg = rbp.algorithm("adistinct", backward_hidden=(50, 30))
    c = cost(MNIST, alg)
    projections = 50 * 100 + 30 * 100 * 3
    assert c["channel"] == 10 * 50 + 50 * 30 + projections == 16_000
    assert c["adaptation"] == projections


def test_distinct_network_deeper_than_the_forward_one_is_refused():
    with pytest.raises(rbp.ConfigError, match="at most 2 layers deep"):
        cost([20, 10, 10, 3], rbp.algorithm("distinct", backward_hidden=(4, 4, 4)))


def test_cost_command_takes_a_distinct_backward_network(capsys):
    import json

    from rbp.cli import main
    assert main(["cost", "-a", "distinct", "--backward-hidden", "50,30", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["algorithms"][0]
    assert row["channel"] == 16_000   # the hand count of test_deeper_distinct_network_hand_count above
    assert main(["cost", "--backward-hidden", "5"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cost_takes_options_after_the_name(capsys):
    """`rbp cost -a srbp:skip_projection=shared`: one projection with the widest layer's matrix instead of one per
    layer; a malformed or unknown option is one line and exit 2."""
    import json as _json
    from rbp.cli import main as _main
    sizes = "128,512,256,512,8192"
    assert _main(["cost", "--sizes", sizes, "-a", "srbp:skip_projection=shared", "--json"]) == 0
    shared = _json.loads(capsys.readouterr().out)["algorithms"][0]
    assert _main(["cost", "--sizes", sizes, "-a", "srbp", "--json"]) == 0
    own = _json.loads(capsys.readouterr().out)["algorithms"][0]
    assert shared["channel"] == 8192 * 512 and own["channel"] == 8192 * (512 + 256 + 512)
    for bad in ("srbp:bogus=1", "rbp:x"):
        assert _main(["cost", "-a", bad]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1

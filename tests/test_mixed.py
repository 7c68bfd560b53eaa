"""Mixed ensembles: configurations that differ only in their initial state train as one ensemble."""

import json

import pytest
import torch

import rbp
from rbp.channel.algorithm import training_signature
from rbp.data import load
from rbp.experiments.runner import run
from rbp.train import TrainSpec, mixable, train_group


def _sig(name, **opts):
    return training_signature(rbp.algorithm(name, **opts))


def test_signature_blanks_only_the_initial_state():
    assert _sig("rbp") == _sig("rbp", feedback="sparse-8") == _sig("rbp", feedback_scale=0.5, init_scale=2.0)
    assert _sig("srbp", feedback="uniform") == _sig("srbp", feedback="congruent")
    assert _sig("bp") == _sig("bp-small")
    assert _sig("rbp") != _sig("srbp")
    assert _sig("rbp") != _sig("rbp", derivative=False)
    assert _sig("rbp") != _sig("rbp", feedback="resampled")       # acts at every step
    assert _sig("rbp") != _sig("arbp")


def _spec(name="rbp", **opts):
    return TrainSpec(dataset="digits", algorithm=rbp.algorithm(name, **opts), epochs=2, hidden=(24, 24))


MEMBERS = [_spec(), _spec(feedback="sparse-2"), _spec(feedback_scale=0.5, init_scale=0.7), _spec(feedback="congruent")]


def test_member_k_of_a_mixed_ensemble_equals_its_network_trained_alone():
    ds = load("digits")
    seeds = [0, 0, 1, 2]
    _, together = train_group(MEMBERS[0], seeds, ds, member_specs=MEMBERS)
    for spec, seed, h in zip(MEMBERS, seeds, together):
        _, (alone,) = train_group(spec, [seed], ds)
        for a, b in zip(h, alone):
            assert a.test_loss == pytest.approx(b.test_loss, rel=1e-5, abs=1e-6)
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5, abs=1e-6)
            assert a.test_accuracy == pytest.approx(b.test_accuracy, abs=1e-9)


def test_mixed_ensemble_initial_state_is_each_members_own():
    model = rbp.mlp([8, 6, 5, 3], "tanh", seed=[0, 0], ensemble=[0, 0])
    mixed = rbp.convert(model, "rbp", seed=[0, 0], member_algorithms=["rbp", rbp.algorithm("rbp", feedback="sparse-1",
                                                                                            init_scale=0.5)])
    w0 = [m for m in mixed.modules() if isinstance(m, rbp.nn.layers.FeedbackLinear)]
    plain = rbp.convert(rbp.mlp([8, 6, 5, 3], "tanh", seed=0), "rbp", seed=0)
    sparse = rbp.convert(rbp.mlp([8, 6, 5, 3], "tanh", seed=0), "rbp", seed=0, feedback="sparse-1", init_scale=0.5)
    for site, a, b in zip(w0, [m for m in plain.modules() if isinstance(m, rbp.nn.layers.FeedbackLinear)],
                          [m for m in sparse.modules() if isinstance(m, rbp.nn.layers.FeedbackLinear)]):
        assert torch.equal(site.weight[0], a.weight) and torch.equal(site.weight[1], b.weight)
        if a.feedback is not None:
            assert torch.equal(site.feedback[0], a.feedback) and torch.equal(site.feedback[1], b.feedback)


def test_incompatible_members_are_refused_in_one_line():
    model = rbp.mlp([8, 6, 3], "tanh", seed=[0, 1], ensemble=[0, 1])
    with pytest.raises(rbp.ConfigError) as e:
        rbp.convert(model, "rbp", seed=[0, 1], member_algorithms=["rbp", "srbp"])
    assert "\n" not in str(e.value) and "srbp" in str(e.value)
    with pytest.raises(rbp.ConfigError):
        rbp.convert(model, "rbp", seed=[0, 1], member_algorithms=["rbp"])
    assert not mixable(_spec(), _spec(derivative=False))
    assert not mixable(_spec(), TrainSpec(dataset="digits", algorithm=rbp.algorithm("rbp"), epochs=3, hidden=(24, 24)))


EXP = """
name = "mixed"
description = "configurations that share a mixed ensemble"
dataset = "digits"

[protocol]
epochs = 1
seeds = 2
hidden = [24, 24]

[[config]]
id = "rbp"
algorithm = "rbp"

[[config]]
id = "srbp"
algorithm = "srbp"

[[config]]
id = "rbp-sparse"
algorithm = "rbp"
feedback = "sparse-2"
"""


def test_runner_mixes_compatible_configurations_and_matches_unmixed_runs(tmp_path):
    path = tmp_path / "mixed.toml"
    path.write_text(EXP)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run(path, tmp_path / "a", progress=False)
        run(path, tmp_path / "b", progress=False, ensemble=False)
    finally:
        torch.set_num_threads(n)
    for name in ("rbp--seed0", "rbp--seed1", "srbp--seed0", "rbp-sparse--seed1"):
        a = json.loads((tmp_path / "a" / "runs" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "b" / "runs" / f"{name}.json").read_text())
        assert a["history"][-1]["test_loss"] == pytest.approx(b["history"][-1]["test_loss"], rel=1e-5)
        assert b["ensemble"] == [b["seed"]] and "mixed_with" not in b
        if name.startswith("rbp"):
            assert a["mixed_with"] == ["rbp", "rbp", "rbp-sparse", "rbp-sparse"] and a["ensemble"] == [0, 1, 0, 1]
        else:
            assert "mixed_with" not in a and a["ensemble"] == [0, 1]


def test_run_command_has_a_flag_that_turns_ensembles_off(tmp_path, capsys):
    from rbp.cli import main
    path = tmp_path / "mixed.toml"
    path.write_text(EXP.replace("epochs = 1", "epochs = 1\nbatch_size = 200").replace("seeds = 2", "seeds = 1"))
    n = torch.get_num_threads()
    try:
        assert main(["run", str(path), "--out", str(tmp_path / "o"), "--no-ensemble", "--quiet", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(n)
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "o" / "runs").glob("*.json"))]
    assert len(docs) == 3 and all(d["ensemble"] == [0] and "mixed_with" not in d for d in docs)

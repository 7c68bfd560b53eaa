"""Callbacks and TensorBoard logging (rbp.callbacks): what they are told, and that they change nothing."""

import json
import math
import sys

import pytest
import torch

import rbp
from rbp.callbacks import Callback, TensorBoardLogger, scalars
from rbp.cli import main
from rbp.experiments import load_rows, parse, run
from rbp.train import EpochRecord, TrainSpec, train, train_group

TINY = """
name = "tiny-cb"
description = "a tiny digits experiment for the callback tests"
dataset = "digits"

[protocol]
epochs = 2
seeds = 2
hidden = [16, 16]

[[config]]
id = "rbp"
algorithm = "rbp"

[[config]]
id = "srbp"
algorithm = "srbp"
"""


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, run, info):
        self.calls.append(("begin", run, info))

    def on_epoch_end(self, run, record):
        self.calls.append(("epoch", run, record))

    def on_train_end(self, run, history):
        self.calls.append(("end", run, history))


def _spec(alg="rbp", **kw):
    kw.setdefault("epochs", 2)
    return TrainSpec(dataset="digits", algorithm=rbp.algorithm(alg), hidden=(16, 16), **kw)


def _same(h1, h2):
    """Every number of two histories equal (NaN equal to NaN), wall times aside."""
    for a, b in zip(h1, h2, strict=True):
        ra, rb = a.as_dict(), b.as_dict()
        assert ra.keys() == rb.keys()
        for k in ra:
            if k == "seconds":
                continue
            same = ra[k] == rb[k] or (isinstance(ra[k], float) and math.isnan(ra[k]) and math.isnan(rb[k]))
            assert same, (k, ra[k], rb[k])


def test_logging_changes_nothing(tmp_path):
    spec = _spec("arbp", epochs=3)        # adaptive feedback: alignment, feedback and settling figures
    m0, plain = train_group(spec, [0, 1])
    rec = Recorder()
    callbacks = [rec, lambda run, r: torch.rand(3)]          # the second draws from torch's global generator
    try:
        callbacks.append(TensorBoardLogger(tmp_path / "tb"))
    except rbp.ConfigError:                                  # tensorboard not installed: the others still run
        pass
    m1, logged = train_group(spec, [0, 1], callbacks=callbacks)
    for a, b in zip(plain, logged):
        _same(a, b)
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert len([c for c in rec.calls if c[0] == "epoch"]) == 6


def test_order_names_and_info():
    rec = Recorder()
    _, hs = train_group(_spec(), [3, 4], callbacks=rec)
    kinds = [(c[0], c[1]) for c in rec.calls]
    assert kinds == [("begin", "seed3"), ("begin", "seed4"), ("epoch", "seed3"), ("epoch", "seed4"),
                     ("epoch", "seed3"), ("epoch", "seed4"), ("end", "seed3"), ("end", "seed4")]
    info = rec.calls[0][2]
    assert info["seed"] == 3 and info["ensemble"] == [3, 4] and info["spec"]["algorithm"] == "rbp"
    assert info["spec"]["hidden"] == [16, 16] and info["label"] == "rbp"
    json.dumps(info)                                       # plain data, for any logger's config
    assert rec.calls[2][2] is hs[0][0] and rec.calls[-1][2] is hs[1]
    m = hs[0][0].metrics()
    assert m["test_accuracy"] == hs[0][0].test_accuracy and "signal_angle_1" in m and "seed" not in m


def test_functions_and_partial_objects_are_callbacks():
    seen, ended = [], []

    class OnlyEnd:
        def on_train_end(self, run, history):
            ended.append((run, len(history)))

    hs = train(_spec(), [0, 1], ensemble=False, callbacks=[lambda run, r: seen.append((run, r.epoch)), OnlyEnd()],
               runs=[{"run": "a"}, {"run": "b"}])
    assert seen == [("a", 1), ("a", 2), ("b", 1), ("b", 2)] and ended == [("a", 2), ("b", 2)]
    assert len(hs) == 2
    with pytest.raises(rbp.ConfigError, match="on_epoch_end"):
        train_group(_spec(), [0], callbacks=[42])


def test_record_round_trips_through_a_flat_row():
    _, (h,) = train_group(_spec(), [0])
    r = h[-1]
    back = EpochRecord.from_dict(r.as_dict())
    assert back == r
    row = r.as_dict()
    row["signal_angle_1"] = None           # as the store writes NaN
    assert math.isnan(EpochRecord.from_dict(row).alignment["signal_angle_1"])


def test_scalar_tags():
    r = EpochRecord(0, 1, 0.5, 0.8, 0.6, 0.75, 2.0, 4, False,
                    {"signal_angle_1": 30.0, "feedback_norm_ratio_2": 1.5, "feedback_angle_1": math.nan})
    assert scalars(r) == {"loss/train": 0.5, "loss/test": 0.6, "accuracy/train": 0.8, "accuracy/test": 0.75,
                          "time/epoch_seconds": 2.0, "time/seconds_per_network": 0.5,
                          "signal_angle/layer_1": 30.0, "feedback_norm_ratio/layer_2": 1.5}


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(folder))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_rbp_train_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    tb, out = tmp_path / "tb", tmp_path / "run"
    assert main(["train", "-a", "rbp", "--epochs", "2", "--seeds", "2", "--hidden", "16,16", "--quiet",
                 "--tensorboard", str(tb), "--out", str(out)]) == 0
    assert sorted(p.name for p in tb.iterdir()) == ["seed0", "seed1"]
    ev = _events(tb / "seed1")
    rows = [r for r in (out / "history.csv").read_text().splitlines()[1:] if r.startswith("1,")]
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in rows]
    assert [s for s, _ in ev["accuracy/test"]] == [1, 2]
    for (step, v), row in zip(ev["accuracy/test"], rows):
        assert v == pytest.approx(float(row["test_accuracy"]), rel=1e-6)
    for tag in ("loss/train", "signal_angle/layer_2", "update_angle/layer_1", "feedback_angle/layer_1",
                "feedback_norm_ratio/layer_2", "time/epoch_seconds"):
        assert len(ev[tag]) == 2, tag
    assert ev["feedback_angle/layer_1"][-1][1] == pytest.approx(float(rows[-1]["feedback_angle_1"]), rel=1e-6)
    # the same command without --tensorboard: every number but the wall times is the same
    assert main(["train", "-a", "rbp", "--epochs", "2", "--seeds", "2", "--hidden", "16,16", "--quiet",
                 "--out", str(tmp_path / "plain")]) == 0

    def numbers(folder):
        lines = (folder / "history.csv").read_text().splitlines()
        names = lines[0].split(",")
        return [[v for k, v in zip(names, line.split(",")) if k != "seconds"] for line in lines]

    assert numbers(out) == numbers(tmp_path / "plain")


def test_rbp_run_tensorboard_and_callbacks_leave_the_store_unchanged(tmp_path):
    pytest.importorskip("tensorboard")
    exp = parse(TINY, "tiny-cb.toml")
    run(exp, tmp_path / "plain", progress=False)
    rec = Recorder()
    run(exp, tmp_path / "logged", progress=False, callbacks=rec)
    a, b = load_rows(tmp_path / "plain"), load_rows(tmp_path / "logged")
    strip = lambda rows: sorted((json.dumps({k: v for k, v in r.items() if "seconds" not in k}, sort_keys=True)
                                 for r in rows))
    assert strip(a) == strip(b) and len(a) == 2 * 2 * 2
    assert sorted({c[1] for c in rec.calls}) == ["rbp/seed0", "rbp/seed1", "srbp/seed0", "srbp/seed1"]
    begin = [c[2] for c in rec.calls if c[0] == "begin" and c[1] == "srbp/seed1"][0]
    assert (begin["experiment"], begin["config"], begin["seed"]) == ("tiny-cb", "srbp", 1)
    # and through the command line
    path = tmp_path / "tiny-cb.toml"
    path.write_text(TINY)
    tb = tmp_path / "tb"
    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "--quiet", "--tensorboard", str(tb)]) == 0
    assert sorted(str(p.relative_to(tb)) for p in tb.glob("*/*")) == ["rbp/seed0", "rbp/seed1", "srbp/seed0",
                                                                      "srbp/seed1"]
    assert len(_events(tb / "srbp" / "seed0")["accuracy/train"]) == 2


def test_missing_tensorboard_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # import fails
    assert main(["train", "--epochs", "1", "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'rbp[tensorboard]'" in err
    assert not (tmp_path / "tb").exists()
    assert main(["run", "fig1", "--out", str(tmp_path / "s"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "rbp[tensorboard]" in capsys.readouterr().err and not (tmp_path / "s").exists()

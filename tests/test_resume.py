"""Runs resume mid-training: per-epoch checkpoints, run claims, and what the runner says about odd files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rbp
from rbp.experiments import run
from rbp.experiments.store import CHECKPOINT_FORMAT, Claims, Store, checkpoint_name

SRC = str(Path(__file__).resolve().parent.parent / "src")

# Every kind of random stream a run owns: shuffling and augmentation (data), channel dropout and the
# mirror phase (noise), feedback drawn at the start (init), an ensemble of two and a single network.
RESUMABLE = """
name = "tiny-resume"
description = "resumable runs"
reference = "tests"
dataset = "digits"

[protocol]
epochs = {epochs}
seeds = 2
hidden = [24, 24]
augment = true

[[config]]
id = "rbp-dropout"
algorithm = "rbp"
dropout = 0.2

[[config]]
id = "kp"
algorithm = "kp"

[[config]]
id = "wm"
algorithm = "wm"
"""


def _exp(tmp_path, epochs=6, name="tiny-resume"):
    path = tmp_path / f"{name}.toml"
    path.write_text(RESUMABLE.format(epochs=epochs).replace('name = "tiny-resume"', f'name = "{name}"'))
    return path


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "rbp.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _histories(out):
    docs, problems = Store(out).load()
    assert problems == []
    return {(d["config"]["id"], d["seed"]): [{k: v for k, v in r.items() if k != "seconds"} for r in d["history"]]
            for d in docs}


def _final_states(out):
    """The weights, feedback, optimizer and stream states kept at the end of every run (--keep-checkpoints)."""
    states = {}
    for f in sorted((Path(out) / "checkpoints").glob("*.pt")):
        doc = torch.load(f, weights_only=True)
        assert doc["format"] == CHECKPOINT_FORMAT
        # torch's global generator is restored on resume, but no stream of rbp's runs draws from it: its
        # state at the end depends on what else the process did, and is not part of a run
        states[f.name] = {k: v for k, v in doc["state"].items() if k != "torch_rng"}
    return states


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_run_killed_mid_epoch_resumes_bitwise_identically(tmp_path):
    exp = _exp(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    common = ["--threads", "1", "--quiet", "--keep-checkpoints", "--no-ensemble"]
    p = _cli(str(exp), "--out", str(whole), *common)
    assert p.wait(timeout=300) == 0, p.stderr.read()

    # kill the second run once its checkpoint holds two epochs: mid-way through its third epoch or later
    p = _cli(str(exp), "--out", str(cut), *common)
    target = cut / "checkpoints" / checkpoint_name([("rbp-dropout", 1)])
    deadline = time.time() + 240
    epochs_done = 0
    while time.time() < deadline and p.poll() is None:
        if target.is_file():
            try:
                epochs_done = len(torch.load(target, weights_only=True)["histories"][0])
            except Exception:           # being replaced right now
                epochs_done = 0
            if epochs_done >= 2:
                break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 2 <= epochs_done < 6, f"the run was not interrupted mid-way ({epochs_done} epochs)"
    assert not (cut / "runs" / "rbp-dropout--seed1.json").exists()
    claims = list((cut / "claims").glob("*.claim"))
    assert [c.name for c in claims] == ["rbp-dropout--seed1.claim"]        # the dead process's claim

    p = _cli(str(exp), "--out", str(cut), *common[:-1], "--no-ensemble", "--json")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["trained"] == 5 and summary["skipped"] == 1 and not summary["claimed_elsewhere"]
    assert "rbp-dropout--seed1.pt: resumed after epoch" in stderr      # said in one line, also with --quiet
    assert len(summary["resumed"]) == 1 and summary["resumed"][0]["from_epoch"] >= 2
    # the resumed run is the run that never stopped: every history row, every weight and stream state
    assert _histories(cut) == _histories(whole)
    a, b = _final_states(cut), _final_states(whole)
    assert sorted(a) == sorted(b) and len(a) == 6
    assert [k for k in a if not _same(a[k], b[k])] == []
    assert not list((cut / "claims").glob("*.claim"))                  # the taken-over claim is released


@pytest.fixture
def every_epoch(monkeypatch):
    """A checkpoint at the end of every epoch, however short (digits epochs take milliseconds)."""
    import rbp.train as train_module
    monkeypatch.setattr(train_module, "CHECKPOINT_COST_FACTOR", 0)


def test_checkpoints_of_stored_runs_are_removed_and_an_ensemble_resumes(tmp_path, every_epoch):
    exp = _exp(tmp_path, epochs=3)
    out = tmp_path / "s"
    # stop a two-seed ensemble after its second epoch (from inside: the checkpoint is written first)
    import rbp.train as train_module
    Stop, real, epoch = _stop_after(2)
    train_module.Trainer.train_epoch = epoch
    try:
        with pytest.raises(Stop):
            run(exp, out, progress=False, threads=1)
    finally:
        train_module.Trainer.train_epoch = real
    name = checkpoint_name([("rbp-dropout", 0), ("rbp-dropout", 1)])
    assert [f.name for f in (out / "checkpoints").iterdir()] == [name]
    assert not list((out / "claims").glob("*.claim"))                  # released on the way out
    from rbp.report import write_report
    write_report(out)
    assert "rbp-dropout seeds 0,1 at epoch 2 of 3" in (out / "report.md").read_text()
    lines = []
    s = run(exp, out, progress=False, threads=1, log=lines.append)
    assert s["trained"] == 6 and [r["from_epoch"] for r in s["resumed"]] == [2]
    assert any(l.startswith(name) and "resumed after epoch 2 of 3" in l for l in lines)
    assert not list((out / "checkpoints").iterdir())                   # removed once the runs are stored
    fresh = tmp_path / "fresh"
    run(exp, fresh, progress=False, threads=1)
    assert _histories(out) == _histories(fresh)


def test_extend_continues_shorter_runs_from_their_kept_checkpoints(tmp_path, every_epoch):
    out, fresh = tmp_path / "s", tmp_path / "f"
    run(_exp(tmp_path, epochs=2), out, progress=False, threads=1, keep_checkpoints=True)
    with pytest.raises(rbp.ConfigError, match="epochs=2.*--extend continues shorter runs"):
        run(_exp(tmp_path, epochs=4), out, progress=False, threads=1)
    lines = []
    s = run(_exp(tmp_path, epochs=4), out, progress=False, threads=1, extend=True, log=lines.append)
    assert s["trained"] == 6 and len(s["resumed"]) == 3
    assert sum("has 2 epochs; it is trained on to 4" in l for l in lines) == 6
    run(_exp(tmp_path, epochs=4), fresh, progress=False, threads=1)
    assert _histories(out) == _histories(fresh)
    assert not list((out / "checkpoints").iterdir())
    # a longer stored run is another protocol, even with --extend
    with pytest.raises(rbp.ConfigError, match="epochs=4"):
        run(_exp(tmp_path, epochs=3), out, progress=False, extend=True)


def test_an_unreadable_run_file_and_checkpoint_are_named_in_one_line(tmp_path, capsys):
    exp = _exp(tmp_path, epochs=1)
    out = tmp_path / "s"
    run(exp, out, progress=False, threads=1)
    (out / "runs" / "kp--seed1.json").write_text('{"format": "rbp-run/1", "hist')
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / checkpoint_name([("kp", 1)])).write_bytes(b"not a checkpoint")
    from rbp.cli import main
    assert main(["run", str(exp), "--out", str(out), "--threads", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if "kp--seed1.json" in l]
    assert len(line) == 1 and "cannot be read" in line[0] and "trained again" in line[0]
    assert any("kp--seed1.pt cannot be read" in l and "epoch 1" in l for l in err.splitlines())
    assert "Traceback" not in err
    assert Store(out).read("kp", 1) is not None


def test_claims_are_exclusive_and_a_dead_holder_is_taken_over(tmp_path):
    store = Store(tmp_path)
    with Claims(store) as a, Claims(store) as b:
        assert a.take("bp", 0) is None
        assert a.take("bp", 0) is None                     # held already: still ours
        assert "pid" in b.take("bp", 0)                     # another live holder
        a.release("bp", 0)
        assert b.take("bp", 0) is None
    assert not list(store.claims.iterdir())                 # both released on exit
    # a claim left by a process that no longer exists (same host) is taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    import socket
    store.claims.mkdir(exist_ok=True)
    (store.claims / "bp--seed1.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead),
                                                              "token": "x"}))
    with Claims(store) as c:
        assert c.take("bp", 1) is None
    # one on another host is taken over only once it has not been touched for STALE_CLAIM_SECONDS
    from rbp.experiments import store as store_module
    far = store.claims / "bp--seed2.claim"
    far.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    with Claims(store) as c:
        assert "elsewhere" in c.take("bp", 2)
        old = time.time() - store_module.STALE_CLAIM_SECONDS - 5
        os.utime(far, (old, old))
        assert c.take("bp", 2) is None


def test_two_processes_on_one_store_train_each_run_once(tmp_path):
    exp = _exp(tmp_path, epochs=3)
    out = tmp_path / "s"
    cmd = [str(exp), "--out", str(out), "--threads", "1", "--quiet", "--json", "--no-ensemble"]
    procs = [_cli(*cmd) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    summaries = []
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr
        summaries.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sum(s["trained"] for s in summaries) == 6
    for s in summaries:
        assert s["trained"] + s["skipped"] + len(s["claimed_elsewhere"]) == 6
    assert len(_histories(out)) == 6 and not list((out / "claims").glob("*.claim"))


def _stop_after(n_epochs):
    """Make the n-th call of Trainer.train_epoch (counted over the process) raise, as a kill would."""
    import rbp.train as train_module
    real = train_module.Trainer.train_epoch
    calls = []

    class Stop(Exception):
        pass

    def epoch(self, *a, **k):
        calls.append(1)
        if len(calls) == n_epochs + 1:
            raise Stop
        return real(self, *a, **k)

    return Stop, real, epoch


def test_dask_resumes_from_the_store_checkpoints_and_respects_claims(tmp_path, every_epoch):
    pytest.importorskip("distributed")
    import rbp.train as train_module
    exp = _exp(tmp_path, epochs=3)
    out, fresh = tmp_path / "s", tmp_path / "f"
    Stop, real, epoch = _stop_after(2)
    train_module.Trainer.train_epoch = epoch
    try:
        with pytest.raises(Stop):
            run(exp, out, progress=False, threads=1)
    finally:
        train_module.Trainer.train_epoch = real
    assert [f.name for f in (out / "checkpoints").iterdir()] == [
        checkpoint_name([("rbp-dropout", 0), ("rbp-dropout", 1)])]
    # another live process holds wm seed 1: the cluster run leaves it alone
    with Claims(Store(out)) as other:
        assert other.take("wm", 1) is None
        lines = []
        s = run(exp, out, progress=False, threads=1, executor="dask", workers=1, log=lines.append)
    assert s["failed"] == [] and s["trained"] == 5
    assert [c["config"] for c in s["claimed_elsewhere"]] == ["wm"] and len(s["resumed"]) == 1
    assert any("resumed after epoch 2 of 3" in l for l in lines)
    assert not list((out / "checkpoints").iterdir()) and not list((out / "claims").glob("*.claim"))
    run(exp, fresh, progress=False, threads=1)
    got, want = _histories(out), _histories(fresh)
    assert sorted(got) == sorted(k for k in want if k != ("wm", 1))
    # the resumed ensemble and the untouched one are the local runs, bit for bit (wm seed 0 trained alone
    # on the cluster, in an ensemble locally: the same run up to float rounding)
    assert [k for k in got if k[0] != "wm" and got[k] != want[k]] == []
    for a, b in zip(got[("wm", 0)], want[("wm", 0)]):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.02)


def test_configs_selects_what_runs_and_names_a_typo(tmp_path, capsys):
    exp = _exp(tmp_path, epochs=1)
    out = tmp_path / "s"
    s = run(exp, out, progress=False, threads=1, configs="kp,w*")
    assert s["runs"] == 4 and s["trained"] == 4
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["kp--seed0.json", "kp--seed1.json",
                                                                 "wm--seed0.json", "wm--seed1.json"]
    assert "[[config]]\nid = \"rbp-dropout\"" in (out / "experiment.toml").read_text()   # the whole experiment
    from rbp.cli import main
    assert main(["run", str(exp), "--out", str(out), "--configs", "kpp", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'kpp' matches no configuration" in err[0]


def test_short_epochs_checkpoint_every_few_epochs_and_still_resume_exactly(tmp_path):
    # digits epochs take milliseconds: saving every epoch would cost more than the training, so the
    # trainer saves every few epochs and always after the last; a resume from any of them is exact
    import rbp.train as train_module
    from rbp.train import TrainSpec, train_group
    ds = rbp.data.load("digits")
    spec = TrainSpec(dataset="digits", algorithm=rbp.algorithm("rbp"), epochs=12, hidden=(16,))
    saved = []

    class Spy:
        def load(self):
            return None

        def save(self, state, histories):      # the state holds live tensors: serialise it, as the store does
            import io
            buf = io.BytesIO()
            torch.save((state, histories), buf)
            buf.seek(0)
            saved.append((len(histories[0]), *torch.load(buf, weights_only=True)))

    train_module.CHECKPOINT_COST_FACTOR, old = 1e9, train_module.CHECKPOINT_COST_FACTOR
    try:
        _, whole = train_group(spec, [3], ds, checkpoint=Spy())
    finally:
        train_module.CHECKPOINT_COST_FACTOR = old
    assert [n for n, *_ in saved] == [1, 12]        # a huge factor: the first (its cost is measured) and the last
    saved.clear()
    _, whole = train_group(spec, [3], ds, checkpoint=Spy())
    n, state, hist = saved[len(saved) // 2]

    class From:
        def load(self):
            return state, hist

        def save(self, *a):
            pass

    _, resumed = train_group(spec, [3], ds, checkpoint=From())
    strip = lambda h: [{k: v for k, v in r.as_dict().items() if k != "seconds"} for r in h]
    assert strip(resumed[0]) == strip(whole[0]) and len(resumed[0]) == 12

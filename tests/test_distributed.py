"""`rbp run --executor dask`: the same store as the local runner, worker deaths, reported failures.

One LocalCluster of 2 worker processes (1 thread each) serves every test of
this module; the test that kills a worker runs last (the nanny restarts it).
"""

import json
import os
import signal
import threading
import time

import pytest

pytest.importorskip("dask")
distributed = pytest.importorskip("dask.distributed")

import rbp  # noqa: E402
from rbp.cli import main  # noqa: E402
from rbp.experiments import Store, load_rows, parse, run  # noqa: E402

TINY = """
name = "tiny-dask"
description = "a tiny digits experiment for the distributed tests"
dataset = "digits"

[protocol]
epochs = {epochs}
seeds = 2
hidden = [24, 24]

[[config]]
id = "bp"
algorithm = "bp"

[[config]]
id = "rbp"
algorithm = "rbp"

[[config]]
id = "srbp-sparse"
algorithm = "srbp"
feedback = "sparse-4"
"""
IDS = ("bp", "rbp", "srbp-sparse")


def tiny(epochs=2, dataset="digits"):
    return parse(TINY.format(epochs=epochs).replace('"digits"', f'"{dataset}"'), "tiny-dask.toml")


@pytest.fixture(scope="module")
def cluster():
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield c
    c.close(timeout=30)


def _files(out):
    return sorted(p.name for p in (out / "runs").iterdir())


def _numbers(out):
    """Every stored number except wall times, keyed by (config, seed, epoch)."""
    return {(r["config"], r["seed"], r["epoch"]): {k: v for k, v in r.items() if "seconds" not in k}
            for r in load_rows(out)}


def test_dask_results_equal_the_local_runner(tmp_path, cluster):
    local = run(tiny(), tmp_path / "local", progress=False, threads=1)
    dask = run(tiny(), tmp_path / "dask", progress=False, threads=1, executor="dask",
               scheduler=cluster.scheduler_address)
    assert (local["trained"], dask["trained"], dask["failed"]) == (6, 6, [])
    assert _files(tmp_path / "local") == _files(tmp_path / "dask") == \
        sorted(f"{c}--seed{s}.json" for c in IDS for s in (0, 1))
    a, b = _numbers(tmp_path / "local"), _numbers(tmp_path / "dask")
    assert a.keys() == b.keys() and len(a) == 3 * 2 * 2
    # the same ensembles, one torch thread each: the numbers are identical, not just close
    import math
    for key in a:
        for k, v in a[key].items():
            w = b[key][k]
            assert (v == w) or (isinstance(v, float) and math.isnan(v) and math.isnan(w)), (key, k, v, w)
    doc = json.loads((tmp_path / "dask" / "runs" / "bp--seed1.json").read_text())
    assert doc["ensemble"] == [0, 1] and doc["provenance"]["worker_pid"] != os.getpid()
    assert doc["provenance"]["data_checksums"] and doc["provenance"]["torch_version"]


def test_callbacks_hear_of_dask_runs_as_of_local_ones(tmp_path, cluster):
    calls = {"local": [], "dask": []}

    def recorder(name):
        return lambda run, record: calls[name].append((run, record.epoch, record.test_accuracy,
                                                       record.alignment.get("signal_angle_1")))

    run(tiny(), tmp_path / "local", seeds=1, progress=False, threads=1, callbacks=recorder("local"))
    run(tiny(), tmp_path / "dask", seeds=1, progress=False, threads=1, executor="dask",
        scheduler=cluster.scheduler_address, callbacks=recorder("dask"))
    assert sorted(calls["local"]) == sorted(calls["dask"])
    assert sorted({c[0] for c in calls["dask"]}) == [f"{c}/seed0" for c in sorted(IDS)]


def test_cluster_sweep_resumes_locally_and_back(tmp_path, cluster, capsys):
    out = tmp_path / "store"
    s = run(tiny(), out, seeds=1, progress=False, threads=1, executor="dask", scheduler=cluster.scheduler_address)
    assert (s["trained"], s["skipped"]) == (3, 0)
    s = run(tiny(), out, seeds=2, progress=False, threads=1)             # local: only seed 1 is left
    assert (s["trained"], s["skipped"]) == (3, 3)
    # and back to the cluster, through the command line, with one seed per task
    assert main(["run", str(_write(tmp_path, tiny(epochs=2).source)), "--out", str(out), "--seeds", "3",
                 "--executor", "dask", "--scheduler", cluster.scheduler_address, "--seeds-per-task", "1",
                 "--threads", "1", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["trained"], summary["skipped"], summary["failed"]) == (3, 6, [])
    assert _files(out) == sorted(f"{c}--seed{s}.json" for c in IDS for s in (0, 1, 2))
    assert json.loads((out / "runs" / "rbp--seed2.json").read_text())["ensemble"] == [2]


def _write(tmp_path, text):
    p = tmp_path / "tiny-dask.toml"
    p.write_text(text)
    return p


def test_deterministic_failure_is_reported_not_retried(tmp_path, cluster, capsys):
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (data / name).write_bytes(b"not the MNIST file")
    exp = tiny(dataset="mnist")
    t0 = time.monotonic()
    s = run(exp, tmp_path / "store", progress=False, executor="dask", scheduler=cluster.scheduler_address,
            data_dir=tmp_path / "data", retries=5)
    assert s["trained"] == 0 and len(s["failed"]) == 3
    for f in s["failed"]:
        assert f["error"].startswith("DataError") and "ubyte.gz" in f["error"], f
    assert _files(tmp_path / "store") == []
    assert time.monotonic() - t0 < 60
    # the command line: one stderr line per failed task, exit status 1
    path = _write(tmp_path, exp.source)
    code = main(["run", str(path), "--out", str(tmp_path / "store"), "--executor", "dask", "--scheduler",
                 cluster.scheduler_address, "--data-dir", str(tmp_path / "data"), "--quiet"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("rbp:")]
    assert code == 1 and len(err) == 3 and all("failed: DataError" in l for l in err)


def test_a_killed_worker_loses_only_its_task(tmp_path, cluster):
    """SIGKILL a worker process while it trains; the sweep ends with every run stored exactly once."""
    out = tmp_path / "store"
    client = distributed.Client(cluster.scheduler_address, timeout="30s")
    pids = client.run(os.getpid)                  # worker address -> process id
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            runs = out / "runs"
            stored = [p for p in runs.iterdir() if not p.name.startswith(".")] if runs.is_dir() else []
            busy = {w: ts for w, ts in client.processing().items() if ts}
            if stored and busy:                   # mid-sweep: some runs stored, others in flight
                worker, tasks = next(iter(busy.items()))
                killed.update(worker=worker, tasks=list(tasks), stored=len(stored))
                os.kill(pids[worker], signal.SIGKILL)
                return
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        s = run(tiny(epochs=3), out, seeds=3, progress=False, threads=1, executor="dask",
                scheduler=cluster.scheduler_address, seeds_per_task=1)
    finally:
        t.join(timeout=5)
        client.close()
    assert killed, "no worker was killed mid-sweep"
    assert 1 <= killed["stored"] < 9 and killed["tasks"]
    assert (s["trained"], s["failed"]) == (9, [])
    assert _files(out) == sorted(f"{c}--seed{k}.json" for c in IDS for k in range(3))
    keys = [(r["config"], r["seed"], r["epoch"]) for r in load_rows(out)]
    assert len(keys) == len(set(keys)) == 3 * 3 * 3
    assert Store(out).load()[1] == []

"""Named experiments: every file loads and validates, the runner resumes after being killed."""

import csv
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
from rbp.cli import main
from rbp.experiments import Store, bundled_names, load, load_rows, parse, run

from helpers import tiny_experiment

EXPECTED = {
    "table1-mnist", "table1-cifar10", "fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9",
    "obs-resampled", "obs-sign-concordant", "obs-nonzero-mean", "obs-frozen-layer", "obs-sign-only",
    "obs-magnitude-only", "obs-per-synapse", "obs-activations",
}

TINY = """
name = "tiny"
description = "a tiny digits experiment for the tests"
dataset = "digits"

[protocol]
epochs = {epochs}
seeds = 2
hidden = [24, 24]

[[config]]
id = "bp"
algorithm = "bp"
row = "baseline"
paper_mean = 95.0
paper_sd = 1.0

[[config]]
id = "rbp"
algorithm = "rbp"
row = "baseline"

[[config]]
id = "srbp-sparse"
algorithm = "srbp"
feedback = "sparse-4"
group = ["baseline", "sparse"]

[[config]]
id = "srbp-qupd"
algorithm = "srbp"
quantize_update = 3
decay = 0.0

[[config]]
id = "rbp-nod"
algorithm = "rbp"
derivative = false

[[config]]
id = "top"
algorithm = "top"
"""


def tiny(tmp_path, epochs=2, name="tiny"):
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(epochs=epochs).replace('name = "tiny"', f'name = "{name}"'))
    return path


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- the files

def test_the_issue_lists_every_experiment(capsys):
    assert set(bundled_names()) >= EXPECTED      # paper 1's; other papers' experiments come on top
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(l.split()[0] for l in lines) == sorted(bundled_names())
    assert all(len(l.split(None, 1)) == 2 for l in lines)      # name, then a one-line description


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_experiment_loads_and_builds(name):
    exp = load(name)
    assert exp.name == name and exp.configs and exp.description
    ids = [c.id for c in exp.configs]
    assert len(ids) == len(set(ids))
    if exp.missing_features():
        return
    from rbp.train import build
    for c in exp.configs:
        spec = exp.spec(c, epochs=1)      # a valid TrainSpec
        if spec.model == "mlp":           # what rbp.convert would refuse (sparse fan-out, frozen range, ...)
            build(spec, [0], 784 if exp.dataset != "digits" else 64, 10)


def _reference_csv():
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "reference" / "table1.csv",):
        if cand.is_file():
            return cand
    pytest.skip("reference table1.csv not found")


@pytest.mark.parametrize("dataset,rows", [("mnist", 15), ("cifar10", 5)])
def test_table1_has_the_papers_rows_and_numbers(dataset, rows):
    exp = load(f"table1-{dataset}")
    assert len({c.row for c in exp.configs}) == rows
    ref = [r for r in csv.DictReader(l for l in open(_reference_csv()) if not l.startswith("#"))
           if r["dataset"] == dataset]
    assert len(ref) == len(exp.configs)
    for r in ref:
        c = exp.config(f"{r['row']}-{r['algorithm']}")
        assert c.paper_mean == float(r["mean"])
        assert c.paper_sd == (float(r["sd"]) if r["sd"] else None)
    if dataset == "mnist":
        assert exp.config("quantized-update-1bit-rbp").paper_mean == 9.6
        assert all(c.protocol["decay"] == 0 for c in exp.configs if c.row.startswith("quantized-update"))
        assert all(c.protocol["decay"] == 1e-6 for c in exp.configs if not c.row.startswith("quantized-update"))
        assert exp.config("adaptive-srbp").algorithm.name == "asrbp"
        assert exp.protocol["epochs"] == 100 and exp.protocol["seeds"] == 5


def test_cifar10_run_says_the_convnet_is_missing(tmp_path, monkeypatch, capsys):
    import rbp.models
    monkeypatch.delattr(rbp.models, "cifar_convnet", raising=False)
    assert load("table1-cifar10").missing_features()
    out = tmp_path / "c"
    assert main(["run", "table1-cifar10", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "convolutional network" in err and "not available yet" in err
    assert not out.exists()


def test_per_synapse_file_validates():
    exp = load("obs-per-synapse")
    c = exp.config("srbp-per-synapse")
    try:
        rbp.algorithm("srbp", feedback="per-synapse")
    except rbp.ConfigError:
        assert c.algorithm is None and exp.missing_features()
    else:
        assert c.algorithm.describe() == "srbp[per-synapse]" and not exp.missing_features()


BAD = [
    ('name = "x"\ndescription = "d"\ndataset = "digits"\nepochz = 3\n[[config]]\nid = "a"\nalgorithm = "bp"\n',
     ["unknown key 'epochz'"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[protocol]\nlr = -1\n[[config]]\nid = "a"\nalgorithm = "bp"\n',
     ["protocol.lr", "(0, inf)"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[protocol]\nhidden = "100"\n[[config]]\nid = "a"\n'
     'algorithm = "bp"\n', ["protocol.hidden", "list of integers"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "rbp"\nquantize_error = 0\n',
     ["'a'", "1..16"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "foo"\n',
     ["algorithm", "must be one of", "srbp"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "bp"\nfeedback = "ternary"\n',
     ["'a'", "random feedback"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "srbp"\n'
     'feedback = "sparse-500"\n', ["feedback", "0..100"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "srbp"\nfrozen = [9]\n',
     ["frozen", "1..5"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "bp"\n'
     '[[config]]\nid = "a"\nalgorithm = "rbp"\n', ["id", "unique"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "bp"\npaper_mean = 120\n',
     ["paper_mean", "[0, 100]"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "bp"\nlr = "fast"\n',
     ["lr", "number"]),
    ('name = "x"\ndescription = "d"\ndataset = "imagenet"\n[[config]]\nid = "a"\nalgorithm = "bp"\n',
     ["dataset", "mnist"]),
    ('description = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "bp"\n', ["name is required"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n', ["config", "[[config]]"]),
    ('name = "x"\ndescription = [1\n', ["not valid TOML"]),
    ('name = "x"\ndescription = "d"\ndataset = "digits"\n[[config]]\nid = "a"\nalgorithm = "rbp"\n'
     'feedback_scale = 0\n', ["feedback_scale", "(0, inf)"]),
]


def test_scales_of_the_two_channels_are_config_keys():
    text = tiny_experiment({"id": "a", "algorithm": "rbp", "feedback_scale": 0.88, "init_scale": 0.5})
    exp = parse(text, "scales.toml")
    alg = exp.spec(exp.config("a")).algorithm
    assert (alg.feedback_scale, alg.init_scale) == (0.88, 0.5)


@pytest.mark.parametrize("text,words", BAD)
def test_bad_files_fail_with_one_clear_line(text, words, tmp_path, capsys):
    path = tmp_path / "bad-exp.toml"
    path.write_text(text)
    with pytest.raises(rbp.ConfigError) as e:
        load(path)
    msg = str(e.value)
    assert msg.startswith("bad-exp.toml:") and "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- the runner and the store

def test_run_resume_grow_and_refuse(tmp_path, one_thread):
    exp_path = tiny(tmp_path)
    out = tmp_path / "store"
    s = run(exp_path, out, seeds=2, progress=False, threads=1)
    assert (s["trained"], s["skipped"], s["runs"]) == (12, 0, 12)
    files = sorted(p.name for p in (out / "runs").iterdir())
    assert len(files) == 12 and "srbp-sparse--seed1.json" in files
    assert (out / "experiment.toml").read_text() == exp_path.read_text()

    rows = load_rows(out)
    assert len(rows) == 6 * 2 * 2
    r = rows[0]
    for key in ("experiment", "config", "seed", "epoch", "train_accuracy", "test_accuracy", "train_loss",
                "test_loss", "seconds", "ensemble", "seconds_per_network", "update_angle_1", "signal_angle_2"):
        assert key in r
    assert {x["ensemble"] for x in rows} == {2}
    doc = json.loads((out / "runs" / "rbp--seed0.json").read_text())
    assert doc["spec"]["epochs"] == 2 and doc["provenance"]["torch_version"] == torch.__version__
    assert doc["provenance"]["data_checksums"] and doc["config"]["algorithm"] == "rbp"

    # again: nothing to do; more seeds: only the new ones train, seeds 0 and 1 are reused
    assert run(exp_path, out, seeds=2, progress=False)["trained"] == 0
    kept = (out / "runs" / "bp--seed0.json").read_text()
    s = run(exp_path, out, seeds=3, progress=False, threads=1)
    assert (s["trained"], s["skipped"]) == (6, 12)
    assert (out / "runs" / "bp--seed0.json").read_text() == kept

    # an unreadable run file is skipped with a warning, and run again
    (out / "runs" / "top--seed2.json").write_text('{"format": "rbp-run/1", "hist')
    with pytest.warns(UserWarning, match="top--seed2.json"):
        assert len(load_rows(out)) == 6 * 3 * 2 - 2
    assert run(exp_path, out, seeds=3, progress=False, threads=1)["trained"] == 1

    # another protocol or another experiment in the same store is refused, not mixed
    with pytest.raises(rbp.ConfigError, match="epochs=2"):
        run(exp_path, out, epochs=3, seeds=1, progress=False)
    with pytest.raises(rbp.ConfigError, match="holds results of experiment 'tiny'"):
        run(tiny(tmp_path, name="other"), out, progress=False)


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "rbp.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_killed_run_resumes_and_every_run_is_stored_once(tmp_path):
    exp_path = tiny(tmp_path, epochs=4)
    out = tmp_path / "store"
    p = _cli("run", str(exp_path), "--out", str(out), "--threads", "1", "--quiet")
    runs = out / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if runs.is_dir() and any(f.suffix == ".json" and not f.name.startswith(".") for f in runs.iterdir()):
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = {f.name for f in runs.iterdir() if not f.name.startswith(".")}
    assert 1 <= len(before) < 12, f"the run was not interrupted mid-way ({len(before)} files)"

    p = _cli("run", str(exp_path), "--out", str(out), "--threads", "1", "--quiet", "--json")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["trained"] == 12 - len(before) and summary["skipped"] == len(before), (summary, before)

    names = sorted(f.name for f in runs.iterdir() if not f.name.startswith("."))
    ids = ["bp", "rbp", "srbp-sparse", "srbp-qupd", "rbp-nod", "top"]
    assert names == sorted(f"{c}--seed{s}.json" for c in ids for s in (0, 1))
    rows = load_rows(out)
    keys = [(r["config"], r["seed"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) == 6 * 2 * 4
    assert Store(out).experiment().name == "tiny"


def test_per_synapse_experiment_runs_on_digits(tmp_path, one_thread):
    try:
        rbp.algorithm("srbp", feedback="per-synapse")
    except rbp.ConfigError:
        pytest.skip("feedback 'per-synapse' is not in the engine yet")
    text = load("obs-per-synapse").source.replace('dataset = "mnist"', 'dataset = "digits"')
    text = text.replace("hidden = [100, 100, 100, 100]", "hidden = [16, 16]")
    exp = parse(text, "obs-per-synapse-digits.toml")
    s = run(exp, tmp_path / "ps", epochs=1, seeds=1, progress=False, threads=1)
    assert s["trained"] == 3

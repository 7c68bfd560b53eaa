"""Every path argument of every command: missing, a file where a folder is expected, a folder where
a file is expected, unwritable.  Each ends with one line on stderr, a non-zero exit, nothing
trained and nothing written."""

import json
import os

import pytest

from rbp.cli import main
from rbp.experiments.experiment import load
from rbp.experiments.store import Store


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("precious")
    return f


def _unwritable(tmp_path):
    """A folder this process cannot write into (as root, permission bits do not stop it: /sys)."""
    if os.geteuid() != 0:
        d = tmp_path / "locked"
        d.mkdir()
        d.chmod(0o500)
        return d / "out"
    probe = "/sys/rbp-probe"
    try:
        os.mkdir(probe)
    except OSError:
        return probe + "/out"
    os.rmdir(probe)
    pytest.skip("no unwritable folder on this machine")


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_train_out_is_an_existing_file(afile, capsys):
    rc = main(["train", "-d", "digits", "--epochs", "1", "--quiet", "--out", str(afile)])
    _one_line_error(capsys, rc, "--out", "is a file")
    assert afile.read_text() == "precious"


def test_train_data_dir_that_does_not_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RBP_DATA_DIR", str(tmp_path))      # must not be used instead of the named folder
    rc = main(["train", "-d", "mnist", "--data-dir", str(tmp_path / "nonexistent"), "--epochs", "1"])
    _one_line_error(capsys, rc, "--data-dir", "no such folder")


@pytest.mark.parametrize("command", [
    ["train", "-d", "digits", "--epochs", "1", "--quiet"],
    ["run", "fig1", "--epochs", "1", "--seeds", "1", "--quiet"],
])
def test_data_dir_siblings(command, afile, tmp_path, capsys):
    rc = main(command + ["--data-dir", str(afile), "--out", str(tmp_path / "o1")])
    _one_line_error(capsys, rc, "--data-dir", "is a file")
    rc = main(command + ["--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    _one_line_error(capsys, rc, "--data-dir", "no such folder")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("command", [
    ["train", "-d", "digits", "--epochs", "1", "--quiet"],
    ["run", "fig1", "--epochs", "1", "--seeds", "1", "--quiet"],
    ["theory", "figures"],
])
def test_out_siblings(command, afile, tmp_path, capsys):
    rc = main(command + ["--out", str(afile)])
    _one_line_error(capsys, rc, "--out", "is a file")
    rc = main(command + ["--out", str(afile / "below")])
    _one_line_error(capsys, rc, "--out", "is a file")
    rc = main(command + ["--out", str(_unwritable(tmp_path))])
    _one_line_error(capsys, rc, "--out")
    assert afile.read_text() == "precious"


def test_report_paths(afile, tmp_path, capsys):
    rc = main(["report", str(tmp_path / "missing")])
    _one_line_error(capsys, rc, "no such folder")
    rc = main(["report", str(afile)])
    _one_line_error(capsys, rc, "is a file")
    store = tmp_path / "store"
    assert main(["train", "-d", "digits", "--epochs", "1", "--quiet", "--out", str(store)]) == 0
    capsys.readouterr()
    rc = main(["report", str(store), "--out", str(afile)])
    _one_line_error(capsys, rc, "--out", "is a file")
    rc = main(["report", str(store), "--out", str(_unwritable(tmp_path))])
    _one_line_error(capsys, rc, "--out")
    assert afile.read_text() == "precious"


def test_run_experiment_path_siblings(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "missing.toml")])
    _one_line_error(capsys, rc, "not found")
    folder = tmp_path / "exp.toml"
    folder.mkdir()
    rc = main(["run", str(folder)])
    _one_line_error(capsys, rc, "is a folder")


def test_theory_paths(tmp_path, capsys):
    rc = main(["theory", "sweep", "--replot", "--out", str(tmp_path / "missing")])
    _one_line_error(capsys, rc, "--out", "no such folder")
    rc = main(["theory", "mnist", "--data-dir", str(tmp_path / "missing")])
    _one_line_error(capsys, rc, "--data-dir", "no such folder")


def test_report_reads_what_train_writes(tmp_path, capsys):
    """`rbp train --out` writes the store of `rbp run`, with its provenance; `rbp report` reads it."""
    out = tmp_path / "store"
    assert main(["train", "-d", "digits", "-a", "rbp", "--seeds", "2", "--epochs", "2", "--quiet",
                 "--json", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    docs, problems = Store(out).load()
    assert not problems and [d["seed"] for d in docs] == [0, 1]
    prov = docs[0]["provenance"]
    for key in ("rbp_version", "torch_version", "python", "machine", "host", "finished", "data_checksums"):
        assert key in prov
    assert docs[0]["ensemble"] == [0, 1]
    exp = load(str(out / "experiment.toml"))            # a valid experiment file
    assert exp.dataset == "digits" and len(exp.configs) == 1 and exp.protocol["epochs"] == 2
    assert docs[0]["key"] == json.loads(json.dumps(docs[0]["key"]))
    assert main(["report", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["runs"] == 2 and (out / "report.md").is_file()
    assert f"{100 * summary['test_accuracy']:.2f}" in (out / "report.md").read_text()
    # `rbp run` on the stored experiment finds every run done
    assert main(["run", str(out / "experiment.toml"), "--out", str(out), "--quiet", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ran["trained"] == 0 and ran["skipped"] == 2

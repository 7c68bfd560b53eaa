"""The command line: output contract and user errors (one line, exit status 2, nothing written)."""

import json
import subprocess
import sys

import pytest

from rbp.cli import main


def _run(*args):
    p = subprocess.run([sys.executable, "-m", "rbp.cli", *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_train_json_summary_on_digits(tmp_path):
    out = tmp_path / "run"
    rc, stdout, stderr = _run("train", "--dataset", "digits", "--algorithm", "srbp", "--epochs", "3",
                              "--seeds", "2", "--json", "--quiet", "--out", str(out))
    assert rc == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    for key in ("algorithm", "dataset", "epochs", "seeds", "test_accuracy", "test_accuracy_sd",
                "train_accuracy", "seconds"):
        assert key in summary
    assert summary["algorithm"] == "srbp" and summary["seeds"] == 2 and summary["epochs"] == 3
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and 0.0 <= summary["train_accuracy"] <= 1.0
    assert summary["test_accuracy"] > 0.3
    # a result store, the format of `rbp run`: one run file per seed
    assert sorted(p.name for p in out.iterdir()) == ["experiment.toml", "runs"]
    runs = sorted((out / "runs").iterdir())
    assert [p.name for p in runs] == ["srbp--seed0.json", "srbp--seed1.json"]
    docs = [json.loads(p.read_text()) for p in runs]
    assert [len(d["history"]) for d in docs] == [3, 3] and [d["seed"] for d in docs] == [0, 1]
    assert [d["history"][-1]["test_accuracy"] for d in docs] == [r["test_accuracy"] for r in summary["per_seed"]]


def test_same_command_same_numbers():
    args = ("train", "--epochs", "2", "--algorithm", "rbp", "--lc-dropout", "0.2", "--json", "--quiet")
    a, b = _run(*args), _run(*args)
    ja, jb = json.loads(a[1].splitlines()[-1]), json.loads(b[1].splitlines()[-1])
    assert ja["per_seed"] == jb["per_seed"]


@pytest.mark.parametrize("args,words", [
    (["train", "--algorithm", "foo"], "unknown algorithm"),
    (["train", "--algorithm", "rbp", "--feedback", "sparse-500"], "fan-out"),
    (["train", "--quantize-error", "0"], "1..16"),
    (["train", "--lc-dropout", "1"], "[0, 1)"),
    (["train", "--dataset", "imagenet"], "unknown dataset"),
    (["train", "--epochs", "0"], "epochs"),
    (["train", "--bogus"], "unrecognized"),
    (["train", "--algorithm", "bp", "--feedback", "ternary"], "random feedback"),
    (["train", "--device", "cuda:0"] if True else [], "cuda"),
])
def test_user_errors_are_one_line(args, words, tmp_path, capsys):
    out = tmp_path / "never"
    if args == ["train", "--device", "cuda:0"]:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    rc = main(args + ["--out", str(out)] if "--bogus" not in args else args)
    err = capsys.readouterr().err
    assert rc == 2
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_existing_output_directory_is_not_touched(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["train", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_algorithms_listing(capsys):
    assert main(["algorithms"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    import rbp
    assert [l.split()[0] for l in lines] == list(rbp.ALGORITHMS)
    assert [l.split()[0] for l in lines][:7] == ["bp", "sbp", "rbp", "srbp", "arbp", "asrbp", "top"]

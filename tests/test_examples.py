"""The scripts of examples/ run as a user runs them (RBP_EXAMPLE_QUICK=1: a few epochs) and print what they say."""

from pathlib import Path

import pytest
from helpers import run_example

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(name, tmp_path, *args):
    return run_example(name, tmp_path, *args)


def test_every_example_is_tested():
    # 06-08 need transformers or lightning: tests/test_examples_zoo.py runs them (marker `zoo`)
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(
        ["01_plain_pytorch_loop.py", "02_convert_a_cnn.py", "03_alignment.py", "04_dask_sweep.py",
         "05_custom_logger.py", "06_hf_trainer.py", "07_lightning.py", "08_gpt2_toy_lm.py"])


def test_plain_pytorch_loop(tmp_path):
    out = _run("01_plain_pytorch_loop.py", tmp_path)
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 3
    assert float(lines[-1].split()[-1]) > 0.5              # RBP learns: chance is 0.1
    assert "feedback buffers: ['2.feedback', '4.feedback']" in out


def test_convert_a_cnn(tmp_path):
    out = _run("02_convert_a_cnn.py", tmp_path)
    rows = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
            if line.split() and line.split()[0] in ("bp", "rbp", "srbp")}
    assert sorted(rows) == ["bp", "rbp", "srbp"] and all(0 <= a <= 1 for a in rows.values())
    assert rows["bp"] > 0.3


def test_alignment(tmp_path):
    out = _run("03_alignment.py", tmp_path, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 10_000
    for alg in ("rbp", "srbp"):
        line = next(line for line in out.splitlines() if line.startswith(alg + ":"))
        angles = [float(t.strip(",")) for t in line.split("layer ")[1].split()[:3]]
        assert all(0 < a < 90 for a in angles)          # aligned better than chance after training


def test_dask_sweep(tmp_path):
    pytest.importorskip("dask.distributed")
    out = _run("04_dask_sweep.py", tmp_path, tmp_path / "sweep")
    assert "8 networks trained, 0 already stored, 0 failed" in out
    assert len(list((tmp_path / "sweep" / "runs").glob("*.json"))) == 8
    assert (tmp_path / "sweep" / "report.md").exists()


def test_custom_logger(tmp_path):
    out = _run("05_custom_logger.py", tmp_path, tmp_path / "log")
    lines = (tmp_path / "log" / "epochs.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2 + 2 * 2 * 2                 # 3 networks + 2 configs x 2 seeds, 2 epochs each
    assert "best test accuracy per network: {'bp/seed0'" in out

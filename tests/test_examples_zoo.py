"""The examples that need other libraries (transformers, lightning) run as a user runs them
(RBP_EXAMPLE_QUICK=1: a few steps) and print what they say.  Marked `zoo`: CI runs them in the zoo's
venv (`python -m pytest -m zoo`); without the libraries they skip.  tests/test_examples.py runs the rest."""

import json
import math

import pytest
from helpers import run_example

pytestmark = pytest.mark.zoo


def _run(name, tmp_path, *args):
    return run_example(name, tmp_path, *args, timeout=600)


def _numbers(out, prefix, field):
    """The float after ``field`` on every line of ``out`` that starts with ``prefix``."""
    return [float(line.split(field)[1].split()[0]) for line in out.splitlines() if line.startswith(prefix)]


def test_hf_trainer(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    out = _run("06_hf_trainer.py", tmp_path, tmp_path / "trainer")
    assert out.startswith("rbp.convert with wm:")                   # the report
    losses = _numbers(out, "step", "training loss")
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert _numbers(out, "held-out", "accuracy")[0] > 0.8          # chance: 0.5


def test_lightning(tmp_path):
    pytest.importorskip("lightning")
    out = _run("07_lightning.py", tmp_path)
    assert out.startswith("rbp.convert with wm:")
    losses = _numbers(out, "epoch", "training loss")
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert _numbers(out, "epoch", "test accuracy")[-1] > 0.8       # chance: 0.1
    line = next(line for line in out.splitlines() if line.startswith("angle between feedback"))
    before, after = (json.loads(part.strip()) for part in line.split("before")[1].split("after"))
    assert all(a > 60 for a in before) and all(a < 45 for a in after)   # the mirrors taught the feedback


def test_gpt2_toy_lm(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    out = _run("08_gpt2_toy_lm.py", tmp_path, tmp_path / "lm.png")
    assert (tmp_path / "lm.png").stat().st_size > 10_000
    final = json.loads((tmp_path / "lm.json").read_text())["final"]
    assert sorted(final) == ["bp", "rbp", "srbp"]
    assert all(math.isfinite(f["held_out_loss"]) for f in final.values())
    assert final["bp"]["held_out_loss"] < math.log(8)              # BP learns something in 30 steps
    assert "tied: transformer.wte.weight = lm_head.weight" in out

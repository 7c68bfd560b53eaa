"""Lean install: training needs torch and numpy only; each extra's absence is one clear line."""

import sys

import pytest

from rbp import data
from rbp.cli import main


def _without(monkeypatch, *modules):
    for m in modules:
        for name in [k for k in sys.modules if k == m or k.startswith(m + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, m, None)          # import now fails as if not installed


def test_training_needs_no_extra(monkeypatch, tmp_path, capsys):
    _without(monkeypatch, "sklearn", "tqdm", "matplotlib", "scipy")
    data._digits_arrays.cache_clear()
    try:
        assert main(["train", "-d", "digits", "-a", "rbp", "--epochs", "1", "--seeds", "2",
                     "--out", str(tmp_path / "o")]) == 0
    finally:
        data._digits_arrays.cache_clear()
    captured = capsys.readouterr()
    assert "epoch   1/1" in captured.err and "test accuracy" in captured.out   # per-epoch lines without tqdm


def test_missing_extras_name_themselves(monkeypatch, tmp_path, capsys):
    store = tmp_path / "o"
    assert main(["train", "-d", "digits", "--epochs", "1", "--quiet", "--out", str(store)]) == 0
    capsys.readouterr()
    _without(monkeypatch, "matplotlib", "scipy")
    import rbp.theory
    monkeypatch.delitem(sys.modules, "rbp.theory.figures", raising=False)   # imported afresh, as in a new process
    monkeypatch.delattr(rbp.theory, "figures", raising=False)
    for argv, extra in ((["report", str(store)], "rbp[report]"),
                        (["theory", "chain", "--depth", "2"], "rbp[theory]"),
                        (["theory", "figures", "--out", str(tmp_path / "f")], "rbp[theory]")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"pip install '{extra}'" in err, err
    assert not (store / "report.md").exists()


def test_bundled_digits_are_scikit_learns():
    sk = pytest.importorskip("sklearn.datasets")
    import numpy as np
    pixels, labels, _ = data._digits_arrays()
    ref = sk.load_digits()
    assert np.array_equal(pixels, ref.images.astype(np.uint8)) and np.array_equal(labels, ref.target)

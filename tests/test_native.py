"""The compiled kernels are safe to install and run anywhere (rbp/nn/_native.py).

A simulated Windows (no ``os.uname``) and a machine without a C compiler train every algorithm;
the kernel cache keys libraries by the CPU's instruction set, so it cannot serve code built for
another CPU; the kernels use torch's own OpenMP runtime; a missing fast path gives one warning
that names the reason; ``RBP_NO_KERNEL=1`` forces the PyTorch code without a warning.
"""

import importlib
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import rbp
from rbp.nn import _native
from rbp.train import TrainSpec, Trainer


def _kernel_modules():
    return [importlib.import_module(f"rbp.nn.{m}") for m in _native.MODULES]


@pytest.fixture
def fresh(monkeypatch):
    """Every kernel loaded anew in this test (and the process's state restored after it); these tests
    are about building the kernels, so they run with them enabled even in CI's RBP_NO_KERNEL=1 pass."""
    monkeypatch.delenv("RBP_NO_KERNEL", raising=False)
    monkeypatch.setattr(_native, "_libraries", {})
    monkeypatch.setattr(_native, "_warned", [])
    for m in _kernel_modules():
        monkeypatch.setattr(m, "_state", {})
    return monkeypatch


def _train_every_algorithm():
    """Two steps of every algorithm (and the quantized update) on digits; returns the losses."""
    losses = []
    cases = [rbp.algorithm(a) for a in rbp.ALGORITHMS] + [rbp.algorithm("rbp", quantize_update=3)]
    for alg in cases:
        tr = Trainer(TrainSpec(dataset="digits", algorithm=alg, hidden=(16, 16), epochs=1), [0, 1], probe_size=0)
        loss, _ = tr.train_epoch(max_steps=2)
        losses += loss
    assert all(math.isfinite(v) for v in losses)
    return losses


def _load_all():
    return [m.load() for m in _kernel_modules()]


def test_windows_without_os_uname_trains_every_algorithm(fresh):
    fresh.delattr(os, "uname")
    import platform
    fresh.setattr(platform, "_uname_cache", None, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", _native.KernelWarning)   # with a compiler: no warning either
        loaded = _load_all()
        _train_every_algorithm()
    if _native.compiler() is not None:
        assert all(f is not None for f in loaded)


@pytest.mark.parametrize("how", ["CC names a missing compiler", "no compiler on PATH"])
def test_no_compiler_trains_every_algorithm_with_one_warning(fresh, tmp_path, how):
    fresh.setenv("RBP_CACHE_DIR", str(tmp_path / "cache"))          # nothing built yet
    if how.startswith("CC"):
        fresh.setenv("CC", str(tmp_path / "no-such-cc"))
    else:
        fresh.delenv("CC", raising=False)
        fresh.setenv("PATH", str(tmp_path))
        import sysconfig
        fresh.setattr(sysconfig, "get_config_var", lambda name: None if name == "CC" else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _load_all() == [None] * len(_native.MODULES)
        _train_every_algorithm()
    ours = [w for w in caught if issubclass(w.category, _native.KernelWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "compiler" in str(ours[0].message) and "RBP_NO_KERNEL" in str(ours[0].message)


def test_unwritable_cache_warns_and_trains(fresh, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    fresh.setenv("RBP_CACHE_DIR", str(blocker / "cache"))            # under a file: cannot be created
    with pytest.warns(_native.KernelWarning, match="Error"):
        assert _load_all()[0] is None
    tr = Trainer(TrainSpec(dataset="digits", algorithm=rbp.algorithm("rbp", quantize_update=3), hidden=(8,)),
                 [0], probe_size=0)
    assert math.isfinite(tr.train_epoch(max_steps=1)[0][0])


def test_no_kernel_env_forces_the_fallback_silently(fresh):
    fresh.setenv("RBP_NO_KERNEL", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load_all() == [None] * len(_native.MODULES)


@pytest.mark.skipif(_native.machine() not in ("x86_64", "amd64"), reason="x86-64 instruction-set levels")
def test_cache_key_holds_the_cpus_instruction_set(fresh, tmp_path):
    """A node whose CPU lacks AVX2 gets its own library; it never loads one built with AVX2."""
    fresh.setenv("RBP_CACHE_DIR", str(tmp_path))
    source = "int rbp_probe(void) { return 7; }\n"
    fresh.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    wide = _native.build_plan("probe", source)
    fresh.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    narrow = _native.build_plan("probe", source)
    if wide is None:
        pytest.skip("no C compiler")
    assert wide["flags"] == ["-mavx2", "-mfma"] and narrow["flags"] == []
    assert wide["target"] != narrow["target"] and "-avx2-" in wide["target"].name
    assert "-base-" in narrow["target"].name
    assert "-march=native" not in " ".join(_native.BASE_FLAGS)
    lib = _native.library("probe", source)                  # built for the "DEFAULT" CPU
    assert lib.rbp_probe() == 7 and narrow["target"].exists() and not wide["target"].exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process(tmp_path):
    """The kernels link the OpenMP runtime torch loaded, not the compiler's (checked in a clean process)."""
    code = (
        "import os, re, torch\n"
        "from rbp.nn import _native\n"
        "import importlib\n"
        "libs = [importlib.import_module('rbp.nn.' + m).load() for m in _native.MODULES]\n"
        "pat = re.compile(r'^lib(gomp|iomp5|omp)(-[0-9a-f]+)?\\.(so(\\.[0-9]+)*|dylib)$')\n"
        "maps = [l.split()[-1] for l in open('/proc/self/maps') if len(l.split()) == 6]\n"
        "omp = sorted({p for p in maps if pat.match(os.path.basename(p))})\n"
        "print(all(l is not None for l in libs), _native.openmp_runtime(), omp)\n")
    env = dict(os.environ, RBP_CACHE_DIR=str(tmp_path))
    env.pop("RBP_NO_KERNEL", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    built, runtime, loaded = out.stdout.strip().split(" ", 2)
    if built != "True":
        pytest.skip("no C compiler")
    assert len(eval(loaded)) <= 1, loaded

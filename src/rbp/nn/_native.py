"""Building and loading the library's small C kernels.

A kernel's C source is compiled on first use with the system's C compiler into
a per-user cache (``$RBP_CACHE_DIR`` or ``~/.cache/rbp``), named by a hash of
the source and the machine, by writing to a temporary file and renaming it, so
concurrent processes never load a half-written library.  Native vector
instructions and OpenMP are used where the compiler offers them.

Where no compiler is available, or ``RBP_NO_KERNEL=1`` is set,
:func:`library` returns ``None`` and every caller falls back to PyTorch (a
kernel that cannot be built is an optimisation lost, not an error).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

_lock = threading.Lock()
_libraries: dict = {}


def disabled() -> bool:
    return os.environ.get("RBP_NO_KERNEL", "") in ("1", "true", "yes")


def cache_dir() -> Path:
    root = os.environ.get("RBP_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "rbp"


def _compile(source: str, target: Path) -> bool:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    if shutil.which(cc) is None:
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(source)
        out = Path(tmp) / target.name
        base = [cc, "-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", str(src), "-o", str(out)]
        # Prefer native vector instructions and OpenMP; fall back step by step.
        for extra in (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []):
            try:
                done = subprocess.run(base[:1] + extra + base[1:], capture_output=True, timeout=120)
            except (OSError, subprocess.SubprocessError):
                return False
            if done.returncode == 0 and out.exists():
                os.replace(out, target)
                return True
    return False


def library(name: str, source: str):
    """The compiled ``source`` as a ctypes library, or ``None`` (no compiler, or kernels disabled)."""
    with _lock:
        if name in _libraries:
            return _libraries[name]
        lib = None
        if not disabled():
            tag = hashlib.sha256((source + sys.platform + os.uname().machine).encode()).hexdigest()[:16]
            target = cache_dir() / f"{name}-{tag}.so"
            try:
                if target.exists() or _compile(source, target):
                    lib = ctypes.CDLL(str(target))
            except Exception:
                lib = None
        _libraries[name] = lib
        return lib


def functions(name: str, source: str, signatures: dict):
    """The compiled ``source``'s functions ``{symbol: (argtypes, restype)}`` with their ctypes
    signatures set, as a dict, or ``None`` where the library cannot be had."""
    lib = library(name, source)
    if lib is None:
        return None
    out = {}
    for symbol, (argtypes, restype) in signatures.items():
        fn = getattr(lib, symbol)
        fn.argtypes, fn.restype = list(argtypes), restype
        out[symbol] = fn
    return out


def applicable(*tensors) -> bool:
    """The kernels serve float32 CPU tensors outside autograd (``None`` entries are ignored)."""
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad)
               for t in tensors)

"""Building and loading the library's small C kernels (ctypes), safely on any machine.

A kernel's C source is compiled on first use with the system's C compiler into
a per-user cache (``$RBP_CACHE_DIR`` or ``~/.cache/rbp``).  What can go wrong on
a user's machine, and what this module does about it:

* **Another CPU.**  No ``-march=native``: the instruction set is chosen from
  the CPU this process runs on, as PyTorch detects it
  (``torch.backends.cpu.get_cpu_capability()``, which reads CPUID):
  ``-mavx2 -mfma`` on x86-64 CPUs with AVX2 and FMA, the compiler's baseline
  elsewhere.  That level is part of the library's file name and of the hash
  beside it (with the source, the compiler, its flags and the platform), so a
  cache shared by the nodes of a cluster holds one library per level, and a
  node only ever loads a library built for instructions its own CPU has.
* **Two OpenMP runtimes.**  The kernels are compiled with ``-fopenmp`` but
  linked against the OpenMP runtime that PyTorch itself loaded (found in the
  process's memory map, with an rpath to its folder), never the compiler's
  own ``libgomp``; so the kernels' threads and torch's come from one pool.
  Where torch does not use OpenMP, or linking against its runtime fails, the
  kernels are built without OpenMP and run on one thread (same numbers).
* **No compiler, no** ``os.uname`` **(Windows), an unwritable cache, a build or
  load that fails.**  :func:`library` returns ``None`` and every caller uses
  its PyTorch fallback; the first such failure in a process emits one
  :class:`KernelWarning` naming the reason.  Nothing is raised.
* ``RBP_NO_KERNEL=1`` forces the PyTorch fallbacks (no warning).  ``CC``
  chooses the compiler (and only that one is tried when it is set).

Libraries are written to a temporary file and renamed into place, so
concurrent processes never load a half-written one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_lock = threading.Lock()
_libraries: dict = {}
_warned: list = []          # the reason of the warning already given in this process (at most one)

BASE_FLAGS = ["-O3", "-fPIC", "-fno-math-errno", "-fno-trapping-math"]

#: the kernel modules of rbp.nn built by this module (each keeps its handles in ``_state``)
MODULES = ("_qkernel",)


class KernelWarning(RuntimeWarning):
    """The compiled kernels are unavailable: training uses the (slower) PyTorch code."""


def disabled() -> bool:
    return os.environ.get("RBP_NO_KERNEL", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    root = os.environ.get("RBP_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "rbp"


def machine() -> str:
    """The machine architecture, without ``os.uname`` (absent on Windows)."""
    try:
        return platform.machine().lower() or "unknown"
    except Exception:       # pragma: no cover - platform always answers, but never let it stop training
        return "unknown"


def isa() -> tuple[str, list[str]]:
    """(level, compiler flags) for the instruction set of the CPU running this process."""
    arch = machine()
    if arch not in ("x86_64", "amd64", "x64"):
        return "base", []
    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:
        cap = "DEFAULT"
    # torch reports AVX2 (or AVX512) only where the CPU has both AVX2 and FMA
    if cap.startswith("AVX2") or cap.startswith("AVX512"):
        return "avx2", ["-mavx2", "-mfma"]
    return "base", []


def compiler() -> list[str] | None:
    """The C compiler command, or ``None``: ``$CC`` when set (only that), else Python's, cc, gcc, clang."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        cmd = shlex.split(cc)
        return cmd if shutil.which(cmd[0]) else None
    candidates = []
    conf = sysconfig.get_config_var("CC")
    if conf:
        candidates.append(shlex.split(conf)[0])
    candidates += ["cc", "gcc", "clang"]
    for c in candidates:
        path = shutil.which(c)
        if path:
            return [path]
    return None


def openmp_runtime() -> str | None:
    """The file of the OpenMP runtime torch has loaded into this process, or ``None``."""
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
    except Exception:
        return None
    pattern = re.compile(r"^lib(gomp|iomp5|omp)(-[0-9a-f]+)?\.(so(\.[0-9]+)*|dylib)$")
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) == 6 else ""
                if path.startswith("/") and pattern.match(os.path.basename(path)):
                    return path
    except OSError:
        pass
    libdir = Path(torch.__file__).parent / "lib"    # not Linux: torch ships its runtime beside itself
    for name in sorted(os.listdir(libdir)) if libdir.is_dir() else ():
        if pattern.match(name):
            return str(libdir / name)
    return None


def _suffix() -> str:
    return ".dll" if sys.platform.startswith(("win", "cygwin")) else ".so"


def build_plan(name: str, source: str) -> dict | None:
    """Where ``source``'s library lives in the cache and how it is built; ``None`` without a compiler."""
    cc = compiler()
    if cc is None:
        return None
    level, flags = isa()
    omp = openmp_runtime()
    key = "\0".join([source, " ".join(cc), " ".join(BASE_FLAGS + flags), sys.platform, machine(), level,
                     omp or "no-openmp", torch.__version__])
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    return {"cc": cc, "flags": flags, "level": level, "openmp": omp,
            "target": cache_dir() / f"{name}-{level}-{tag}{_suffix()}"}


def _run(cmd) -> tuple[bool, str]:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=300, text=True)
    except (OSError, subprocess.SubprocessError) as e:
        return False, str(e)
    return done.returncode == 0, (done.stderr or done.stdout or "").strip()


def _compile(source: str, plan: dict) -> str | None:
    """Build the library at ``plan["target"]``; ``None`` on success, else why it failed."""
    target, cc = plan["target"], plan["cc"]
    target.parent.mkdir(parents=True, exist_ok=True)
    linux = sys.platform.startswith("linux")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, obj, out = Path(tmp) / "kernel.c", Path(tmp) / "kernel.o", Path(tmp) / target.name
        src.write_text(source)
        attempts = []
        omp = plan["openmp"]
        if omp:     # OpenMP pragmas, linked against torch's own runtime (one runtime in the process)
            attempts.append((["-fopenmp"], [omp, f"-Wl,-rpath,{os.path.dirname(omp)}"]
                             + (["-Wl,-z,defs"] if linux else [])))
        attempts.append((["-Wno-unknown-pragmas"], []))   # one thread, same numbers
        why = ""
        for cflags, lflags in attempts:
            ok, why = _run(cc + BASE_FLAGS + plan["flags"] + cflags + ["-c", str(src), "-o", str(obj)])
            if ok:
                ok, why = _run(cc + ["-shared", str(obj), "-o", str(out)] + lflags
                               + (["-lm"] if linux else []))
            if ok and out.exists():
                os.replace(out, target)
                return None
        return f"the C compiler {cc[0]} failed: {why.splitlines()[-1] if why else 'no output'}"


def _warn(reason: str):
    if not _warned:
        _warned.append(reason)
        warnings.warn(f"rbp: compiled CPU kernels unavailable ({reason}); using the slower PyTorch code "
                      "(RBP_NO_KERNEL=1 silences this)", KernelWarning, stacklevel=4)


def why_unavailable() -> str | None:
    """The reason given in this process's warning, if the kernels turned out unavailable."""
    return _warned[0] if _warned else None


def library(name: str, source: str):
    """The compiled ``source`` as a ctypes library, or ``None`` (kernels disabled or unavailable)."""
    with _lock:
        if name in _libraries:
            return _libraries[name]
        lib, reason = None, None
        if not disabled():
            try:
                plan = build_plan(name, source)
                if plan is None:
                    reason = ("no C compiler found: install gcc or clang, or set CC"
                              if not os.environ.get("CC", "").strip()
                              else f"the C compiler CC={os.environ['CC']!r} was not found")
                else:
                    target = plan["target"]
                    if not target.exists():
                        reason = _compile(source, plan)
                    if reason is None:
                        lib = ctypes.CDLL(str(target))
            except Exception as e:      # a cache we cannot write, a library we cannot load, ...
                lib, reason = None, f"{type(e).__name__}: {e}"
            if lib is None and reason:
                _warn(reason)
        _libraries[name] = lib
        return lib


def functions(name: str, source: str, signatures: dict):
    """The compiled ``source``'s functions ``{symbol: (argtypes, restype)}`` with their ctypes
    signatures set, as a dict, or ``None`` where the library cannot be had."""
    lib = library(name, source)
    if lib is None:
        return None
    out = {}
    try:
        for symbol, (argtypes, restype) in signatures.items():
            fn = getattr(lib, symbol)
            fn.argtypes, fn.restype = list(argtypes), restype
            out[symbol] = fn
    except AttributeError as e:
        _warn(f"{name}: {e}")
        return None
    return out


def applicable(*tensors) -> bool:
    """The kernels serve float32 CPU tensors outside autograd (``None`` entries are ignored)."""
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad)
               for t in tensors)


def reset():
    """Forget loaded libraries and the warning (tests; the kernel modules keep their own handles)."""
    with _lock:
        _libraries.clear()
        _warned.clear()

"""Build time of the quantized-update kernel (ctypes C, rbp.nn._native) against a one-line torch C++ operator.

    python scripts/kernel_build_time.py

The measurement behind the choice of mechanism in docs/architecture.md ("Compiled kernels").
Both are built from nothing into temporary folders."""
import os, sys, tempfile, time, importlib
os.environ["RBP_CACHE_DIR"] = tempfile.mkdtemp()
import torch
from rbp.nn import _native, _qkernel
t = time.perf_counter(); plan = _native.build_plan("qkernel", _qkernel._SOURCE); r = _native._compile(_qkernel._SOURCE, plan)
print("ctypes C build of _qkernel:", round(time.perf_counter() - t, 2), "s", r, plan["flags"], plan["openmp"], flush=True)
try:
    from torch.utils import cpp_extension
    t = time.perf_counter()
    m = cpp_extension.load_inline("rbp_probe_ext", cpp_sources="torch::Tensor twice(torch::Tensor x) { return x * 2; }",
                                  functions=["twice"], build_directory=tempfile.mkdtemp(), verbose=False)
    print("torch cpp_extension build of a one-line operator:", round(time.perf_counter() - t, 2), "s", flush=True)
except Exception as e:
    print("cpp_extension failed:", type(e).__name__, str(e)[:300])

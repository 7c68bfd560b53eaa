"""Hand computations of the learning channel used by the tests (float64)."""

import torch
import torch.nn.functional as F

import rbp
from rbp.nn import FeedbackLinear


def sites(model):
    return [m for m in model.modules() if isinstance(m, FeedbackLinear)]


def batch(n_in=7, n_out=3, rows=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_out, (rows,), generator=g)
    return x, y


def net(sizes, alg, activation="tanh", seed=0, **opts):
    base = rbp.mlp(sizes, activation, seed=seed).double()
    return rbp.convert(base, alg, seed=seed + 100, **opts)


def grads(model, x, y):
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def forward(model, x, f=torch.tanh):
    """Pre-activations S^h and outputs O^h (O^0 = x) of a converted mlp."""
    S, O = [], [x]
    ss = sites(model)
    for i, s in enumerate(ss):
        z = O[-1] @ s.weight.detach().T + s.bias.detach()
        S.append(z)
        O.append(f(z) if i < len(ss) - 1 else z)
    return S, O


def output_error(logits, y):
    """E^L = T - O^L for softmax outputs."""
    return F.one_hot(y, logits.shape[-1]).double() - torch.softmax(logits, -1)


def dtanh(s):
    return 1 - torch.tanh(s) ** 2


def weight_grads(I, O):
    """The autograd-scale gradient of the local rule dW = I O^T for a batch-mean loss."""
    B = O[0].shape[0]
    return [-(I[h].T @ O[h]) / B for h in range(len(I))]


def assert_grads_equal(a, b, tol=1e-12):
    """Two gradient dicts (name -> tensor or None) agree entry by entry."""
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        else:
            torch.testing.assert_close(a[k], b[k], atol=tol, rtol=0, msg=k)


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def tiny_experiment(*configs, name="tiny", description="a tiny experiment for the tests", dataset="digits",
                    **protocol) -> str:
    """The TOML text of a small experiment: ``configs`` are dicts of config keys (``id`` defaults to
    c0, c1, ...; ``algorithm`` to bp), ``protocol`` the [protocol] keys (e.g. ``epochs=1, hidden=[8]``).

    >>> tiny_experiment({"algorithm": "srbp", "dropout": 0.1}, epochs=2)   # doctest: +SKIP
    """
    lines = [f"name = {_toml(name)}", f"description = {_toml(description)}", f"dataset = {_toml(dataset)}"]
    if protocol:
        lines += ["", "[protocol]"] + [f"{k} = {_toml(v)}" for k, v in protocol.items()]
    for i, config in enumerate(configs or ({},)):
        config = {"id": f"c{i}", "algorithm": "bp", **config}
        lines += ["", "[[config]]"] + [f"{k} = {_toml(v)}" for k, v in config.items()]
    return "\n".join(lines) + "\n"


def run_example(name, tmp_path, *args, timeout=300):
    """Run examples/<name> as a user runs it (RBP_EXAMPLE_QUICK=1: a few steps); its standard output."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, RBP_EXAMPLE_QUICK="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(root / "examples" / name), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

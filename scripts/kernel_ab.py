"""A/B of each compiled kernel against its PyTorch fallback, in one process, on training steps.

    RBP_DATA_DIR=... python scripts/kernel_ab.py [--threads 1] [--steps 30] [--repeats 5] [--clock cpu]

For every configuration below it builds the trainer once, then times ``--steps`` training steps
with every kernel on ("all"), with each kernel switched off alone, and with all off ("none", what
RBP_NO_KERNEL=1 gives), interleaved over ``--repeats`` rounds so that the machine's drifts hit all
variants alike.  Prints, for each variant, the median and the minimum step time over the rounds
with their ratios to "all", and the median of the per-round ratios to "all" ("paired": the
figure least moved by other processes on a busy machine).  Times are the process's CPU time by
default (``--clock cpu``): with one thread that is the step's cost, whatever else runs on the
machine; ``--clock wall`` times elapsed seconds.
A kernel earns its place when switching it off alone makes a step of a configuration users run at
least 10 % slower.
"""

import argparse
import statistics
import time

import torch

from rbp import data as datasets
from rbp.channel.algorithm import algorithm
from rbp.nn import _native
from rbp.train import TrainSpec, Trainer




def _modules():
    import importlib
    out = {}
    for name in _native.MODULES:
        try:
            out[name] = importlib.import_module(f"rbp.nn.{name}")
        except ImportError:
            pass
    return out


def configurations():
    mnist = datasets.load("mnist")
    digits = datasets.load("digits")
    rbp = algorithm("rbp")
    return [
        ("digits, rbp, 1 network (Quickstart)", TrainSpec(dataset="digits", algorithm=rbp), [0], digits),
        ("mnist, rbp, 1 network (rbp train -d mnist)", TrainSpec(dataset="mnist", algorithm=rbp), [0], mnist),
        ("mnist, rbp, 5 networks (a table1-mnist group)", TrainSpec(dataset="mnist", algorithm=rbp),
         list(range(5)), mnist),
        ("mnist, rbp, 64 networks (rbp bench K=64)", TrainSpec(dataset="mnist", algorithm=rbp),
         list(range(64)), mnist),
        ("mnist, rbp quantize-update 3, 5 networks (table1-mnist)",
         TrainSpec(dataset="mnist", algorithm=algorithm("rbp", quantize_update=3)), list(range(5)), mnist),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="substring of the configurations to run")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: the process's CPU time (default; with --threads 1 it is what the step costs, "
                         "unmoved by other processes sharing the cores); wall: elapsed time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mods = _modules()
    for m in mods.values():
        m.load()
    saved = {name: dict(m._state) for name, m in mods.items()}
    if any(all(v is None for k, v in s.items() if k != "path") for s in saved.values()) or not saved:
        raise SystemExit("a kernel is not built (RBP_NO_KERNEL set, or no compiler): nothing to compare")

    def switch(off):
        for name, m in mods.items():
            m._state.clear()
            m._state.update(saved[name])
            for n, k in off:
                if n == name:
                    m._state[k] = None

    # one variant per kernel switched off alone (each function handle a module keeps in _state)
    parts = [(n, k) for n, m in mods.items() for k in saved[n] if k != "path"]
    variants = [("all", ())] + [(f"no {n}.{k}", ((n, k),)) for n, k in parts] + [("none", tuple(parts))]
    for title, spec, seeds, ds in configurations():
        if args.only and not any(o and o in title for o in args.only.split(",")):
            continue
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        switch(())
        tr = Trainer(spec, seeds, dataset=ds, probe_size=0)   # decides the sparse first layer once
        times = {v: [] for v, _ in variants}
        for _ in range(args.repeats):
            for v, off in variants:
                switch(off)
                tr.train_epoch(max_steps=2)
                t = clock()
                tr.train_epoch(max_steps=args.steps)
                times[v].append((clock() - t) / args.steps)
        switch(())
        base, fast = statistics.median(times["all"]), min(times["all"])
        print(f"{title}: median and minimum over rounds, median of the per-round ratios")
        for v, _ in variants:
            med, low = statistics.median(times[v]), min(times[v])
            paired = statistics.median(a / b for a, b in zip(times[v], times["all"]))
            print(f"    {v:20s} {med * 1e3:8.2f} ms/step  {med / base:5.2f} x   min {low * 1e3:8.2f} ms/step  "
                  f"{low / fast:5.2f} x   paired {paired:5.2f} x", flush=True)


if __name__ == "__main__":
    main()

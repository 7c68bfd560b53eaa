"""Predict what an experiment's full protocol costs, from a few timed steps of each ensemble.

    RBP_DATA_DIR=... python scripts/experiment_cost.py table1-mnist [--threads 1] [--steps 40]

For every group of configurations that `rbp run` trains together (mixed ensembles included), it
builds the group's ensemble, times ``--steps`` training steps, one evaluation of the test set and
one alignment probe, and scales them to the protocol's epochs.  Prints one line per group and the
total in core-hours (one process, this machine, now).  Training steps only: data loading and
process start-up are not counted.
"""

import argparse
import tempfile
import time

import torch

from rbp import data as datasets
from rbp.experiments.experiment import load
from rbp.experiments.runner import mixed_groups, plan
from rbp.experiments.store import Store
from rbp.train import Trainer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exp = load(args.experiment)
    todo, _ = plan(exp, Store(tempfile.mkdtemp()))
    ds = datasets.load(exp.dataset)
    total = 0.0
    for group in mixed_groups(todo):
        members = [(spec, seed) for _, spec, missing in group for seed in missing]
        specs, seeds = [m[0] for m in members], [m[1] for m in members]
        tr = Trainer(specs[0], seeds, dataset=ds, member_specs=specs if len(specs) > 1 else None)
        tr.train_epoch(max_steps=3)
        t = time.perf_counter()
        tr.train_epoch(max_steps=args.steps)
        step = (time.perf_counter() - t) / args.steps
        t = time.perf_counter()
        tr.evaluate()
        ev = time.perf_counter() - t
        t = time.perf_counter()
        tr.alignment()
        al = time.perf_counter() - t
        epoch = step * tr.steps_per_epoch + ev + al
        total += epoch * specs[0].epochs
        names = "+".join(c.id for c, _, _ in group)
        print(f"{names:60s} K={len(seeds):3d}  step {step * 1e3:7.1f} ms  eval {ev:5.2f} s  "
              f"probe {al:5.2f} s  epoch {epoch:6.1f} s", flush=True)
    print(f"total: {total / 3600:.2f} core-hours for {args.experiment} at its protocol's epochs")


if __name__ == "__main__":
    main()

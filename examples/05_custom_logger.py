"""Plug your own logger into rbp's training loop and experiment runner.

A callback has up to three methods, called for every network trained:
on_train_begin(run, info), on_epoch_end(run, record) and
on_train_end(run, history). `run` names the network (``seed0`` ... for
rbp.train, ``CONFIG/seed0`` ... for an experiment); `record` is an
rbp.train.EpochRecord, and ``record.metrics()`` is every number of the epoch
as one dict. This one writes JSON lines; a Weights & Biases or MLflow logger
has the same shape (see the docs). Callbacks do not change the results.
TensorBoard is built in: rbp.callbacks.TensorBoardLogger(DIR), or
``--tensorboard DIR`` on the command line.

    python examples/05_custom_logger.py [OUT_DIR]            # 20 epochs
    RBP_EXAMPLE_QUICK=1 python examples/05_custom_logger.py [OUT_DIR]
"""

import json
import os
import sys
from pathlib import Path

import rbp
from rbp.callbacks import Callback
from rbp.experiments import parse, run
from rbp.train import TrainSpec, train

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
EPOCHS = 2 if QUICK else 20
out = Path(sys.argv[1] if len(sys.argv) > 1 else "logger-example")
out.mkdir(parents=True, exist_ok=True)


class JsonLinesLogger(Callback):
    """One line per network and epoch in a .jsonl file."""

    def __init__(self, path):
        self.file = open(path, "w")

    def on_train_begin(self, run, info):
        print(f"start {run}: {info['label']} on {info['spec']['dataset']}")

    def on_epoch_end(self, run, record):
        row = {"run": run, "epoch": record.epoch, **record.metrics()}
        self.file.write(json.dumps(row) + "\n")

    def on_train_end(self, run, history):
        print(f"end {run}: test accuracy {history[-1].test_accuracy:.3f}")
        self.file.flush()


logger = JsonLinesLogger(out / "epochs.jsonl")

# 1. The library's training loop: 3 seeds of SRBP as one batched ensemble.
spec = TrainSpec(dataset="digits", algorithm=rbp.algorithm("srbp"),
                 hidden=(100, 100), epochs=EPOCHS)
train(spec, seeds=[0, 1, 2], callbacks=[logger])

# 2. An experiment (the file format of `rbp run`), with a plain function
#    as a second callback.
experiment = parse(f"""
name = "logger-demo"
description = "BP against RBP on digits"
dataset = "digits"
[protocol]
epochs = {EPOCHS}
seeds = 2
hidden = [100, 100]
[[config]]
id = "bp"
algorithm = "bp"
[[config]]
id = "rbp"
algorithm = "rbp"
""")
best = {}


def keep_best(run, record):
    best[run] = max(best.get(run, 0.0), record.test_accuracy)


run(experiment, out / "store", progress=False, callbacks=[logger, keep_best])
print("best test accuracy per network:",
      {k: round(v, 3) for k, v in sorted(best.items())})
logger.file.close()
lines = (out / "epochs.jsonl").read_text().count("\n")
print(f"wrote {out / 'epochs.jsonl'} ({lines} lines)")

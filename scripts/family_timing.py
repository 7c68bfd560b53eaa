"""CPU time per training step of BioTorch's benchmark networks under rbp (docs/family.md).

    PYTHONPATH=src RBP_DATA_DIR=... python scripts/family_timing.py

One thread; CPU seconds (time.process_time), so other processes on a busy machine do not inflate
the figures; LeNet: 30 steps, ResNet-20: 3 steps (with augmentation) after one warm-up step, and one
evaluation of the test set.
"""
import time, torch
torch.set_num_threads(1)
from rbp.train import TrainSpec, Trainer
from rbp.channel.algorithm import algorithm
from rbp import data as datasets
for model, ds_name, steps, bs in (("lenet", "mnist", 30, 128), ("resnet20", "cifar10", 3, 128)):
    ds = datasets.load(ds_name)
    for name in ["bp", "rbp", "srbp", "usf", "brsf", "frsf"]:
        spec = TrainSpec(dataset=ds_name, algorithm=algorithm(name, weight_decay=1e-4), model=model,
                         activation="relu", batch_size=bs, lr=0.01, momentum=0.9, decay=0.0, epochs=1,
                         augment=(model == "resnet20"))
        tr = Trainer(spec, [0], dataset=ds, probe_size=0)
        tr.train_epoch(max_steps=1)
        c = time.process_time(); tr.train_epoch(max_steps=steps); dc = time.process_time() - c
        c = time.process_time(); tr.evaluate(); de = time.process_time() - c
        print(f"{model} {name}: {dc / steps:.3f} CPU s/step -> {dc / steps * tr.steps_per_epoch:.0f} CPU s per "
              f"training epoch ({tr.steps_per_epoch} steps), test-set evaluation {de:.1f} CPU s", flush=True)

"""Running an experiment: every configuration x seed, resumable.

The runs of one configuration that are still missing train together as one
batched ensemble (:func:`rbp.train.train_group`; member k is the network
trained alone with seed k, up to float rounding) and each seed's run file is
written as soon as the group finishes.  Seeds are 0..K-1, so ``--seeds 2``
followed by ``--seeds 5`` reuses seeds 0 and 1.  A stored run counts as done
only if it was made with the same protocol (epochs, lr, ...); a store made
with another protocol is refused rather than mixed.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from .experiment import Experiment, load
from .store import Store


def plan(experiment: Experiment, store: Store, epochs=None, seeds=None, device="cpu"):
    """[(config, spec, missing seeds)] for every configuration, and the number of seeds K."""
    K = int(seeds or experiment.protocol["seeds"])
    out = []
    for config in experiment.configs:
        spec = experiment.spec(config, epochs=epochs, device=device)
        missing = [s for s in range(K) if not store.completed(config, s, spec)]
        out.append((config, spec, missing))
    return out, K


def run(experiment, out, epochs: int | None = None, seeds: int | None = None, device: str = "cpu",
        data_dir=None, progress: bool = True, log=None, threads: int | None = None) -> dict:
    """Run (or resume) ``experiment`` into the store folder ``out``; returns a summary dict.

    ``epochs`` / ``seeds`` scale the paper's protocol down (defaults: the
    experiment's, 100 epochs and 5 seeds for paper 1).  ``log(line)`` receives
    one line per finished configuration (default: stderr unless ``progress`` is off).
    ``threads`` sets torch's intra-op threads for this process (default: torch's
    choice); on a busy machine 1 thread can be several times faster than 2.
    """
    from .. import data as datasets
    from ..train import train_group

    exp = experiment if isinstance(experiment, Experiment) else load(experiment)
    for key, v in (("--epochs", epochs), ("--seeds", seeds), ("--threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")
    missing_features = exp.missing_features()
    if missing_features:
        raise ConfigError(f"experiment {exp.name}: {missing_features[0]}")
    store = Store(out)
    store.check(exp)
    todo, K = plan(exp, store, epochs, seeds, device)   # validates everything before touching disk
    n_runs = len(exp.configs) * K
    n_todo = sum(len(m) for _, _, m in todo)
    summary = {"experiment": exp.name, "out": str(Path(out)), "configs": len(exp.configs), "seeds": K,
               "epochs": int(epochs or exp.protocol["epochs"]), "runs": n_runs, "trained": 0,
               "skipped": n_runs - n_todo, "seconds": 0.0}
    if n_todo == 0:
        store.bind(exp)
        return summary

    t_start = time.perf_counter()
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    ds = datasets.load(exp.dataset, data_dir=data_dir)
    store.bind(exp)
    total = sum(len(m) * spec.epochs * math.ceil(ds.n_train / spec.batch_size) for _, spec, m in todo)
    from tqdm import tqdm
    bar = tqdm(total=total, unit="step", unit_scale=True, disable=None if progress else True,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.05,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} left")
    if log is None:
        log = (lambda line: bar.write(line, file=sys.stderr)) if progress else (lambda line: None)
    done_groups = progressed = 0
    groups = sum(1 for _, _, m in todo if m)
    try:
        for config, spec, missing in todo:
            if not missing:
                continue
            done_groups += 1
            bar.set_description_str(f"{exp.name} [{done_groups}/{groups}] {config.id}")
            width = len(missing)
            planned = width * spec.epochs * math.ceil(ds.n_train / spec.batch_size)
            advanced = 0

            def on_step(n, w):
                nonlocal advanced, progressed
                advanced += n * w
                progressed += n * w
                bar.update(n * w)

            t0 = time.perf_counter()
            histories = []
            size = _chunk_size(spec, ds)
            for i in range(0, len(missing), size):     # a chunk is one batched ensemble
                chunk = missing[i:i + size]
                _, hs = train_group(spec, chunk, dataset=ds, on_step=lambda n, w=len(chunk): on_step(n, w))
                for seed, history in zip(chunk, hs):
                    store.write(exp, config, seed, spec, history, ensemble=chunk, checksums=ds.checksums)
                histories.extend(hs)
            if advanced < planned:          # networks diverged and training stopped early
                bar.update(planned - advanced)
                progressed += planned - advanced
            summary["trained"] += width
            accs = [h[-1].test_accuracy for h in histories]
            sd = f" (sd {statistics.stdev(accs):.4f})" if len(accs) > 1 else ""
            elapsed = time.perf_counter() - t_start
            left = elapsed / max(progressed, 1) * (total - progressed)
            log(f"[{done_groups}/{groups}] {config.id}: seeds {_seed_text(missing)}, final test accuracy "
                f"{statistics.fmean(accs):.4f}{sd}, {time.perf_counter() - t0:.1f} s; about "
                f"{_duration(left)} left")
    finally:
        bar.close()
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
    return summary


def _chunk_size(spec, ds) -> int:
    """How many seeds train together: convolutional networks one at a time, MLPs as memory allows."""
    from .. import train
    if spec.model != "mlp":
        return 1
    capacity = getattr(train, "ensemble_capacity", None)
    return capacity(spec, ds.input_dim, ds.num_classes) if capacity else 1 << 30


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return (f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s")


def _seed_text(seeds):
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))

"""Running an experiment: every configuration x seed, resumable.

The runs of one configuration that are still missing train together as one
batched ensemble (:func:`rbp.train.train_group`; member k is the network
trained alone with seed k, up to float rounding) and each seed's run file is
written as soon as the group finishes.  Seeds are 0..K-1, so ``--seeds 2``
followed by ``--seeds 5`` reuses seeds 0 and 1.  A stored run counts as done
only if it was made with the same protocol (epochs, lr, ...); a store made
with another protocol is refused rather than mixed.

Every group of runs checkpoints at the end of each epoch, and claims its runs
while it trains (:mod:`.store`): a killed sweep resumes from the last complete
epoch of each run in flight, bit for bit, and two processes on one store share
the work instead of both doing it.

Two executors run the same units of work: ``local`` trains in this process;
``dask`` sends each configuration's missing seeds (or slices of them, with
``seeds_per_task``) as tasks to a Dask cluster (:mod:`.distributed`).  Either way
this process writes the run files, so the store is the same and a sweep can be
continued with the other executor.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from .experiment import Experiment, load
from .store import Claims, Store

EXECUTORS = ("local", "dask")


def plan(experiment: Experiment, store: Store, epochs=None, seeds=None, device="cpu", extend: bool = False,
         notes: list | None = None):
    """[(config, spec, missing seeds)] for every configuration, and the number of seeds K.

    A run file that does not parse counts as missing, and so does (with ``extend``)
    a run stored with fewer epochs; ``notes`` receives one line for each.
    """
    K = int(seeds or experiment.protocol["seeds"])
    out = []
    for config in experiment.configs:
        spec = experiment.spec(config, epochs=epochs, device=device)
        missing = []
        for s in range(K):
            state, note = store.status(config, s, spec, extend=extend)
            if state != "done":
                missing.append(s)
            if note and notes is not None:
                notes.append(note)
        out.append((config, spec, missing))
    return out, K


def run(experiment, out, epochs: int | None = None, seeds: int | None = None, device: str = "cpu",
        data_dir=None, progress: bool = True, log=None, threads: int | None = None,
        executor: str = "local", scheduler: str | None = None, workers: int | None = None,
        seeds_per_task: int | None = None, retries: int = 2, ensemble: bool = True, callbacks=None,
        extend: bool = False, keep_checkpoints: bool = False, configs: str | None = None) -> dict:
    """Run (or resume) ``experiment`` into the store folder ``out``; returns a summary dict.

    With ``ensemble`` (the default) the missing seeds of a configuration train
    as batched ensembles as large as memory allows, and configurations that
    differ only in their initial state share them (:func:`mixed_groups`);
    ``ensemble=False`` trains every network alone (the numbers are the same up
    to float rounding).

    ``epochs`` / ``seeds`` scale the paper's protocol down (defaults: the
    experiment's, 100 epochs and 5 seeds for paper 1).  ``log(line)`` receives
    one line per finished configuration (default: stderr unless ``progress`` is off).
    ``threads`` sets torch's intra-op threads for this process (default: torch's
    choice); on a busy machine 1 thread can be several times faster than 2.

    ``executor="dask"`` runs the tasks on a Dask cluster: the one at ``scheduler``
    (an address such as ``tcp://host:8786``), or a LocalCluster of ``workers``
    processes started for this call.  ``seeds_per_task`` splits a configuration's
    ensemble into tasks of that many seeds; ``retries`` is how often a task that
    raised an unexpected error is tried again (a worker that dies is handled by
    the scheduler).  The summary's ``failed`` lists the tasks that failed for good.

    ``callbacks`` (:mod:`rbp.callbacks`) hear of every network trained, named
    ``CONFIG/seed<k>``; with the Dask executor they are called in this process as
    each task's results arrive.

    Every group checkpoints each epoch and resumes from its checkpoint; the
    checkpoint is removed once its runs are stored unless ``keep_checkpoints``
    (kept, a finished run can later be continued with more epochs).  ``extend``
    continues runs stored with fewer epochs than asked for (from their kept
    checkpoint, else from the start; the stored file stays until the longer run
    replaces it); without it such a store is refused.  Runs claimed by another
    live process are left to it (the summary's ``claimed_elsewhere``).

    ``configs`` (comma-separated configuration ids or globs, e.g. ``baseline-*``)
    runs those configurations only; the others' stored runs are left as they are.
    """
    from .. import data as datasets

    exp = experiment if isinstance(experiment, Experiment) else load(experiment)
    for key, v in (("--epochs", epochs), ("--seeds", seeds), ("--threads", threads), ("--workers", workers),
                   ("--seeds-per-task", seeds_per_task)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and (scheduler is not None or workers is not None or seeds_per_task is not None):
        raise ConfigError("--scheduler, --workers and --seeds-per-task need --executor dask")
    if scheduler is not None and workers is not None:
        raise ConfigError("--workers starts a local cluster; it cannot be combined with --scheduler")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
    missing_features = exp.missing_features()
    if missing_features:
        raise ConfigError(f"experiment {exp.name}: {missing_features[0]}")
    if configs is not None:
        exp = _only(exp, configs)
    store = Store(out)
    store.check(exp)
    notes: list[str] = []
    todo, K = plan(exp, store, epochs, seeds, device, extend, notes)   # validates everything before touching disk
    n_runs = len(exp.configs) * K
    n_todo = sum(len(m) for _, _, m in todo)
    summary = {"experiment": exp.name, "out": str(Path(out)), "configs": len(exp.configs), "seeds": K,
               "epochs": int(epochs or exp.protocol["epochs"]), "runs": n_runs, "trained": 0,
               "skipped": n_runs - n_todo, "seconds": 0.0, "executor": executor, "diverged": [],
               "failed": [], "claimed_elsewhere": [], "resumed": []}
    if n_todo == 0:
        store.bind(exp)
        return summary
    if executor == "dask":
        from .distributed import run_on_dask      # binds the store once the cluster answers
        return run_on_dask(exp, store, todo, summary, scheduler=scheduler, workers=workers,
                           seeds_per_task=seeds_per_task if ensemble else 1, device=device, data_dir=data_dir, threads=threads,
                           retries=retries, progress=progress, log=log, callbacks=callbacks, notes=notes,
                           keep_checkpoints=keep_checkpoints)

    t_start = time.perf_counter()
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    ds = datasets.load(exp.dataset, data_dir=data_dir)
    store.bind(exp)
    total = sum(len(m) * spec.epochs * math.ceil(ds.n_train / spec.batch_size) for _, spec, m in todo)
    from .._optional import progress_bar
    bar = progress_bar(total=total, unit="step", unit_scale=True, disable=None if progress else True,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.05,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} left")
    explicit_log = log is not None
    if log is None:
        log = (lambda line: bar.write(line, file=sys.stderr)) if progress else (lambda line: None)
    # notes (a run file that cannot be read, a resumed checkpoint, a run left to another process) are
    # said even without progress lines
    say = log if (explicit_log or progress) else (lambda line: print(f"rbp: {line}", file=sys.stderr, flush=True))
    summary["notes"] = notes
    for note in notes:
        say(note)
    done_groups = progressed = 0
    groups = mixed_groups(todo) if ensemble else [[entry] for entry in todo if entry[2]]
    claims = Claims(store).__enter__()
    try:
        for group in groups:
            done_groups += 1
            ids = "+".join(config.id for config, _, _ in group)
            bar.set_description_str(f"{exp.name} [{done_groups}/{len(groups)}] {ids}")
            planned = sum(len(m) * spec.epochs * math.ceil(ds.n_train / spec.batch_size) for _, spec, m in group)
            advanced = 0

            def on_step(n, w):
                nonlocal advanced, progressed
                advanced += n * w
                progressed += n * w
                bar.update(n * w)

            t0 = time.perf_counter()
            histories = {config.id: [] for config, _, _ in group}
            members = [(config, spec, seed) for config, spec, missing in group for seed in missing]
            trained = 0
            for chunk, hs in train_members(members, ds, on_step, ensemble=ensemble, callbacks=callbacks,
                                           experiment=exp.name, store=store, claims=claims, log=say,
                                           summary=summary, keep_checkpoints=keep_checkpoints,
                                           extend=extend):
                trained += len(chunk)
                for (config, spec, seed), history in zip(chunk, hs):
                    chunk_ids = [c.id for c, _, _ in chunk]
                    path = store.write(exp, config, seed, spec, history, ensemble=[s for _, _, s in chunk],
                                       checksums=ds.checksums,
                                       mixed_with=chunk_ids if len(set(chunk_ids)) > 1 else None)
                    _note_divergence(summary, path)
                    histories[config.id].append(history)
            if advanced < planned:          # networks diverged and training stopped early
                bar.update(planned - advanced)
                progressed += planned - advanced
            summary["trained"] += trained
            elapsed = time.perf_counter() - t_start
            left = elapsed / max(progressed, 1) * (total - progressed)
            mixed = f" (one mixed ensemble: {ids})" if len(group) > 1 else ""
            for config, _, missing in group:
                if not histories[config.id]:
                    continue
                log(f"[{done_groups}/{len(groups)}] {config.id}: seeds {_seed_text(missing)}, "
                    f"{result_text([[r.as_dict() for r in h] for h in histories[config.id]])}, "
                    f"{time.perf_counter() - t0:.1f} s{mixed}; about {_duration(left)} left")
    finally:
        claims.__exit__(None, None, None)
        bar.close()
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
    return summary


def _only(exp: Experiment, patterns: str) -> Experiment:
    """``exp`` with the configurations whose ids match one of the comma-separated globs ``patterns``."""
    import dataclasses
    import fnmatch
    pats = [p.strip() for p in str(patterns).split(",") if p.strip()]
    if not pats:
        raise ConfigError("--configs needs at least one configuration id or glob")
    for p in pats:
        if not any(fnmatch.fnmatchcase(c.id, p) for c in exp.configs):
            raise ConfigError(f"--configs: {p!r} matches no configuration of {exp.name} "
                              f"({', '.join(c.id for c in exp.configs)})")
    kept = [c for c in exp.configs if any(fnmatch.fnmatchcase(c.id, p) for p in pats)]
    return dataclasses.replace(exp, configs=tuple(kept))


def mixed_groups(todo):
    """Group the configurations with missing runs that can share one ensemble (:func:`rbp.train.mixable`).

    Configurations whose algorithms differ only in their initial state (feedback
    distribution or scale, initial weight scale: e.g. the sparse-N rows of
    Table 1 or the sparsity sweep of Fig. 4) train as one mixed ensemble; the
    others alone.  Groups keep the experiment's order of first appearance.
    """
    from ..train import mixable
    groups = []
    for entry in todo:
        if not entry[2]:
            continue
        for g in groups:
            if mixable(g[0][1], entry[1]):
                g.append(entry)
                break
        else:
            groups.append([entry])
    return groups


def train_members(members, ds, on_step=None, ensemble: bool = True, callbacks=None, experiment=None,
                  store: Store | None = None, claims=None, log=None, summary=None,
                  keep_checkpoints: bool = False, extend: bool = False):
    """Train ``members`` = [(config, spec, seed)] in ensembles as large as memory allows (one at a time
    without ``ensemble``); the specs must be mixable.  Yields (members of the ensemble, their histories).
    ``callbacks`` hear of each network as ``CONFIG/seed<k>`` (:func:`callback_runs`).

    With a ``store``: members stored meanwhile (by another process) are dropped, each
    ensemble's members are claimed first (``claims``; a member claimed elsewhere is
    left out and listed in ``summary["claimed_elsewhere"]``), and each ensemble
    checkpoints every epoch and resumes from its checkpoint.  After the caller has
    handled a yielded ensemble (written its runs), its checkpoint is removed (unless
    ``keep_checkpoints``) and its claims released.
    """
    from ..train import train_group
    log = log or (lambda line: None)
    size = _chunk_size(members[0][1], ds) if ensemble else 1
    for i in range(0, len(members), size):
        chunk = members[i:i + size]
        ckpt = None
        if store is not None:
            def stored(m):
                if store.status(m[0], m[2], m[1], extend=extend)[0] == "done":   # by another process
                    if summary is not None:
                        summary["skipped"] += 1
                    return True
                return False
            chunk = [m for m in chunk if not stored(m)]
            if claims is not None:
                mine = []
                for m in chunk:
                    holder = claims.take(m[0].id, m[2])
                    if holder is None:
                        if stored(m):        # stored and released between our look and our claim
                            claims.release(m[0].id, m[2])
                        else:
                            mine.append(m)
                    else:
                        log(f"{m[0].id} seed {m[2]}: claimed by {holder}; left to it")
                        if summary is not None:
                            summary["claimed_elsewhere"].append({"config": m[0].id, "seed": m[2],
                                                                 "holder": holder})
                chunk = mine
            if not chunk:
                continue
            ckpt = store.checkpoint([(c.id, s) for c, _, s in chunk], [sp for _, sp, _ in chunk],
                                    keep=keep_checkpoints, log=log)
        step = None if on_step is None else (lambda n, w=len(chunk): on_step(n, w))
        specs = [spec for _, spec, _ in chunk]
        _, hs = train_group(specs[0], [seed for _, _, seed in chunk], dataset=ds, on_step=step,
                            member_specs=specs if len(chunk) > 1 else None, callbacks=callbacks,
                            runs=callback_runs(chunk, experiment) if callbacks else None, checkpoint=ckpt)
        if ckpt is not None and ckpt.resumed_from and summary is not None:
            summary["resumed"].append({"members": ckpt.members, "from_epoch": ckpt.resumed_from})
        yield chunk, hs
        if ckpt is not None:
            ckpt.done()
        if claims is not None:
            for c, _, s in chunk:
                claims.release(c.id, s)


def callback_runs(members, experiment=None) -> list[dict]:
    """The callbacks' run descriptions of ``members`` = [(config, spec, seed)]: ``CONFIG/seed<k>`` and ids."""
    return [{"run": f"{config.id}/seed{seed}", "experiment": experiment, "config": config.id,
             "config_label": config.label} for config, _, seed in members]


def train_seeds(spec, seeds, ds, on_step=None, config_id: str | None = None, checkpoints: dict | None = None,
                sink=None, log=None):
    """Train ``seeds`` of one configuration in batched ensembles as large as memory allows.

    Yields (seeds of the ensemble, their histories) per ensemble; ``on_step(n, width)``
    is told of every n training steps of an ensemble of ``width`` networks.

    With ``sink(name, bytes)`` every ensemble checkpoints each epoch through it (a Dask
    worker hands them to the client, which writes the store); ``checkpoints`` maps
    checkpoint names to the bytes of earlier checkpoints to resume from, and
    ``config_id`` names the configuration in them.
    """
    from ..train import train_group
    from .store import Checkpoint
    size = _chunk_size(spec, ds)
    for i in range(0, len(seeds), size):     # a chunk is one batched ensemble
        chunk = list(seeds[i:i + size])
        step = None if on_step is None else (lambda n, w=len(chunk): on_step(n, w))
        ckpt = None
        if sink is not None:
            ckpt = Checkpoint(None, [(config_id, s) for s in chunk], [spec] * len(chunk), log=log, sink=sink)
            ckpt._source = (checkpoints or {}).get(ckpt.name)
        _, hs = train_group(spec, chunk, dataset=ds, on_step=step, checkpoint=ckpt)
        yield chunk, hs


def result_text(histories) -> str:
    """'final test accuracy 0.9512 (sd 0.0040)', with the diverged runs named, for the progress lines."""
    from .store import stop_at_divergence
    rows = [stop_at_divergence(list(h)) for h in histories]
    diverged = [r[-1] for r in rows if r[-1].get("diverged")]
    accs = [r[-1]["test_accuracy"] for r in rows if not r[-1].get("diverged")]
    text = ""
    if accs:
        sd = f" (sd {statistics.stdev(accs):.4f})" if len(accs) > 1 else ""
        text = f"final test accuracy {statistics.fmean(accs):.4f}{sd}"
    if diverged:
        text += (", " if text else "") + ", ".join(f"seed {r['seed']} diverged at epoch {r['epoch']}"
                                                   for r in diverged)
    return text


def _note_divergence(summary, path):
    from .store import read_run
    doc = read_run(path)
    if doc.get("diverged"):
        summary["diverged"].append({"config": doc["config"]["id"], "seed": doc["seed"],
                                    "epoch": doc.get("diverged_epoch")})


def _chunk_size(spec, ds) -> int:
    """How many seeds train together in one batched ensemble, as memory allows (MLPs and conv nets)."""
    from .. import train
    capacity = getattr(train, "ensemble_capacity", None)
    return capacity(spec, ds.input_dim, ds.num_classes, input_shape=ds.input_shape) if capacity else 1 << 30


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return (f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s")


def _seed_text(seeds):
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))

"""Running an experiment's sweep on a Dask cluster (``rbp run --executor dask``).

Needs the optional dependency ``dask[distributed]`` (``pip install 'rbp[distributed]'``).

The unit of work is what the local runner trains in one go: the missing seeds
of one configuration, as one batched ensemble (or, with ``seeds_per_task``,
slices of that many seeds).  The worker splits a task into ensembles as the
local runner does (:func:`rbp.experiments.runner.train_seeds`): as many
networks as fit in memory, and convolutional networks one at a time on CPU.  A task carries the experiment's TOML text, not Python objects, and the
worker parses and validates it again, so a worker with another rbp version
refuses what it cannot run instead of running something else.

Who writes the store: **this process (the client)**.  A worker trains and
returns the epoch records with its own provenance (versions, host, data
checksums); the client writes one run file per seed, atomically, as results
arrive (:meth:`rbp.experiments.store.Store.write`).  So the store can sit on the
client's local disk while the workers are elsewhere, workers need no write
access anywhere, and the store is the same as after a local run: a sweep
begun on a cluster can be finished with the local executor and vice versa.
Workers need the datasets (``--data-dir`` / ``$RBP_DATA_DIR`` on the worker, or
the download cache); the bundled ``digits`` set needs nothing.

Failures:

* a worker that dies (killed, out of memory, node lost) loses only the task it
  was running; the scheduler gives that task to another worker.  A task whose
  workers die more than ``distributed.scheduler.allowed-failures`` times (3 by
  default) is given up and reported;
* a deterministic failure (an :class:`~rbp.errors.RBPError`: a corrupt or
  missing dataset, a configuration the worker's rbp refuses) is caught in the
  task and returned as a failure record: it is reported, never retried;
* any other exception is retried ``retries`` times (it may be transient), then
  reported.

Reported failures appear in the summary's ``failed`` list; the runs that did
finish are stored, and running the command again retries only what is missing.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid

from ..errors import ConfigError, RBPError

_DATASETS: dict = {}      # per worker process: (name, data_dir) -> Dataset


def _import_dask():
    try:
        import dask  # noqa: F401
        from dask import distributed
    except ImportError:
        raise ConfigError("--executor dask needs dask.distributed: pip install 'rbp[distributed]'") from None
    return distributed


def _dataset(name, data_dir):
    """The dataset, loaded once per worker process."""
    from .. import data as datasets
    key = (name, None if data_dir is None else str(data_dir))
    if key not in _DATASETS:
        _DATASETS[key] = datasets.load(name, data_dir=data_dir)
    return _DATASETS[key]


def train_task(source: str, source_name: str, config_id: str, seeds: list, epochs: int, device: str,
               data_dir, threads, checkpoints: dict | None = None, queue: str | None = None) -> dict:
    """What a worker runs: train ``seeds`` of one configuration; returns plain data.

    ``{"ok": True, "config", "seeds", "results": [{"seed", "ensemble", "history"}], "provenance"}``,
    or ``{"ok": False, "config", "seeds", "error"}`` for a deterministic failure.

    ``checkpoints`` (name -> bytes) are the store's checkpoints of these runs, to resume
    from; with ``queue`` (the name of a Dask queue) every epoch's checkpoint is put on
    it as ``{"name", "data"}`` for the client to write into the store.
    """
    from .experiment import parse
    from .runner import train_seeds
    from .store import run_provenance
    try:
        exp = parse(source, source_name)
        config = exp.config(config_id)
        spec = exp.spec(config, epochs=epochs, device=device)
        if threads is not None:
            import torch
            torch.set_num_threads(int(threads))
        ds = _dataset(exp.dataset, data_dir)
        results = []
        t0 = time.perf_counter()
        sink = None
        resumed = []
        if queue is not None:
            from distributed import Queue
            q = Queue(queue)

            def sink(name, data):
                q.put({"name": name, "data": data})
        for chunk, histories in train_seeds(spec, list(seeds), ds, config_id=config_id, checkpoints=checkpoints,
                                            sink=sink, log=resumed.append):
            for seed, h in zip(chunk, histories):
                results.append({"seed": int(seed), "ensemble": list(chunk), "history": [r.as_dict() for r in h]})
        prov = run_provenance(ds.checksums)
        prov["worker_pid"] = os.getpid()
        return {"ok": True, "config": config_id, "seeds": list(seeds), "results": results, "provenance": prov,
                "seconds": time.perf_counter() - t0, "notes": resumed}
    except RBPError as e:
        return {"ok": False, "config": config_id, "seeds": list(seeds), "error": f"{type(e).__name__}: {e}"}


def tasks_of(todo, seeds_per_task=None):
    """[(config, spec, seeds)] : the units of work for the missing runs of ``todo`` (see the module docstring)."""
    out = []
    for config, spec, missing in todo:
        if not missing:
            continue
        size = seeds_per_task or len(missing)   # the worker splits a task into ensembles that fit (runner.train_seeds)
        for i in range(0, len(missing), size):
            out.append((config, spec, list(missing[i:i + size])))
    return out


def run_on_dask(exp, store, todo, summary, scheduler=None, workers=None, seeds_per_task=None, device="cpu",
                data_dir=None, threads=None, retries=2, progress=True, log=None, timeout=None,
                callbacks=None, notes=None, keep_checkpoints: bool = False) -> dict:
    """Run the missing runs of ``todo`` on a Dask cluster and write them into ``store`` (here).

    The client claims every run before it submits it (runs another process holds are
    left to it), writes the workers' per-epoch checkpoints into the store as they
    arrive (a Dask queue), and sends each task the checkpoints of its runs to
    resume from.
    """
    distributed = _import_dask()
    explicit = log is not None
    if log is None:
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    say = log if (explicit or progress) else (lambda line: print(f"rbp: {line}", file=sys.stderr, flush=True))
    summary["notes"] = list(notes or [])
    for note in summary["notes"]:
        say(note)
    t_start = time.perf_counter()
    import dask
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(dask)}):
        return _run(distributed, exp, store, todo, summary, scheduler, workers, seeds_per_task, device, data_dir,
                    threads, retries, log, timeout, t_start, callbacks, say, keep_checkpoints)


def _worker_environ(dask) -> dict:
    """Dask's environment for new worker processes, less MALLOC_TRIM_THRESHOLD_.

    Dask sets MALLOC_TRIM_THRESHOLD_=65536 to hand memory back to the system early;
    that also pins glibc's mmap threshold, so every large tensor is a fresh mmap
    and training ran about 30 % slower in our measurement (docs/scaling.md).
    """
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _run(distributed, exp, store, todo, summary, scheduler, workers, seeds_per_task, device, data_dir, threads,
         retries, log, timeout, t_start, callbacks=None, say=None, keep_checkpoints=False):
    cluster = None
    try:
        if scheduler is None:
            n = workers or max(1, min(os.cpu_count() or 1, len(tasks_of(todo, seeds_per_task))))
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               dashboard_address=None)
            address = cluster.scheduler_address
        else:
            address = scheduler
        try:
            client = distributed.Client(address, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        with client:
            store.bind(exp)
            log(f"{exp.name}: dask scheduler {address}, "
                f"{len(client.scheduler_info().get('workers', {}))} worker(s) now")
            from .store import Claims
            with Claims(store) as claims:
                _submit_and_collect(client, distributed, exp, store, todo, summary, seeds_per_task, device,
                                    data_dir, threads, retries, log, t_start, timeout, callbacks,
                                    claims=claims, say=say or log, keep_checkpoints=keep_checkpoints)
    finally:
        if cluster is not None:
            import logging
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)     # "still alive after 4 s, killing": torch's slow exit, harmless
            try:
                cluster.close()
            finally:
                nanny.setLevel(level)
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
    return summary


def _claim(store, claims, todo, summary, say):
    """``todo`` less the runs stored meanwhile or claimed by another process (those are noted)."""
    out = []
    for config, spec, missing in todo:
        mine = []
        for seed in missing:
            holder = claims.take(config.id, seed)
            if holder is not None:
                say(f"{config.id} seed {seed}: claimed by {holder}; left to it")
                summary["claimed_elsewhere"].append({"config": config.id, "seed": seed, "holder": holder})
            elif store.completed(config, seed, spec):        # stored by another process meanwhile
                claims.release(config.id, seed)
                summary["skipped"] += 1
            else:
                mine.append(seed)
        out.append((config, spec, mine))
    return out


class _CheckpointWriter:
    """Writes the checkpoints the workers put on a Dask queue into the store (a thread in the client)."""

    def __init__(self, distributed, store, name):
        import threading
        self.store, self.queue = store, distributed.Queue(name)
        self.finished: set[str] = set()     # groups whose runs are stored: a late checkpoint is dropped
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="rbp-checkpoints", daemon=True)
        self.thread.start()

    def _loop(self):
        from .store import atomic_write
        while True:
            try:
                item = self.queue.get()     # blocks; close() puts the item that ends the loop
            except Exception:               # the client or scheduler is going away
                return
            if item is None or self.stop.is_set():
                return
            name = str(item["name"])
            if "/" in name or name.startswith("."):
                continue
            with self.lock:
                if name not in self.finished:
                    self.store.checkpoints.mkdir(parents=True, exist_ok=True)
                    atomic_write(self.store.checkpoints / name, item["data"])

    def finish(self, names, keep):
        with self.lock:
            self.finished.update(names)
            if not keep:
                for name in names:
                    try:
                        (self.store.checkpoints / name).unlink()
                    except FileNotFoundError:
                        pass

    def close(self):
        self.stop.set()
        try:
            self.queue.put(None)
        except Exception:       # the cluster is gone: the thread has ended with it
            pass
        self.thread.join(timeout=10)


def _checkpoints_of(store, config_id, seeds) -> dict:
    """The store's checkpoints whose members are all among ``seeds`` of ``config_id`` (name -> bytes)."""
    out = {}
    for held in store.checkpoints_held():
        if all(c == config_id and s in seeds for c, s in held["members"]):
            name = os.path.basename(held["path"])
            data = store.checkpoint_bytes(name)
            if data is not None:
                out[name] = data
    return out


def _submit_and_collect(client, distributed, exp, store, todo, summary, seeds_per_task, device, data_dir,
                        threads, retries, log, t_start, timeout, callbacks=None, claims=None, say=None,
                        keep_checkpoints=False):
    from .runner import _seed_text, callback_runs, result_text
    from .store import checkpoint_name
    say = say or log
    if claims is not None:
        todo = _claim(store, claims, todo, summary, say)
    units = tasks_of(todo, seeds_per_task)
    token = uuid.uuid4().hex[:8]
    writer = _CheckpointWriter(distributed, store, f"rbp-checkpoints-{token}")
    try:
        _collect(client, distributed, exp, store, units, summary, device, data_dir, threads, retries, log, t_start,
                 timeout, callbacks, claims, say, keep_checkpoints, writer, token, _seed_text, callback_runs,
                 result_text, checkpoint_name)
    finally:
        writer.close()


def _collect(client, distributed, exp, store, units, summary, device, data_dir, threads, retries, log, t_start,
             timeout, callbacks, claims, say, keep_checkpoints, writer, token, _seed_text, callback_runs,
             result_text, checkpoint_name):
    futures = {}
    for config, spec, seeds in units:
        key = f"rbp-{exp.name}-{config.id}-seeds-{'.'.join(map(str, seeds))}-{token}"
        fut = client.submit(train_task, exp.source, exp.path or f"{exp.name}.toml", config.id, seeds,
                            spec.epochs, device, data_dir, threads, _checkpoints_of(store, config.id, seeds),
                            writer.queue.name, key=key, retries=retries, pure=False)
        futures[fut] = (config, spec, seeds)
    done = 0
    for fut in distributed.as_completed(list(futures), timeout=timeout):
        config, spec, seeds = futures[fut]
        done += 1
        try:
            res = fut.result()
        except Exception as e:      # the task gave up: KilledWorker, or an unexpected error after its retries
            res = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        if not res.get("ok"):
            summary["failed"].append({"config": config.id, "seeds": list(seeds), "error": res["error"]})
            log(f"[{done}/{len(futures)}] {config.id}: seeds {_seed_text(seeds)} FAILED: {res['error']}")
            continue
        by_seed = {r["seed"]: r for r in res["results"]}
        if sorted(by_seed) != sorted(seeds):   # never store a partial or foreign answer
            summary["failed"].append({"config": config.id, "seeds": list(seeds),
                                      "error": f"the worker returned seeds {sorted(by_seed)}"})
            continue
        for note in res.get("notes", []):
            say(note)
            if ": resumed after epoch " in note:
                summary["resumed"].append({"note": note})
        for seed in seeds:
            r = by_seed[seed]
            store.write(exp, config, seed, spec, r["history"], ensemble=r["ensemble"],
                        provenance_of_run=res["provenance"])
            doc = store.read(config.id, seed)
            if doc is not None and doc.get("diverged"):
                summary["diverged"].append({"config": config.id, "seed": seed, "epoch": doc.get("diverged_epoch")})
        writer.finish({checkpoint_name([(config.id, s) for s in r["ensemble"]])
                       for r in res["results"]}, keep_checkpoints)
        if claims is not None:
            for seed in seeds:
                claims.release(config.id, seed)
        if callbacks:
            _replay(callbacks, exp, config, spec, seeds, by_seed, callback_runs)
        summary["trained"] += len(seeds)
        elapsed = time.perf_counter() - t_start
        left = elapsed / done * (len(futures) - done)
        log(f"[{done}/{len(futures)}] {config.id}: seeds {_seed_text(seeds)}, "
            f"{result_text([r['history'] for r in res['results']])}, on {res['provenance'].get('host')} "
            f"(pid {res['provenance'].get('worker_pid')}) in {res['seconds']:.1f} s; about "
            f"{_minutes(left)} left")


def _replay(callbacks, exp, config, spec, seeds, by_seed, callback_runs):
    """Tell ``callbacks`` about the networks of a finished task, from the histories it returned."""
    from ..callbacks import Notifier, run_info
    from ..train import EpochRecord
    for seed in seeds:
        r = by_seed[seed]
        (extra,) = callback_runs([(config, spec, seed)], exp.name)
        notify = Notifier(callbacks, [run_info(spec, seed, r["ensemble"], **extra)])
        history = [EpochRecord.from_dict(row) for row in r["history"]]
        notify.begin()
        for rec in history:
            notify.epoch([rec])
        notify.end([history])


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if math.isfinite(seconds) else "?"

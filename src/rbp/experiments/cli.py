"""`rbp list`, `rbp run`, `rbp report`, `rbp cost`: thin wrappers around the library."""

from __future__ import annotations

import json
import sys
import warnings


def register(sub):
    p = sub.add_parser("list", help="list the named experiments of paper 1")
    p.add_argument("--json", action="store_true", help="print the list as one JSON object")
    p.set_defaults(func=_cmd_list)

    r = sub.add_parser("run", help="run (or resume) a named experiment: every configuration x seed")
    r.add_argument("experiment", help="a name from `rbp list`, or the path of an experiment .toml file")
    r.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the paper's, 100)")
    r.add_argument("--seeds", type=int, default=None, help="seeds 0..K-1 per configuration (default: the paper's, 5)")
    r.add_argument("--out", default=None, help="result store folder (default: results/EXPERIMENT)")
    r.add_argument("--device", default="cpu", help="cpu or cuda")
    r.add_argument("--data-dir", default=None, help="where the datasets are (else $RBP_DATA_DIR, the cache)")
    r.add_argument("--no-ensemble", action="store_true",
                   help="train every network alone (default: seeds, and configurations that differ only in "
                        "their initial state, train as batched ensembles sized to memory)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice; 1 is often faster on a busy machine)")
    r.add_argument("--configs", default=None, metavar="ID,...",
                   help="run only these configurations (ids or globs such as 'baseline-*'); the others' "
                        "stored runs are left as they are")
    r.add_argument("--extend", action="store_true",
                   help="continue runs stored with fewer epochs than --epochs (from their checkpoint when "
                        "kept, else from the start); without it such a store is refused")
    r.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's last checkpoint when it is stored (so it can be extended later; "
                        "about the size of the model and optimizer state per run)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-configuration lines")
    r.add_argument("--report", action="store_true", help="write the report when the runs are done")
    r.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    r.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="log every network trained as TensorBoard scalars under DIR/CONFIG/seed<k> "
                        "(needs pip install 'rbp[tensorboard]')")
    d = r.add_argument_group("distributed (docs/scaling.md; needs pip install 'rbp[distributed]')")
    d.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="local (this process, default) or dask (tasks on a Dask cluster)")
    d.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="join the Dask cluster at ADDRESS (e.g. tcp://host:8786); default: start a LocalCluster")
    d.add_argument("--workers", type=int, default=None,
                   help="worker processes of the LocalCluster (default: CPU cores, at most one per task)")
    d.add_argument("--seeds-per-task", type=int, default=None,
                   help="split each configuration's ensemble into tasks of this many seeds (default: one task)")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="write report.md and figures for a result store")
    rep.add_argument("dir", help="the result store folder of `rbp run`")
    rep.add_argument("--out", default=None, help="where to write the report (default: DIR)")
    rep.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    rep.set_defaults(func=_cmd_report)

    c = sub.add_parser("cost", help="multiplications in the learning channel (paper 1, Eqs. 14-15)")
    c.add_argument("--sizes", default="784,100,100,100,100,10",
                   help="layer sizes N_0,...,N_L, input first (default: the paper's MNIST network)")
    c.add_argument("--algorithm", "-a", default=None,
                   help="one algorithm of `rbp algorithms`, options after colons as `rbp bench` takes them "
                        "(srbp:skip_projection=shared); default: paper 1's bp sbp rbp srbp arbp asrbp top")
    c.add_argument("--no-derivative", action="store_true", help="the \"no f'\" variant")
    c.add_argument("--backward-hidden", default=None, metavar="B1,...,Bm",
                   help="hidden sizes of a distinct backward network (paper 2; with --algorithm distinct/adistinct)")
    c.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    c.set_defaults(func=_cmd_cost)


def _cmd_list(args) -> int:
    from .experiment import load_all
    exps = load_all()
    if args.json:
        print(json.dumps({"experiments": [{"name": e.name, "description": e.description,
                                           "configs": len(e.configs), "dataset": e.dataset} for e in exps]}))
        return 0
    width = max(len(e.name) for e in exps)
    for e in exps:
        print(f"{e.name:{width}s}  {e.description}")
    return 0


def _cmd_run(args) -> int:
    from .. import paths
    from .experiment import load
    from .runner import run
    from ..cli import _tensorboard
    exp = load(args.experiment)
    out = args.out or f"results/{exp.name}"
    if args.data_dir is not None:
        paths.input_dir(args.data_dir, "--data-dir")
    paths.output_dir(out, "--out", create=False)     # a file, under a file, or unwritable: refused now
    if args.tensorboard is not None:
        paths.output_dir(args.tensorboard, "--tensorboard", create=False)
    logger = _tensorboard(args.tensorboard)
    try:
        summary = run(exp, out, epochs=args.epochs, seeds=args.seeds, device=args.device, data_dir=args.data_dir,
                      progress=not args.quiet, threads=args.threads, executor=args.executor,
                      scheduler=args.scheduler, workers=args.workers, seeds_per_task=args.seeds_per_task,
                      ensemble=not args.no_ensemble, callbacks=logger, extend=args.extend,
                      keep_checkpoints=args.keep_checkpoints, configs=args.configs)
    finally:
        if logger is not None:
            logger.close()
    if args.report:
        summary["report"] = _report(out, None)["report"]
    for d in summary.get("diverged", []):
        print(f"rbp: {d['config']} seed {d['seed']} diverged at epoch {d['epoch']} (stored as diverged)",
              file=sys.stderr)
    failed = summary.get("failed", [])
    for f in failed:
        seeds = ",".join(map(str, f["seeds"]))
        print(f"rbp: error: {f['config']} seeds {seeds} failed: {f['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        n_failed = sum(len(f["seeds"]) for f in failed)
        print(f"{exp.name}: {summary['runs']} runs ({summary['configs']} configurations x {summary['seeds']} "
              f"seeds, {summary['epochs']} epochs): {summary['trained']} trained, {summary['skipped']} already "
              f"stored" + (f", {n_failed} failed" if n_failed else "")
              + (f", {len(summary['diverged'])} diverged" if summary.get("diverged") else "")
              + (f", {len(summary['claimed_elsewhere'])} left to another process"
                 if summary.get("claimed_elsewhere") else "")
              + f", {summary['seconds']:.1f} s; results in {out}"
              + (f", report {summary['report']}" if args.report else f" (`rbp report {out}` writes the report)"))
    return 1 if failed else 0


def _report(directory, out):
    from .. import paths
    from ..report import write_report
    paths.input_dir(directory, "result store")
    if out is not None:
        paths.output_dir(out, "--out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = write_report(directory, out)
    for w in caught:
        print(f"rbp: warning: {w.message}", file=sys.stderr)
    return summary


def _cmd_report(args) -> int:
    summary = _report(args.dir, args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['report']} and {len(summary['figures'])} figures "
              f"({summary['runs']} runs, {summary['flagged']} flagged outside the paper's spread)")
    return 0


def _cmd_cost(args) -> int:
    from ..cost import PAPER1, cost, format_table
    from ..errors import ConfigError
    try:
        sizes = [int(t) for t in args.sizes.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--sizes expects comma-separated integers, got {args.sizes!r}") from None
    names = [args.algorithm] if args.algorithm else list(PAPER1)
    opts = {"derivative": False} if args.no_derivative else {}
    if args.backward_hidden is not None:
        if not args.algorithm:
            raise ConfigError("--backward-hidden needs --algorithm (a distinct network: distinct or adistinct)")
        try:
            opts["backward_hidden"] = tuple(int(t) for t in args.backward_hidden.split(",") if t.strip())
        except ValueError:
            raise ConfigError(f"--backward-hidden expects comma-separated integers, got {args.backward_hidden!r}") \
                from None
    from ..channel.algorithm import algorithm, parse_variant
    rows = []
    for text in names:
        n, given = parse_variant(text)
        rows.append(cost(sizes, algorithm(n, **{**(opts if n != "top" else {}), **given})))
    if args.json:
        print(json.dumps({"sizes": sizes, "per": "example", "algorithms": rows}))
        return 0
    print(f"multiplications per training example, network {'-'.join(map(str, sizes))}")
    print(format_table(rows))
    print("channel: weight x signal products that deliver signals to the hidden layers 1..L-1 "
          "(BP/RBP/SBP: sum_{k=1}^{L-1} N_k N_{k+1}; SRBP: N_L sum_{k=1}^{L-1} N_k, Eq. 15); the input "
          f"layer needs no signal. The paper's Eq. 14 W = sum_(k=0)^(L-1) N_k N_(k+1) = {rows[0]['paper_W_eq14']:,}.")
    if any(r["per_step"] for r in rows):
        print("per step: once per training step, not per example (weight mirrors' noise phase; giving "
              "sign-concordant feedback the current signs of W)")
    return 0

"""The ``rbp`` command.  Thin: it parses, calls the library, and prints.

Errors a user can cause (``RBPError``) print one line on stderr and exit with
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from . import __version__
from .errors import ConfigError, RBPError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise ConfigError(f"{self.prog}: {message}")


def _int_list(text):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None



def _option_type(opt):
    def parse(text):
        try:
            return opt.parse_text(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = opt.kind          # argparse names the type in its message
    return parse


def add_algorithm_options(p: argparse.ArgumentParser):
    """The learning-channel options shared by every command that trains: one flag per entry of
    ``rbp.channel.algorithm.OPTIONS`` (its flag, type, choices and help; unset flags keep the algorithm's own)."""
    from .channel.algorithm import OPTIONS, option_defaults
    g = p.add_argument_group("learning channel")
    g.add_argument("--algorithm", "-a", default="bp",
                   help="bp, sbp, rbp, srbp, arbp, asrbp, top, kp, wm, usf, brsf, frsf, ... "
                        "(`rbp algorithms` lists them all; default bp)")
    for opt in OPTIONS:
        text = f"{opt.help} (default {option_defaults(opt)})".replace("%", "%%")
        if opt.negate:
            g.add_argument(opt.cli_flag, dest=opt.name, action="store_const", const=False, default=None, help=text)
        else:
            metavar = "{" + ",".join(opt.choices) + "}" if opt.choices else opt.metavar
            g.add_argument(opt.cli_flag, dest=opt.name, type=_option_type(opt), default=None, metavar=metavar,
                           help=text)     # the option's own check refuses a bad value (one line)


def algorithm_options_from_args(args) -> dict:
    """The options the command's flags set (``None`` for the flags not given)."""
    from .channel.algorithm import OPTIONS
    return {opt.name: getattr(args, opt.name, None) for opt in OPTIONS}


def algorithm_from_args(args, lr=None, decay=None):
    """The algorithm of the command's flags; ``lr`` / ``decay``: the protocol's, where the flags are unset.

    The after-lr reading of the quantized update needs the constant learning rate: ``--quantize-update-lr``,
    else the run's ``--lr`` (which must then not decay)."""
    from .channel.algorithm import algorithm
    options = algorithm_options_from_args(args)
    mode = options["quantize_update_mode"]
    if getattr(args, "lr", None) is not None:
        lr = args.lr
    if getattr(args, "decay", None) is not None:
        decay = args.decay
    if mode and "after-lr" in mode.split("+"):
        if decay:
            raise ConfigError("--quantize-update-mode after-lr needs a constant learning rate: add --decay 0")
        if options["quantize_update_lr"] is None:
            options["quantize_update_lr"] = lr
    return algorithm(args.algorithm, **options)


def train_spec_from_args(args):
    """The TrainSpec of `rbp train`: the dataset's paper protocol (rbp.protocols), then the flags given."""
    from .data import DATASETS
    from .train import TrainSpec

    if args.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    from .protocols import protocol
    proto = protocol(args.dataset)
    return TrainSpec.paper(args.dataset, algorithm=algorithm_from_args(args, proto.lr, proto.decay),
                           hidden=args.hidden,
                           activation=args.activation, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, decay=args.decay, momentum=args.momentum, device=args.device,
                           driver=args.driver, frozen=args.freeze, model=args.model,
                           augment=args.augment, optimizer=args.optimizer).validate()


def _cmd_train(args) -> int:
    from . import paths
    from .data import load
    from .train import train

    spec = train_spec_from_args(args)
    alg = spec.algorithm
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.data_dir is not None:
        paths.input_dir(args.data_dir, "--data-dir")
    if args.tensorboard is not None:
        paths.output_dir(args.tensorboard, "--tensorboard", create=False)
    experiment, existed = None, True
    if args.out:
        from .experiments.experiment import from_spec
        experiment = from_spec(spec, seeds)
        existed = os.path.isdir(args.out)
        paths.output_dir(args.out, "--out", empty=True)
    logger = None
    try:
        logger = _tensorboard(args.tensorboard)      # before training: a missing package fails at once
        ds = load(args.dataset, data_dir=args.data_dir)
    except BaseException:
        if logger is not None:
            logger.close()
        if not existed and not os.listdir(args.out):
            os.rmdir(args.out)         # nothing trained: leave no trace
        raise
    n_steps = -(-ds.n_train // spec.batch_size) * spec.epochs * (1 if not args.no_ensemble else len(seeds))

    from ._optional import progress_bar
    bar = progress_bar(total=n_steps, unit="step", disable=args.quiet or None, leave=False, file=sys.stderr)
    per_epoch: dict[int, list] = {}

    def on_epoch(records):
        for r in records:
            per_epoch.setdefault(r.epoch, []).append(r)
        rs = per_epoch[records[0].epoch]
        if len(rs) == len(seeds) and not args.quiet:
            tr = [r.train_accuracy for r in rs]
            te = [r.test_accuracy for r in rs]
            sd = f" (sd {statistics.stdev(te):.4f})" if len(te) > 1 else ""
            bar.write(f"epoch {rs[0].epoch:3d}/{spec.epochs}  train acc {statistics.fmean(tr):.4f}  "
                      f"test acc {statistics.fmean(te):.4f}{sd}  {rs[0].seconds:.2f} s")

    try:
        histories = train(spec, seeds, dataset=ds, ensemble=not args.no_ensemble,
                          on_step=bar.update, on_epoch=on_epoch, callbacks=logger)
    finally:
        if logger is not None:
            logger.close()
    bar.close()
    finals = [h[-1] for h in histories]
    te = [r.test_accuracy for r in finals]
    tr = [r.train_accuracy for r in finals]
    summary = {
        "algorithm": alg.name, "options": alg.options(), "label": alg.describe(), "dataset": args.dataset,
        "epochs": spec.epochs, "seeds": len(seeds),
        "test_accuracy": statistics.fmean(te), "test_accuracy_sd": statistics.stdev(te) if len(te) > 1 else 0.0,
        "train_accuracy": statistics.fmean(tr), "train_accuracy_sd": statistics.stdev(tr) if len(tr) > 1 else 0.0,
        "test_loss": statistics.fmean(r.test_loss for r in finals),
        "seconds": sum(r.seconds / r.ensemble for h in histories for r in h),
        "diverged": sum(r.diverged for r in finals),
        "per_seed": [{"seed": r.seed, "test_accuracy": r.test_accuracy, "train_accuracy": r.train_accuracy}
                     for r in finals],
    }
    if args.out:
        summary["out"] = str(_store_runs(args.out, experiment, spec, histories, ds.checksums))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{alg.describe()} on {args.dataset}: test accuracy {summary['test_accuracy']:.4f}"
              + (f" (sd {summary['test_accuracy_sd']:.4f})" if len(seeds) > 1 else "")
              + f", train accuracy {summary['train_accuracy']:.4f}, {len(seeds)} seed(s), "
                f"{spec.epochs} epochs, {summary['seconds']:.1f} s")
    return 0


def _store_runs(out, experiment, spec, histories, checksums):
    """Write the runs of `rbp train` as a result store (the format of `rbp run`; `rbp report` reads it)."""
    from .experiments.store import Store
    store = Store(out)
    store.bind(experiment)
    config = experiment.configs[0]
    i = 0
    while i < len(histories):            # train() trains consecutive seeds together, as ensembles
        size = max(1, int(histories[i][0].ensemble)) if histories[i] else 1
        group = histories[i:i + size]
        ensemble = [h[0].seed for h in group if h]
        for h in group:
            if h:
                store.write(experiment, config, h[0].seed, spec, h, ensemble, checksums)
        i += size
    return store.root


def _tensorboard(log_dir):
    """The TensorBoard logger of ``--tensorboard DIR`` (None without it)."""
    if log_dir is None:
        return None
    from .callbacks import TensorBoardLogger
    return TensorBoardLogger(log_dir)


def _cmd_algorithms(args) -> int:
    from .channel.algorithm import ALGORITHMS, DESCRIPTIONS
    for name in ALGORITHMS:
        print(f"{name:{max(map(len, ALGORITHMS))}s}  {DESCRIPTIONS[name]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rbp", description="Random backpropagation and the deep learning channel.")
    p.add_argument("--version", action="version", version=f"rbp {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train networks with an algorithm of the RBP family")
    t.add_argument("--dataset", "-d", default="digits", help="digits (bundled), mnist, fashion-mnist, cifar10")
    add_algorithm_options(t)
    g = t.add_argument_group("protocol (defaults: the dataset's paper protocol, rbp.protocols: MNIST's "
                             "(tanh 784-100-100-100-100-10, SGD lr 0.1, batch 100) or, for cifar10, "
                             "the conv net's (momentum 0.9, lr 0.01, batch 128, augmentation); 100 epochs)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--seeds", type=int, default=1, help="number of networks (seeds SEED, SEED+1, ...)")
    g.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--decay", type=float, default=None, help="lr_t = lr / (1 + decay * t)")
    g.add_argument("--momentum", type=float, default=None)
    g.add_argument("--hidden", type=_int_list, default=None, help="hidden sizes of an mlp, e.g. 100,100")
    g.add_argument("--activation", default=None, help="tanh, relu, logistic or linear")
    g.add_argument("--freeze", type=_int_list, default=None, help="1-based weight layers kept fixed, e.g. 1,2")
    g.add_argument("--model", default=None, help="mlp, convnet (paper 1's CIFAR-10 network), "
                   "lenet or resnet20 (BioTorch's benchmark networks), vit (a small vision transformer)")
    g.add_argument("--optimizer", default=None, choices=["sgd", "adam"],
                   help="sgd (the papers', with --momentum) or adam (same lr decay, momentum 0)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random translations up to 10 %% and horizontal flips (on in the CIFAR-10 protocol)")
    r = t.add_argument_group("running")
    r.add_argument("--device", default="cpu", help="cpu or cuda")
    r.add_argument("--data-dir", default=None, help="where the datasets are (else $RBP_DATA_DIR, the cache)")
    r.add_argument("--out", default=None, help="result store folder, as `rbp run` writes and `rbp report` reads "
                                               "(must not exist or be empty)")
    r.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    r.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="log every network's epochs as TensorBoard scalars under DIR/seed<k> "
                        "(needs pip install 'rbp[tensorboard]')")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-epoch lines")
    r.add_argument("--no-ensemble", action="store_true", help="train the seeds one after another")
    r.add_argument("--driver", default="fused", choices=["fused", "autograd"],
                   help="fused (fast, default) or autograd (same numbers, via loss.backward())")
    t.set_defaults(func=_cmd_train)

    a = sub.add_parser("algorithms", help="list the algorithms")
    a.set_defaults(func=_cmd_algorithms)

    import importlib
    for module in ("rbp.experiments.cli", "rbp.theory.cli", "rbp.bench"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # a part still being built
            if not module.startswith(e.name or "?"):
                raise
            continue
        mod.register(sub)
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except RBPError as e:
        msg = str(e)
        if not msg.startswith("rbp"):
            msg = f"rbp: error: {msg}"
        print(msg.splitlines()[0] if msg else "rbp: error", file=sys.stderr)
        return 2
    except OSError as e:       # the file system refused (disk full, permissions changed mid-run, ...)
        where = f": {e.filename}" if e.filename else ""
        print(f"rbp: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rbp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``rbp theory ...``: the theory workbench on the command line.

:func:`register` adds a ``theory`` subcommand (with its own subcommands) to an
:mod:`argparse` subparsers object; every handler takes the parsed ``args``,
prints human-readable text (or, with ``--json``, one JSON object as the last
stdout line) and returns an exit code: 0 when the simulation agrees with the
theorem, 1 when it does not. Bad input raises :class:`rbp.errors.ConfigError`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["register"]

DEFAULT_WIDTHS = (200, 400, 800, 1600, 3200, 6400, 12800)
DEFAULT_LAMS = (0.0, 0.01, 0.1)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return "[" + ", ".join(f"{x:.10g}" for x in v) + "]"


def _emit(args, result: dict, lines: list[str]) -> int:
    if getattr(args, "json", False):
        print(json.dumps(result, default=_json_default))
    else:
        print("\n".join(lines))
    return 0 if result.get("agree", True) else 1


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _verdict(r: dict) -> list[str]:
    out = []
    if r["status"] == "diverges":
        out.append(f"predicted: {r.get('predicted_outcome', 'no finite limit (Thm 1)')}")
        out.append(f"simulated: {r.get('simulated_outcome')}")
    elif r["status"] == "no fixed point":
        pass
    else:
        out.append(f"predicted fixed point: {_fmt(r['predicted'])}")
        out.append(f"simulated (t = {r['t_final']:.4g}): {_fmt(r['simulated'])}")
        out.append(f"max |predicted - simulated| = {r['max_abs_diff']:.3g} (tol {r['tol']:g})")
    if "invariant_drift" in r:
        out.append(f"largest change of the conserved quantities along the integration: {r['invariant_drift']:.3g}")
    out.append("AGREE" if r["agree"] else "DISAGREE")
    return out


# ---------------------------------------------------------------------------
# handlers
# ---------------------------------------------------------------------------


def _cmd_chain(args) -> int:
    from .checks import check_chain

    a0 = None if args.a0 is None else np.array(args.a0, dtype=float)
    c = None if args.c is None else np.array(args.c, dtype=float)
    r = check_chain(args.depth, args.seed, method=args.method, a0=a0, c=c,
                    alpha=args.alpha, beta=args.beta, tol=args.tol)
    arch = "A(" + ",".join(["1"] * (args.depth + 1)) + ")"
    lines = [f"chain {arch}, {args.depth} forward weights, {args.method.upper()}, seed {args.seed}",
             f"alpha = {r['alpha']:.6g}, beta = {r['beta']:.6g}, a(0) = {_fmt(r['a0'])}"]
    if "c" in r:
        lines.append(f"feedback c = {_fmt(r['c'])} (c_L = 1)")
        lines.append(f"Q(a1) has degree {r['degree']} (Thm 4: 2^L - 1 = {r['expected_degree']}); "
                     f"converges from every start: {'yes' if r['converges_from_everywhere'] else 'no'}")
    lines += _verdict(r)
    return _emit(args, r, lines)


def _cmd_expansive(args) -> int:
    from .checks import check_expansive

    r = check_expansive(args.n, args.seed, method=args.method, tol=args.tol)
    lines = [f"expansive A(1,{args.n},1), {args.method.upper()}, seed {args.seed}",
             f"alpha = {r['alpha']:.6g}, beta = {r['beta']:.6g}"]
    if "degree" in r:
        lines.append(f"Q(a1) has degree {r['degree']} (Thm 5: a cubic)")
    lines.append("state order: a1..aN, b1..bN")
    lines += _verdict(r)
    return _emit(args, r, lines)


def _cmd_autoencoder(args) -> int:
    from .checks import check_autoencoder

    r = check_autoencoder(args.n, args.seed, tol=args.tol)
    lines = [f"autoencoder A({args.n},1,{args.n}), RBP, Sigma_TI = Sigma_II = I, seed {args.seed}",
             f"Lemma 1 constant K = CB - |A|^2/2 = {r['K']:.10g}",
             f"Thm 6: A -> t* C with t* = {r['t_root']:.10g} (positive root of |C|^2 t^3/2 + K t - 1)",
             "state order: A1..AN, B1..BN",
             f"max |BA - C^T C/|C|^2| at the end: {r['product_diff']:.3g}"]
    lines += _verdict(r)
    return _emit(args, r, lines)


def _cmd_general(args) -> int:
    from .checks import check_general

    r = check_general(args.sizes, args.seed, identity=args.identity, tol=args.tol)
    n0, n1, n2 = r["sizes"]
    lines = [f"A({n0},{n1},{n2}), RBP" + (" with Sigma = C1 = I (Thm 10)" if args.identity else "")
             + f", seed {args.seed}",
             "Thm 8: C1 A2 A1 -> C1 Sigma_TI Sigma_II^-1",
             f"predicted C1 A2 A1: {_fmt(r['predicted'])}",
             f"simulated C1 A2 A1 (t = {r['t_final']:.4g}): {_fmt(r['simulated'])}",
             f"max |predicted - simulated| = {r['max_abs_diff']:.3g}",
             f"weights A1, A2 settled individually: {'yes' if r['weights_settled'] else 'no'}",
             f"max |A2 A1 - Sigma_TI Sigma_II^-1| = {r['product_error']:.3g}",
             f"largest change of C1 A2 + (C1 A2)^T - A1 A1^T: {r['invariant_drift']:.3g}",
             "AGREE" if r["agree"] else "DISAGREE"]
    return _emit(args, r, lines)


def _cmd_thm9(args) -> int:
    from .checks import check_theorem9

    r = check_theorem9(args.sizes, args.seed, identity=args.identity, tol=args.tol)
    n0, n1, n2 = r["sizes"]
    iso = ("isolated: yes, so by Thm 9's argument A1 and C1 A2 converge"
           if r["isolated"] else
           "isolated: undecided (the first-order test is inconclusive; Thm 9 then says nothing)")
    lines = [f"A({n0},{n1},{n2}), RBP" + (" with Sigma = C1 = I" if args.identity else "")
             + f", seed {args.seed}",
             "Thm 9 (Eq. 110): X A1 = C1 S_TI S_II^-1, X + X^T - A1 A1^T = K, "
             "X X^T - A1 M^T - M A1^T = L, with X = C1 A2",
             f"V = X X^T - A1 M^T - M A1^T never increased: largest rise {r['lyapunov_increase']:.3g} "
             f"(it fell by up to {r['lyapunov_drop']:.3g})",
             f"end point (t = {r['t_final']:.4g}) solves Eq. 110 to {r['residual']:.3g} "
             f"(K from t = 0, L = V at the end)",
             f"{r['equations'] - r['extra_equations']} equations in {r['unknowns']} unknowns; "
             f"Jacobian rank {r['jacobian_rank_eq110']} "
             f"of the {r['needed_rank']} needed (rank C1 = {r['rank_C1']})"]
    if r["extra_equations"]:
        lines.append(f"with the {r['extra_equations']} conserved entries of A1 outside range(C1) "
                     f"(they moved by {r['range_drift']:.3g}): rank {r['jacobian_rank']}")
    lines += [f"smallest singular value {r['smallest_singular_value']:.3g}",
             iso,
             f"integration: A1 and A2 settled: {'yes' if r['weights_settled'] else 'no'}",
             "AGREE" if r["agree"] else "DISAGREE"]
    return _emit(args, r, lines)


def _cmd_nonlinear(args) -> int:
    from .checks import check_nonlinear

    r = check_nonlinear(args.mu, args.seed, fprime=not args.no_fprime, tol=args.tol)
    m = r["moments"]
    lines = [f"nonlinear A(1,1,1), O = a2 (a1 I)^mu, mu = {args.mu:g}, "
             f"{'with' if r['fprime'] else 'without'} f', seed {args.seed}",
             f"c1 = {r['c1']:.6g}, a(0) = {_fmt(r['a0'])}, I ~ U(0.5, 1.5), T = I: "
             + ", ".join(f"{k} = {v:.6g}" for k, v in m.items())]
    if r["status"] == "no fixed point":
        lines += [
            "no fixed point: da2/dt = 0 needs a2 a1^mu = alpha/beta = "
            f"{r['product_wanted_by_a2']:.6g}, da1/dt = 0 needs gamma/delta = {r['product_wanted_by_a1']:.6g}",
            f"state at t = {r['t_final']:.4g}: {_fmt(r['final_state'])}, |field| = {r['field_norm_final']:.3g} (not settling)",
            f"a1 drifts at rate {r['drift_rate_simulated']:.6g} (predicted c1 (gamma - delta alpha/beta) = "
            f"{r['drift_rate_predicted']:.6g})",
            "AGREE" if r["agree"] else "DISAGREE",
        ]
        return _emit(args, r, lines)
    if not r["fprime"]:
        lines.append("mu = 1: with and without f' are the same (linear) system")
    lines.append("Thm 12: a1 -> positive root of alpha - beta t^mu (t^2/(2 c1 mu) + K)")
    lines += _verdict(r)
    return _emit(args, r, lines)


def _cmd_two_layer(args) -> int:
    from .twolayer import train_two_layer

    _check_two_layer_args(args)
    res = train_two_layer(activation_name=args.activation, width=args.width, lam=args.lam,
                          runs=args.runs, n=args.n, d=args.d, steps=args.steps, eta=args.eta,
                          eta_scale=args.eta_scale, tol=args.tol, algorithm=args.algorithm,
                          target=args.target, seed=args.seed, threads=args.threads)
    s = res.summary()
    lines = [f"two-layer {args.activation} network, width {args.width}, n = {args.n}, d = {args.d}, "
             f"{args.algorithm.upper()}, lambda = {args.lam:g}, {args.runs} run(s), target {args.target}",
             f"step size eta = {res.eta:.4g}, {res.steps} steps, {res.seconds:.1f} s",
             f"alignment cos(b, beta): mean {s['alignment_mean']:.4f}, sd {s['alignment_sd']:.4f}",
             f"training loss 1/2|f - y|^2: mean {s['loss_mean']:.3g}, max {s['loss_max']:.3g}"]
    if s["diverged_runs"]:
        lines.append(f"{s['diverged_runs']} run(s) diverged (step size too large for this lambda)")
    return _emit(args, s, lines)


def _check_two_layer_args(args):
    for name in ("width", "runs", "n", "d"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {v}")
    if args.steps < 0:
        raise ConfigError(f"--steps must be non-negative, got {args.steps}")
    lams = [args.lam] if hasattr(args, "lam") else args.lams
    for lam in lams:
        if lam < 0 or not math.isfinite(lam):
            raise ConfigError(f"lambda must be a non-negative number, got {lam}")
    for w in getattr(args, "widths", None) or []:
        if w < 1:
            raise ConfigError(f"widths must be positive integers, got {w}")


def _write_atomic(path: Path, text: str):
    from ..results import atomic_write
    atomic_write(path, text)


def _cmd_sweep(args) -> int:
    from . import figures
    from .twolayer import train_two_layer

    from .. import paths
    _check_two_layer_args(args)
    out = paths.input_dir(args.out, "--out") if args.replot else paths.output_dir(args.out, "--out")
    records, curves = [], []
    tag = f"{args.activation}_{args.target}"
    data = out / f"sweep_{tag}.json"
    t0 = time.perf_counter()
    if args.replot:
        if not data.is_file():
            raise ConfigError(f"--replot needs {data}, written by an earlier sweep")
        try:
            saved = json.loads(data.read_text())
            records, curves = saved["records"], saved["loss_curves"]
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{data} is not a sweep file: {exc}") from None
        if not records:
            raise ConfigError(f"{data} holds no points yet")
    # widths outer, lambdas inner: a sweep stopped early has every lambda up to some width
    for p in [] if args.replot else sorted(args.widths):
        for lam in args.lams:
            res = train_two_layer(activation_name=args.activation, width=p, lam=lam, runs=args.runs,
                                  n=args.n, d=args.d, steps=args.steps, eta_scale=args.eta_scale,
                                  tol=args.tol, target=args.target, seed=args.seed,
                                  threads=args.threads, record_every=max(1, args.steps // 200))
            s = res.summary()
            records.append(s)
            curves.append({"width": p, "lam": lam, "steps": res.record_steps.tolist(),
                           "loss_mean": np.nanmean(res.loss_curve, axis=1).tolist()})
            # the data so far, after every point: a long sweep that is stopped keeps what it did
            _write_atomic(data, json.dumps({"records": records, "loss_curves": curves}, default=_json_default))
            if not args.json:
                print(f"lambda={lam:<6g} width={p:<6d} alignment {s['alignment_mean']:.4f} "
                      f"+- {s['alignment_sd']:.4f}  loss {s['loss_mean']:.3g}  steps {s['steps']}  "
                      f"{s['seconds']:.1f} s", flush=True)
    f1 = figures.two_layer_alignment(out / f"alignment_{tag}.png", records, activation=args.activation)
    done_widths = [r["width"] for r in records]
    ends = (min(done_widths), max(done_widths))
    sel = [(f"p={cv['width']}, lambda={cv['lam']:g}", cv["steps"], cv["loss_mean"])
           for cv in curves if cv["width"] in ends]
    f2 = figures.two_layer_loss_curves(out / f"loss_{tag}.png", sel, activation=args.activation)
    result = {"records": records, "files": [str(data), str(f1), str(f2)],
              "seconds": round(time.perf_counter() - t0, 1)}
    lines = [f"wrote {data}, {f1}, {f2} ({result['seconds']} s)"]
    return _emit(args, result, lines)


def _cmd_mnist(args) -> int:
    from . import figures
    from .mnist import train_mnist_fa

    import torch

    from ..data import load

    torch.set_num_threads(args.threads)
    for lam in args.lams:
        if lam < 0 or not math.isfinite(lam):
            raise ConfigError(f"lambda must be a non-negative number, got {lam}")
    if args.epochs < 1 or args.seeds < 1 or args.hidden < 1:
        raise ConfigError("--epochs, --seeds and --hidden must be positive integers")
    from .. import paths
    if args.data_dir is not None:
        paths.input_dir(args.data_dir, "--data-dir")
    if args.out:
        paths.output_dir(args.out, "--out")
    ds = load("mnist", data_dir=args.data_dir, download=False)
    groups = [("rbp", lam) for lam in args.lams] + ([("bp", 0.0)] if args.bp else [])
    rows, t0 = [], time.perf_counter()
    for alg, lam in groups:
        def show(recs, alg=alg, lam=lam):
            rows.extend(recs)
            if not args.json:
                acc = np.mean([r["test_accuracy"] for r in recs])
                al = [r["alignment"] for r in recs if r["alignment"] is not None]
                print(f"{alg:<4} lambda={lam:<6g} epoch {recs[0]['epoch']:>3}  test accuracy {100 * acc:.2f} %"
                      + (f"  cos(B, W_out) {np.mean(al):.3f}" if al else "")
                      + f"  |W_out| {np.mean([r['out_norm'] for r in recs]):.3g}  {recs[0]['seconds']:.1f} s",
                      flush=True)
        train_mnist_fa(lam, algorithm=alg, hidden=args.hidden, epochs=args.epochs,
                       seeds=range(args.seed, args.seed + args.seeds), lr=args.lr, dataset=ds,
                       max_steps=args.max_steps, on_epoch=show)
    summary = []
    last = max(r["epoch"] for r in rows)
    for alg, lam in groups:
        fin = [r for r in rows if r["algorithm"] == alg and r["lam"] == lam and r["epoch"] == last]
        acc = np.array([r["test_accuracy"] for r in fin])
        al = np.array([r["alignment"] for r in fin if r["alignment"] is not None])
        summary.append({"algorithm": alg, "lam": lam, "epochs": last, "seeds": len(fin),
                        "test_accuracy_mean": float(acc.mean()),
                        "test_accuracy_sd": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                        "alignment_mean": float(al.mean()) if al.size else None,
                        "alignment_sd": float(al.std(ddof=1)) if al.size > 1 else (0.0 if al.size else None)})
    result = {"summary": summary, "seconds": round(time.perf_counter() - t0, 1)}
    lines = ["final (mean +- sd over seeds):"]
    for s_ in summary:
        line = (f"  {s_['algorithm']:<4} lambda={s_['lam']:<6g} test accuracy {100 * s_['test_accuracy_mean']:.2f}"
                f" +- {100 * s_['test_accuracy_sd']:.2f} %")
        if s_["alignment_mean"] is not None:
            line += f"  cos(B, W_out) {s_['alignment_mean']:.3f} +- {s_['alignment_sd']:.3f}"
        lines.append(line)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = out / "mnist_fa.json"
        _write_atomic(data, json.dumps({"rows": rows, **result}, default=_json_default))
        png = figures.mnist_fa(out / "mnist_fa.png", rows)
        result["files"] = [str(data), str(png)]
        lines.append(f"wrote {data}, {png}")
    lines.append(f"{result['seconds']} s")
    return _emit(args, result, lines)


def _cmd_figures(args) -> int:
    from .. import paths
    paths.output_dir(args.out, "--out")
    from . import figures

    files = [str(p) for p in figures.make_all(args.out, seed=args.seed)]
    return _emit(args, {"files": files}, ["wrote " + f for f in files])


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


def _common(p, *, seed=True, tol=True):
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if tol:
        p.add_argument("--tol", type=float, default=1e-6,
                       help="largest accepted |predicted - simulated| (default 1e-6)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _two_layer_options(p, *, steps=10000):
    p.add_argument("--activation", default="relu", choices=["linear", "relu", "tanh", "sigmoid"])
    p.add_argument("--runs", type=int, default=5, help="independent runs, trained as one batch (default 5)")
    p.add_argument("--n", type=int, default=50, help="training samples (default 50)")
    p.add_argument("--d", type=int, default=150, help="input dimension (default 150)")
    p.add_argument("--steps", type=int, default=steps,
                   help=f"largest number of full-batch steps (default {steps})")
    p.add_argument("--eta-scale", type=float, default=None,
                   help="step size as a multiple of 1/lambda_max of the initial output kernel "
                        "(default 1.8 for lambda = 0, 0.2 for lambda > 0)")
    p.add_argument("--tol", type=float, default=1e-18,
                   help="stop once every run's loss is below this (default 1e-18)")
    p.add_argument("--target", default="linear", choices=["linear", "teacher"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: faster than 2 on a busy 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``theory`` command (and its subcommands) to ``subparsers``."""
    theory = subparsers.add_parser(
        "theory", help="learning dynamics of linear networks (paper 1, sec. 7) and two-layer FA (paper 3)",
        description="Integrate the averaged learning equations and compare with the theorems.")
    sub = theory.add_subparsers(dest="theory_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("chain", help="A(1,...,1): predicted vs integrated fixed point (Thms 1-4)")
    p.add_argument("--depth", type=int, required=True, help="number of forward weights L")
    p.add_argument("--method", default="rbp", choices=["rbp", "srbp", "gd"])
    p.add_argument("--a0", type=float, nargs="+", help="starting weights (L values)")
    p.add_argument("--c", type=float, nargs="+", help="feedback weights c_1..c_{L-1}")
    p.add_argument("--alpha", type=float, help="E[IT]")
    p.add_argument("--beta", type=float, help="E[I^2]")
    _common(p)
    p.set_defaults(func=_cmd_chain)

    p = sub.add_parser("expansive", help="A(1,N,1): the cubic of Thm 5")
    p.add_argument("--n", type=int, default=3, help="hidden units N (default 3)")
    p.add_argument("--method", default="rbp", choices=["rbp", "srbp", "gd"])
    _common(p)
    p.set_defaults(func=_cmd_expansive)

    p = sub.add_parser("autoencoder", help="A(N,1,N): Lemma 1 and Thm 6 (A -> t* C)")
    p.add_argument("--n", type=int, default=5, help="input/output size N (default 5)")
    _common(p)
    p.set_defaults(func=_cmd_autoencoder)

    p = sub.add_parser("general", help="A(N0,N1,N2): Thms 7-8; with --identity A(N,N,N), Thm 10")
    p.add_argument("--sizes", type=int, nargs=3, default=[3, 4, 3], metavar=("N0", "N1", "N2"))
    p.add_argument("--identity", action="store_true", help="Sigma_TI = Sigma_II = C1 = I")
    _common(p)
    p.set_defaults(func=_cmd_general)

    p = sub.add_parser("thm9", help="A(N0,N1,N2): the limit solves Eq. 110 and is isolated (Thm 9)")
    p.add_argument("--sizes", type=int, nargs=3, default=[3, 4, 3], metavar=("N0", "N1", "N2"))
    p.add_argument("--identity", action="store_true", help="Sigma_TI = Sigma_II = C1 = I")
    _common(p)
    p.set_defaults(func=_cmd_thm9)

    p = sub.add_parser("nonlinear", help="A(1,1,1) with a power unit: Thm 12, or no fixed point without f'")
    p.add_argument("--mu", type=float, required=True, help="power of the hidden unit")
    p.add_argument("--no-fprime", action="store_true", help="omit the derivative of the hidden unit")
    _common(p)
    p.set_defaults(func=_cmd_nonlinear)

    p = sub.add_parser("two-layer", help="two-layer feedback alignment (Song, Xu & Lafferty 2021)")
    p.add_argument("--width", type=int, default=3200, help="hidden width p (default 3200)")
    p.add_argument("--lam", type=float, default=0.0, help="ridge penalty on the output weights")
    p.add_argument("--eta", type=float, default=None, help="explicit step size (overrides --eta-scale)")
    p.add_argument("--algorithm", default="fa", choices=["fa", "bp"])
    _two_layer_options(p, steps=20000)
    p.set_defaults(func=_cmd_two_layer)

    p = sub.add_parser("sweep", help="alignment vs width for several lambda; writes JSON and PNGs")
    p.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS))
    p.add_argument("--lams", type=float, nargs="+", default=list(DEFAULT_LAMS))
    p.add_argument("--out", default="docs/img/theory", help="output folder (default docs/img/theory)")
    p.add_argument("--replot", action="store_true",
                   help="train nothing: draw the figures from the sweep JSON already in --out "
                        "(which is rewritten after every point, so a stopped sweep can be drawn)")
    _two_layer_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("mnist", help="paper 3's MNIST net (784-1000-10 ReLU), feedback alignment with a "
                                     "penalty on the output weights")
    p.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.01, 0.1],
                   help="penalties on the output weights (default 0 0.01 0.1)")
    p.add_argument("--bp", action="store_true", help="also train with backpropagation (lambda = 0) for reference")
    p.add_argument("--hidden", type=int, default=1000, help="hidden ReLU units (default 1000)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2, help="networks per configuration, trained as one ensemble")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, default=None, help="minibatches per epoch (default: all)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (else $RBP_DATA_DIR, cache)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", default=None, help="folder for mnist_fa.json and mnist_fa.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_mnist)

    p = sub.add_parser("figures", help="draw the ODE figures (vector field, trajectories) as PNGs")
    p.add_argument("--out", default="docs/img/theory", help="output folder (default docs/img/theory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_figures)
    return theory

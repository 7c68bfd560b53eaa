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


def _train_kwargs(args) -> dict:
    """The keyword arguments of :func:`train_two_layer` shared by ``two-layer`` and ``sweep``."""
    return dict(activation_name=args.activation, protocol=args.protocol, runs=args.runs, n=args.n,
                d=args.d, steps=args.steps, min_steps=args.min_steps, check_every=args.check_every,
                change_tol=args.change_tol, tol=args.tol, eta=args.eta, eta_scale=args.eta_scale,
                algorithm=args.algorithm, target=args.target, seed=args.seed, first_run=args.first_run,
                dtype=args.dtype, threads=args.threads)


def _outcome_line(s: dict) -> str:
    line = (f"runs: {s['converged_runs']} stopped by the rule, {s['capped_runs']} at the step limit, "
            f"{s['diverged_runs']} diverged")
    if s["diverged_runs"]:
        line += " (non-finite loss; left out of the means)"
    return line


def _cmd_two_layer(args) -> int:
    from .twolayer import train_two_layer

    _check_two_layer_args(args)
    res = train_two_layer(width=args.width, lam=args.lam, **_train_kwargs(args))
    s = res.summary()
    eta = s["eta"] if isinstance(s["eta"], float) else s["eta"][1]
    rule = (f"at least {s['rule_min_steps']} steps, then until the loss changes by < {s['rule_change_tol']:g} "
            f"between checks {s['rule_check_every']} steps apart" if s["rule_check_every"] else
            f"until the loss is below {s['rule_loss_tol']:g}")
    lines = [f"two-layer {args.activation} network ({s['protocol']} protocol), width {args.width}, "
             f"n = {args.n}, d = {args.d}, {args.algorithm.upper()}, lambda = {args.lam:g}, "
             f"{args.runs} run(s), target {s['target']}, {s['dtype']}",
             f"step size {'eta' if isinstance(s['eta'], float) else 'largest eta'} = {eta:.4g}; {rule} "
             f"(at most {s['rule_max_steps']}); {s['steps_min']}-{s['steps']} steps, {res.seconds:.1f} s",
             _outcome_line(s)]
    loss_name = "(1/n)|f - y|^2" if s["loss"] == "mse" else "1/2|f - y|^2"
    if s["alignment_mean"] is None:
        lines.append("no run finished with a finite loss: no alignment to report")
    else:
        lines += [f"alignment cos(b, beta): mean {s['alignment_mean']:.4f}, sd {s['alignment_sd']:.4f}",
                  f"training loss {loss_name}: mean {s['loss_mean']:.3g}, max {s['loss_max']:.3g}"]
    return _emit(args, s, lines)


def _check_two_layer_args(args):
    for name in ("width", "runs", "n", "d"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {v}")
    for name in ("steps", "min_steps", "check_every", "first_run"):
        v = getattr(args, name, None)
        if v is not None and v < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be non-negative, got {v}")
    lams = [args.lam] if hasattr(args, "lam") else (args.lams or [])
    for lam in lams:
        if lam < 0 or not math.isfinite(lam):
            raise ConfigError(f"lambda must be a non-negative number, got {lam}")
    for w in getattr(args, "widths", None) or []:
        if w < 1:
            raise ConfigError(f"widths must be positive integers, got {w}")


def _write_atomic(path: Path, text: str):
    from ..results import atomic_write
    atomic_write(path, text)


def _sweep_tag(protocol: str, activation: str, target: str | None) -> str:
    from .twolayer import PROTOCOLS, default_target

    default = default_target(PROTOCOLS[protocol], activation)
    tag = activation if (target or default) == default else f"{activation}_{target}"
    return tag if protocol == "authors" else f"{tag}_{protocol}"


def _load_sweep(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
        saved["records"], saved["loss_curves"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a sweep file: {exc}") from None
    return saved


def _sweep_figures(out: Path, figdir: Path, protocol: str) -> list[Path]:
    """The alignment and loss figures of every sweep file of ``protocol`` in ``out`` (one panel each)."""
    from . import figures
    from .twolayer import ACTIVATIONS

    found = []
    for f in sorted(out.glob("sweep_*.json")):
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("protocol", "normalised") == protocol and saved.get("records"):
            found.append(saved)
    order = {a: i for i, a in enumerate(ACTIVATIONS)}
    found.sort(key=lambda s: (order.get(s.get("activation"), 9), s.get("target", "")))
    if not found:
        return []
    panels = [(s["activation"], s.get("target", ""), s["records"], s["loss_curves"]) for s in found]
    return [figures.two_layer_alignment_panels(figdir / f"alignment_{protocol}.png", panels, protocol=protocol),
            figures.two_layer_loss_panels(figdir / f"loss_{protocol}.png", panels, protocol=protocol)]


def _cmd_sweep(args) -> int:
    from .twolayer import PROTOCOLS, train_two_layer

    from .. import paths
    _check_two_layer_args(args)
    proto = PROTOCOLS[args.protocol]
    out = paths.input_dir(args.out, "--out") if args.replot else paths.output_dir(args.out, "--out")
    figdir = paths.output_dir(args.figures, "--figures") if args.figures else out
    tag = _sweep_tag(args.protocol, args.activation, args.target)
    data = out / f"sweep_{tag}.json"
    t0 = time.perf_counter()
    if args.replot:
        if not data.is_file():
            raise ConfigError(f"--replot needs {data}, written by an earlier sweep")
        if not _load_sweep(data)["records"]:
            raise ConfigError(f"{data} holds no points yet")
    else:
        out.mkdir(parents=True, exist_ok=True)
        records, curves = [], []
        if args.append and data.is_file():
            saved = _load_sweep(data)
            records, curves = saved["records"], saved["loss_curves"]
            from .twolayer import default_target, target_form
            form = target_form(proto, args.target or default_target(proto, args.activation))
            old = {r.get("target_form", "psi(X U^T) v, no 1/sqrt(p)" if r.get("target") == "teacher"
                         and saved.get("protocol") == "authors" else form) for r in records}
            if old - {form}:
                raise ConfigError(f"{data} holds points whose targets were drawn as {sorted(old - {form})[0]}, "
                                  f"not {form}; sweep without --append to start the file again")
        if args.runs is None:
            args.runs = proto.runs
        lams = args.lams if args.lams is not None else list(proto.lams[args.activation])
        # widths outer, lambdas inner: a sweep stopped early has every lambda up to some width
        for p in sorted(args.widths):
            for lam in lams:
                res = train_two_layer(width=p, lam=lam, record_every=args.record_every, **_train_kwargs(args))
                s = res.summary()
                key = (p, lam)
                keep = [i for i, r in enumerate(records) if (r["width"], r["lam"]) != key]
                records = [records[i] for i in keep] + [s]
                curves = [c for c in curves if (c["width"], c["lam"]) != key]
                filled = res.filled_loss_curve()
                ok = ~res.diverged
                mean = np.mean(filled[:, ok], axis=1) if ok.any() else np.full(len(filled), np.nan)
                curves.append({"width": p, "lam": lam, "steps": res.record_steps.tolist(),
                               "loss_mean": [None if not math.isfinite(v) else float(v) for v in mean]})
                # the data so far, after every point: a long sweep that is stopped keeps what it did
                _write_atomic(data, json.dumps({"protocol": args.protocol, "activation": args.activation,
                                                "target": s["target"], "records": records,
                                                "loss_curves": curves}, default=_json_default))
                if not args.json:
                    al = ("-" if s["alignment_mean"] is None else
                          f"{s['alignment_mean']:.4f} +- {s['alignment_sd']:.4f}")
                    lo = "-" if s["loss_mean"] is None else f"{s['loss_mean']:.3g}"
                    print(f"lambda={lam:<6g} width={p:<6d} alignment {al}  loss {lo}  "
                          f"steps {s['steps_min']}-{s['steps']}  diverged {s['diverged_runs']}/{s['runs']}  "
                          f"{s['seconds']:.1f} s", flush=True)
    files = [data, *_sweep_figures(out, figdir, args.protocol)]
    result = {"records": _load_sweep(data)["records"], "files": [str(f) for f in files],
              "seconds": round(time.perf_counter() - t0, 1)}
    lines = [f"wrote {', '.join(str(f) for f in files)} ({result['seconds']} s)"]
    if args.replot:
        lines += ["", *_sweep_table(result["records"])]
    return _emit(args, result, lines)


def _sweep_table(records) -> list[str]:
    """A markdown table of a sweep: alignment mean +- sd (runs; diverged runs) per width and lambda."""
    widths = sorted({r["width"] for r in records})
    lams = sorted({r["lam"] for r in records})
    cell = {(r["width"], r["lam"]): r for r in records}
    out = ["| p | " + " | ".join(f"lambda = {lam:g}" for lam in lams) + " |",
           "|---|" + "---|" * len(lams)]
    for w in widths:
        row = []
        for lam in lams:
            r = cell.get((w, lam))
            if r is None:
                row.append("")
                continue
            ok = r["runs"] - r["diverged_runs"]
            al = ("-" if r["alignment_mean"] is None else f"{r['alignment_mean']:.3f}" if ok == 1 else
                  f"{r['alignment_mean']:.3f} ± {r['alignment_sd']:.3f}")
            note = f"{r['runs']}" + (f"; {r['diverged_runs']} div." if r["diverged_runs"] else "")
            row.append(f"{al} ({note})")
        out.append(f"| {w} | " + " | ".join(row) + " |")
    return out


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


def _two_layer_options(p):
    p.add_argument("--activation", default="relu", choices=["linear", "relu", "tanh", "sigmoid"])
    p.add_argument("--protocol", default="authors", choices=["authors", "normalised"],
                   help="authors (default): Song, Xu & Lafferty's simulation protocol (x ~ N(0, I), their "
                        "targets, mean squared error, fixed step per activation, their stopping rule); "
                        "normalised: x ~ N(0, I/d), 1/2|e|^2, kernel-scaled step, run to loss 1e-18")
    p.add_argument("--algorithm", default="fa", choices=["fa", "bp"])
    p.add_argument("--n", type=int, default=50, help="training samples (default 50)")
    p.add_argument("--d", type=int, default=150, help="input dimension (default 150)")
    p.add_argument("--steps", type=int, default=None,
                   help="largest number of full-batch steps per run (default 400000 authors, 20000 normalised)")
    p.add_argument("--min-steps", type=int, default=None,
                   help="least number of steps (default: 5000 sqrt(p/200) authors, 0 normalised)")
    p.add_argument("--check-every", type=int, default=None,
                   help="steps between the loss-change checks (default 1000 authors, 0 = none normalised)")
    p.add_argument("--change-tol", type=float, default=None,
                   help="stop once the loss changed by less than this between two checks (default 0.001)")
    p.add_argument("--tol", type=float, default=None,
                   help="stop once the loss is below this (default 1e-18 normalised, none authors)")
    p.add_argument("--eta", type=float, default=None,
                   help="fixed step size (default: authors 1e-3 linear, 1e-2 relu, 0.1 tanh and sigmoid)")
    p.add_argument("--eta-scale", type=float, default=None,
                   help="step as a multiple of 1/lambda_max of each run's initial tangent kernel "
                        "(the normalised protocol's default: 1.8 for lambda = 0, 0.2 for lambda > 0)")
    p.add_argument("--target", default=None, choices=["linear", "teacher"],
                   help="default: authors: y = X theta for linear units, a random teacher of the same width "
                        "and activation otherwise; normalised: linear")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                   help="precision of the p-sized tensors (default float64; linear units always use float64)")
    p.add_argument("--first-run", type=int, default=0,
                   help="index of the first run (each run's draws depend on (seed, run index) only)")
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
    p.add_argument("--lam", type=float, default=0.0, help="ridge penalty on the output weights (default 0)")
    p.add_argument("--runs", type=int, default=5, help="independent runs, trained in batches (default 5)")
    _two_layer_options(p)
    p.set_defaults(func=_cmd_two_layer)

    p = sub.add_parser("sweep", help="alignment vs width for several lambda; writes JSON and PNGs")
    p.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS),
                   help="default: the authors' 200 400 ... 12800")
    p.add_argument("--lams", type=float, nargs="+", default=None,
                   help="default: the authors' grid for the activation (linear 0 0.2 0.3 0.5, relu 0 0.02 0.05 "
                        "0.2, tanh 0 0.001 0.002 0.005, sigmoid 0 0.001 0.003 0.01; normalised 0 0.01 0.1)")
    p.add_argument("--runs", type=int, default=None,
                   help="runs per point (default: 50 as in the paper, 5 normalised); the full authors' grid "
                        "takes many CPU-hours, see docs/theory.md")
    p.add_argument("--out", default="results/theory/paper3",
                   help="folder for sweep_<activation>.json (default results/theory/paper3)")
    p.add_argument("--figures", default=None,
                   help="folder for the PNGs (default: --out); one panel per sweep file of the protocol in --out")
    p.add_argument("--append", action="store_true",
                   help="keep the points already in the sweep file (a point trained again replaces its record)")
    p.add_argument("--record-every", type=int, default=100, help="steps between loss-curve records (default 100)")
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

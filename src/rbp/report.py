"""The report of an experiment: our numbers beside the paper's, and the curves.

``write_report(DIR)`` reads a result store (:mod:`rbp.experiments.store`) and
writes into it

* ``report.md``: the final test accuracy of every configuration, mean (sd) over
  seeds, beside the paper's number (Table 1) with the difference and a flag
  where we fall outside the paper's spread; alignment at the last epoch;
  provenance (versions, data checksums, compute time);
* ``figures/NN-GROUP-accuracy.png``: the paper's layout, training accuracy in
  the upper panel and test accuracy in the lower panel, per epoch, one line per
  configuration (mean over seeds, band = +-1 sd), the paper's final test
  accuracy as a dotted line where it gives one;
* ``figures/NN-GROUP-alignment.png``: the alignment figures of
  :mod:`rbp.diagnostics` per hidden layer and epoch;
* ``figures/NN-GROUP-settling.png`` (runs that record them, e.g. paper 2's
  symmetry experiments): the relative change per epoch of every weight layer
  and adaptive feedback matrix (:class:`rbp.diagnostics.Settling`), log scale;
* ``figures/overview.png`` (experiments with paper numbers): ours against the
  paper's, one line per configuration;
* ``results.csv``: the tidy rows, one per run and epoch.

*Outside the paper's spread* means |ours - paper| > 2 x the paper's sd over its
5 runs; where the paper reports a single run, > 2 x our own sd over seeds
(no flag with fewer than two seeds).  sd is the sample standard deviation.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from .errors import ConfigError
from .results import atomic_file, atomic_path, atomic_write

_ALIGN = re.compile(r"^(signal_angle|update_angle|feedback_angle|feedback_norm_ratio)_(\d+)$")
_ALIGN_TITLES = {"signal_angle": "signal angle to BP's delta (deg)",
                 "update_angle": "update angle to the gradient (deg)",
                 "feedback_angle": "feedback angle, C vs W (deg)"}
_SETTLE = re.compile(r"^(weight_change|feedback_change)_(\d+)$")
_SETTLE_TITLES = {"weight_change": ("forward weights", "weight layer"),
                  "feedback_change": ("adaptive feedback", "feedback to hidden layer")}
_INPUT_DIM = {"digits": 64, "mnist": 784, "fashion-mnist": 784}
PAPER_EPOCHS = 100


def _mean_sd(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def _fmt(mean, sd=math.nan, digits=2):
    if mean is None or not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ({sd:.{digits}f})" if sd is not None and math.isfinite(sd) else "")


def flag(ours_mean, ours_sd, paper_mean, paper_sd):
    """('outside' | 'ok' | 'n/a', tolerance) by the rule in the module docstring (all in %)."""
    if paper_mean is None or not math.isfinite(ours_mean):
        return "n/a", math.nan
    tol = 2 * paper_sd if paper_sd is not None else (2 * ours_sd if math.isfinite(ours_sd) else math.nan)
    if not math.isfinite(tol):
        return "n/a", tol
    return ("outside" if abs(ours_mean - paper_mean) > tol + 1e-9 else "ok"), tol


# ----------------------------------------------------------------------------- aggregation

class Summary:
    """Per configuration: its metadata, its runs, curves and final numbers."""

    def __init__(self, meta, docs):
        self.meta = meta
        self.id = meta["id"]
        self.label = meta.get("label") or self.id
        self.docs = docs
        self.seeds = sorted(d["seed"] for d in docs)
        finals = [d["history"][-1] for d in docs]
        self.test = _mean_sd([100 * _num(r["test_accuracy"]) for r in finals])
        self.train = _mean_sd([100 * _num(r["train_accuracy"]) for r in finals])
        self.epochs = max((len(d["history"]) for d in docs), default=0)
        self.planned_epochs = max((d["spec"].get("epochs", 0) for d in docs), default=0)
        self.diverged = sum(bool(d.get("diverged")) for d in docs)
        self.diverged_at = sorted((d["seed"], _diverged_epoch(d)) for d in docs if d.get("diverged"))
        self.sec = _mean_sd([_num(r["seconds"]) / max(1, int(r.get("ensemble") or 1))
                             for d in docs for r in d["history"]])[0]

    def curve(self, key, scale=1.0):
        """(epochs, mean, sd) of ``key`` over seeds, epoch by epoch."""
        by_epoch = defaultdict(list)
        for d in self.docs:
            for r in d["history"]:
                v = _num(r.get(key))
                if math.isfinite(v):
                    by_epoch[int(r["epoch"])].append(scale * v)
        xs = sorted(by_epoch)
        ms = [_mean_sd(by_epoch[x]) for x in xs]
        return xs, [m for m, _ in ms], [0.0 if not math.isfinite(s) else s for _, s in ms]

    def align_keys(self):
        keys = {k for d in self.docs for r in d["history"] for k in r if _ALIGN.match(k)}
        return sorted(keys, key=lambda k: (_ALIGN.match(k).group(1), int(_ALIGN.match(k).group(2))))


def _num(v):
    return math.nan if v is None else float(v)


def _diverged_epoch(doc):
    """The epoch at which a stored run diverged (older run files lack ``diverged_epoch``)."""
    if doc.get("diverged_epoch") is not None:
        return doc["diverged_epoch"]
    return next((r.get("epoch") for r in doc["history"] if r.get("diverged")), None)


def _diverged_text(s):
    if not s.diverged:
        return ""
    epochs = sorted({e for _, e in s.diverged_at if e is not None})
    at = f" at epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}" if epochs else ""
    return f" ({s.diverged} of {len(s.seeds)} diverged{at})"


def summarize(directory):
    """(experiment or None, [Summary] in display order, ids not run yet, problems)."""
    from .experiments.store import Store
    store = Store(directory)
    if not store.runs.is_dir() and not (store.root / "experiment.toml").is_file():
        raise ConfigError(f"{directory} is not a result store of `rbp run` (no runs/ folder)")
    docs, problems = store.load()
    exp = store.experiment()
    by_id = defaultdict(list)
    for d in docs:
        by_id[d["config"]["id"]].append(d)
    metas = {}
    if exp is not None:
        for c in exp.configs:
            metas[c.id] = c.meta()
    for cid, ds in by_id.items():
        metas.setdefault(cid, dict(ds[-1]["config"], order=10_000 + ds[-1]["config"].get("order", 0)))
    order = sorted(metas, key=lambda c: metas[c].get("order", 0))
    summaries = [Summary(metas[c], by_id[c]) for c in order if by_id.get(c)]
    missing = [c for c in order if not by_id.get(c)]
    return exp, summaries, missing, problems


# ----------------------------------------------------------------------------- figures

def _figure(nrows, ncols, w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _colors(n):
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _marker(s):
    return "o" if s.epochs <= 12 else None


def accuracy_figure(path, title, summaries):
    """Training accuracy (upper panel) and test accuracy (lower panel) per epoch."""
    fig, ax = _figure(2, 1, 11.5, 7.5)
    colors = _colors(len(summaries))
    paper_drawn = False
    for s, c in zip(summaries, colors):
        for panel, key in ((ax[0][0], "train_accuracy"), (ax[1][0], "test_accuracy")):
            xs, m, sd = s.curve(key, 100)
            if not xs:
                continue
            n = len(s.seeds)
            panel.plot(xs, m, color=c, marker=_marker(s), ms=3, lw=1.6,
                       label=f"{s.label} ({n} seed{'s' if n > 1 else ''})")
            if n > 1:
                panel.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                                   color=c, alpha=0.18, lw=0)
        pm = s.meta.get("paper_mean")
        if pm is not None:
            ax[1][0].axhline(pm, color=c, ls=":", lw=1.3,
                             label=None if paper_drawn else "dotted: paper's final test accuracy")
            paper_drawn = True
    ax[0][0].set_title(f"{title}\ntraining accuracy (mean over seeds, band = ±1 sd)", fontsize=11)
    ax[1][0].set_title("test accuracy", fontsize=11)
    for a, name in ((ax[0][0], "training accuracy (%)"), (ax[1][0], "test accuracy (%)")):
        a.set_ylabel(name)
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        a.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = ax[0][0].get_legend_handles_labels()
    extra = [(h, l) for h, l in zip(*ax[1][0].get_legend_handles_labels()) if l.startswith("dotted")]
    for h, l in extra:
        handles.append(h)
        labels.append(l)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def alignment_figure(path, title, summaries):
    """Alignment figures per hidden layer (columns) and kind (rows); None when nothing to draw."""
    keys = sorted({k for s in summaries for k in s.align_keys()})
    kinds = [k for k in _ALIGN_TITLES if any(_ALIGN.match(x).group(1) == k for x in keys)]
    layers = sorted({int(_ALIGN.match(k).group(2)) for k in keys})
    drawable = [(kind, h) for kind in kinds for h in layers
                if any(s.curve(f"{kind}_{h}")[0] for s in summaries)]
    kinds = [k for k in kinds if any(k == kk for kk, _ in drawable)]
    if not kinds:
        return None
    fig, ax = _figure(len(kinds), len(layers), 3.2 * len(layers) + 1, 2.6 * len(kinds) + 1.2)
    colors = _colors(len(summaries))
    for i, kind in enumerate(kinds):
        for j, h in enumerate(layers):
            a = ax[i][j]
            for s, c in zip(summaries, colors):
                xs, m, _ = s.curve(f"{kind}_{h}")
                if xs:
                    a.plot(xs, m, color=c, marker=_marker(s), ms=3, lw=1.4, label=s.label)
            a.axhline(90, color="grey", ls="--", lw=0.8)
            a.set_ylim(-3, max(100, a.get_ylim()[1]))
            a.set_title(f"hidden layer {h}", fontsize=9)
            a.set_xlabel("epoch", fontsize=8)
            a.xaxis.get_major_locator().set_params(integer=True)
            if j == 0:
                a.set_ylabel(_ALIGN_TITLES[kind], fontsize=8)
            a.grid(alpha=0.3)
    _shared_legend(fig, ax)
    fig.suptitle(f"{title}: alignment with backpropagation (mean over seeds; 90° = chance, dashed)", fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _shared_legend(fig, ax):
    """One legend below the panels with every label that any panel drew, once."""
    handles, labels = [], []
    for row in ax:
        for a in row:
            for hd, lb in zip(*a.get_legend_handles_labels()):
                if lb not in labels:
                    handles.append(hd)
                    labels.append(lb)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)


def settling_figure(path, title, summaries):
    """Relative change per epoch of each weight layer / adaptive feedback matrix; None when not recorded."""
    keys = {k for s in summaries for d in s.docs for r in d["history"] for k in r if _SETTLE.match(k)}
    kinds = [k for k in _SETTLE_TITLES if any(_SETTLE.match(x).group(1) == k for x in keys)]
    if not kinds:
        return None
    layers = {k: sorted({int(_SETTLE.match(x).group(2)) for x in keys if _SETTLE.match(x).group(1) == k})
              for k in kinds}
    ncols = max(len(v) for v in layers.values())
    fig, ax = _figure(len(kinds), ncols, 3.2 * ncols + 1, 2.7 * len(kinds) + 1.3)
    colors = _colors(len(summaries))
    for i, kind in enumerate(kinds):
        what, unit = _SETTLE_TITLES[kind]
        for j in range(ncols):
            a = ax[i][j]
            if j >= len(layers[kind]):
                a.set_visible(False)
                continue
            n = layers[kind][j]
            for s, c in zip(summaries, colors):
                xs, m, _ = s.curve(f"{kind}_{n}")
                pts = [(x, v) for x, v in zip(xs, m) if v > 0]
                if pts:
                    a.plot(*zip(*pts), color=c, marker=_marker(s), ms=3, lw=1.4, label=s.label)
            a.set_yscale("log")
            a.set_title(f"{what}: {unit} {n}", fontsize=9)
            a.set_xlabel("epoch", fontsize=8)
            a.xaxis.get_major_locator().set_params(integer=True)
            if j == 0:
                a.set_ylabel("||ΔW|| / ||W|| per epoch" if kind == "weight_change" else "||ΔC|| / ||C|| per epoch",
                             fontsize=8)
            a.grid(alpha=0.3, which="both")
    _shared_legend(fig, ax)
    fig.suptitle(f"{title}: do the learning equations settle? relative change of each matrix over one epoch "
                 "(mean over seeds; falling = settling)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def overview_figure(path, title, summaries):
    """Final test accuracy, ours (mean +- sd) against the paper's, one line per configuration."""
    rows = [s for s in summaries if s.meta.get("paper_mean") is not None]
    if not rows:
        return None
    fig, ax = _figure(1, 1, 9, 2.2 + 0.27 * len(rows))
    a = ax[0][0]
    ys = list(range(len(rows)))[::-1]
    for y, s in zip(ys, rows):
        m, sd = s.test
        pm, psd = s.meta["paper_mean"], s.meta.get("paper_sd")
        a.errorbar([pm], [y + 0.15], xerr=[[psd or 0], [psd or 0]], fmt="x", color="black", ms=5, capsize=2,
                   label="paper (sd over 5 runs, if given)" if y == ys[0] else None)
        a.errorbar([m], [y - 0.15], xerr=[[0 if not math.isfinite(sd) else sd]] * 2, fmt="o", color="tab:blue",
                   ms=4, capsize=2, label=f"ours ({s.epochs} epochs, mean ± sd)" if y == ys[0] else None)
    a.set_yticks(ys, [f"{s.meta['row']}: {s.label}" if s.meta.get("row") else s.label for s in rows], fontsize=7)
    a.set_xlabel("final test accuracy (%)")
    a.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncol=2, frameon=False)
    a.set_title(f"{title}: ours against the paper", fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ----------------------------------------------------------------------------- the report

def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "all"


def _cost_text(s, dataset):
    if dataset not in _INPUT_DIM:
        return "—"
    from .channel.algorithm import algorithm
    from .cost import cost
    spec = s.docs[0]["spec"]
    if spec.get("model", "mlp") != "mlp":
        return "—"
    try:
        alg = algorithm(spec["algorithm"], **spec.get("algorithm_options", {}))
        sizes = [_INPUT_DIM[dataset], *spec["hidden"], 10]
        return f"{cost(sizes, alg)['channel']:,}"
    except (ConfigError, KeyError, TypeError):
        return "—"


def write_report(directory, out=None) -> dict:
    """Write report.md, figures/ and results.csv for the result store ``directory``; returns a summary."""
    from ._optional import require
    from .experiments.store import rows_of
    require("matplotlib", "rbp report (its figures)")
    exp, summaries, missing, problems = summarize(directory)
    import warnings
    for p in problems:
        warnings.warn(p)
    out = Path(out or directory)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    name = exp.name if exp else (summaries[0].docs[0]["experiment"] if summaries else Path(directory).name)
    dataset = exp.dataset if exp else (summaries[0].docs[0]["spec"]["dataset"] if summaries else "?")
    has_table = any(s.meta.get("paper_mean") is not None for s in summaries)
    epochs = sorted({s.epochs for s in summaries})
    L = []
    L.append(f"# {name}: results\n")
    if exp:
        L.append(f"{exp.description}.  \nReference: {exp.reference or '—'}.  \nDataset: {exp.dataset}.\n")
    L.append(f"Store: `{directory}`: {sum(len(s.seeds) for s in summaries)} runs of {len(summaries)} "
             f"configurations; seeds per configuration: {sorted({len(s.seeds) for s in summaries})}; epochs: "
             f"{epochs}.\n")
    if summaries and max(epochs) < PAPER_EPOCHS:
        L.append(f"**Scaled-down run**: {max(epochs)} epochs instead of the paper's {PAPER_EPOCHS}; differences "
                 "from the paper's numbers are expected and the flags are indicative only.\n")
    if missing:
        L.append(f"Not run yet: {', '.join(missing)}.\n")
    if len(epochs) > 1:
        L.append(f"The configurations were trained for different numbers of epochs ({epochs}; column "
                 "*epochs*): compare rows of the same length only.\n")
    from .experiments.store import Store
    in_flight = Store(directory).checkpoints_held()
    if in_flight:
        L.append("In training (a checkpoint in the store, resumed by `rbp run`): " + "; ".join(
            f"{'+'.join(sorted({c for c, _ in h['members']}))} seed{'s' if len(h['members']) > 1 else ''} "
            f"{','.join(str(k) for _, k in h['members'])} at epoch {h['epochs']}"
            + (f" of {h['of']}" if h.get("of") else "") for h in in_flight) + ".\n")
    L.append("## Final test accuracy\n")
    L.append("Accuracy in %, at the last epoch, mean (sd) over seeds (sd: sample standard deviation). "
             "s/epoch: measured wall time per epoch and network (an ensemble's epoch time divided by its size). "
             "channel mults: multiplications per example in the learning channel (`rbp cost`, Eqs. 14-15).")
    if has_table:
        L.append(" *Flag*: **outside** when |ours - paper| > 2 x the paper's sd (its 5 runs), or > 2 x our sd "
                 "where the paper reports a single run; n/a without a tolerance.")
    L.append("\n")
    head = ["row", "algorithm", "ours: test", "ours: train", "seeds"] + (["epochs"] if len(epochs) > 1 else [])
    if has_table:
        head += ["paper: test", "difference (points)", "flag"]
    head += ["s/epoch", "channel mults"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    n_flagged = 0
    table_rows = []
    for s in summaries:
        m, sd = s.test
        cells = [s.meta.get("row") or "", s.label + _diverged_text(s),
                 _fmt(m, sd), _fmt(*s.train), str(len(s.seeds))] + ([str(s.epochs)] if len(epochs) > 1 else [])
        pm, psd = s.meta.get("paper_mean"), s.meta.get("paper_sd")
        f, tol = flag(m, sd, pm, psd)
        if has_table:
            diff = m - pm if pm is not None and math.isfinite(m) else math.nan
            n_flagged += f == "outside"
            cells += [_fmt(pm, psd if psd is not None else math.nan, 1) if pm is not None else "—",
                      f"{diff:+.2f}" if math.isfinite(diff) else "—", "**outside**" if f == "outside" else f]
        cells += [f"{s.sec:.3f}" if math.isfinite(s.sec) else "—", _cost_text(s, dataset)]
        L.append("| " + " | ".join(cells) + " |")
        table_rows.append({"config": s.id, "label": s.label, "row": s.meta.get("row"), "test_mean": m,
                           "test_sd": sd, "paper_mean": pm, "paper_sd": psd, "flag": f, "tolerance": tol})
    notes = defaultdict(list)
    for s in summaries:
        if s.meta.get("note"):
            notes[s.meta["note"]].append(s.id)
    if notes:
        L.append("\nNotes:\n" + "\n".join(f"- {', '.join(ids)}: {n}" for n, ids in notes.items()))
    if any(s.diverged for s in summaries):
        L.append("\n**Diverged runs** (loss NaN or infinite; the run was stopped at that epoch, and its last "
                 "epoch's accuracy is what the table averages):\n")
        L.extend(f"- {s.label} ({s.id}), seed {seed}: epoch {e if e is not None else '?'}"
                 for s in summaries for seed, e in s.diverged_at)

    figures = []
    if has_table:
        p = overview_figure(figdir / "overview.png", name, summaries)
        if p:
            figures.append(p)
            L.append(f"\n![ours against the paper](figures/{p.name})\n")
    groups = []
    for s in summaries:
        for g in s.meta.get("groups") or [s.meta.get("row") or "all"]:
            if g not in groups:
                groups.append(g)
    L.append("## Curves\n")
    L.append("Upper panel training accuracy, lower panel test accuracy, per epoch; line = mean over seeds, "
             "band = ±1 sd. Alignment figures: angles between what the learning channel delivers and what "
             "backpropagation would (signal to each hidden layer, weight update), and between the feedback "
             "matrix and the forward weights it stands in for, measured every epoch on 1000 training examples.\n")
    for i, g in enumerate(groups, 1):
        members = [s for s in summaries if g in (s.meta.get("groups") or [s.meta.get("row") or "all"])]
        title = f"{name}: {g}" if g != "all" else name
        stem = f"{i:02d}-{_slug(g)}"
        acc = accuracy_figure(figdir / f"{stem}-accuracy.png", title, members)
        figures.append(acc)
        L.append(f"### {g}\n\n![{title}: accuracy](figures/{acc.name})\n")
        al = alignment_figure(figdir / f"{stem}-alignment.png", title, members)
        if al:
            figures.append(al)
            L.append(f"![{title}: alignment](figures/{al.name})\n")
        st = settling_figure(figdir / f"{stem}-settling.png", title, members)
        if st:
            figures.append(st)
            L.append(f"![{title}: relative change of the weights per epoch (settling)](figures/{st.name})\n")

    keys = sorted({k for s in summaries for k in s.align_keys() if k.startswith("update_angle")},
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    if keys:
        L.append("## Alignment at the last epoch\n")
        L.append("Angle (degrees) between the channel's update of each hidden layer and the true gradient, mean "
                 "over seeds (0 = BP, 90 = chance).\n")
        L.append("| algorithm | " + " | ".join(f"layer {k.rsplit('_', 1)[1]}" for k in keys) + " |")
        L.append("|---|" + "---|" * len(keys))
        for s in summaries:
            vals = [_mean_sd([_num(d["history"][-1].get(k)) for d in s.docs])[0] for k in keys]
            L.append(f"| {s.label} | " + " | ".join(_fmt(v, digits=1) for v in vals) + " |")

    L.append("\n## Provenance\n")
    provs = [d.get("provenance", {}) for s in summaries for d in s.docs]
    for key in ("rbp_version", "torch_version", "python", "machine"):
        L.append(f"- {key}: {', '.join(sorted({str(p.get(key)) for p in provs}))}")
    checks = {k: v for p in provs for k, v in (p.get("data_checksums") or {}).items()}
    for k, v in sorted(checks.items()):
        L.append(f"- data `{k}`: sha256 {v[:16]}…")
    devices = sorted({str(d["spec"].get("device")) for s in summaries for d in s.docs})
    compute = sum(_num(r["seconds"]) / max(1, int(r.get("ensemble") or 1)) for s in summaries for d in s.docs
                  for r in d["history"])
    L.append(f"- devices: {', '.join(devices)}; compute: {compute:.0f} s of training summed over runs")
    if problems:
        L.append("\nUnreadable run files (skipped):\n" + "\n".join(f"- {p}" for p in problems))
    report = out / "report.md"
    atomic_write(report, "\n".join(L) + "\n")

    rows = [r for s in summaries for d in s.docs for r in rows_of(d)]
    if rows:
        names = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_file(out / "results.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=names)
            w.writeheader()
            w.writerows(rows)
    return {"experiment": name, "report": str(report), "figures": [str(f) for f in figures],
            "runs": sum(len(s.seeds) for s in summaries), "flagged": n_flagged, "missing": missing,
            "table": table_rows}

"""What ``rbp.convert`` did to a model: ``model.rbp_channel.report`` (print it)."""

from __future__ import annotations

import warnings


class UnknownWeightWarning(UserWarning):
    """A module no site adapter claims multiplies by a matrix-shaped parameter of its own: autograd's
    backprop trains it and carries the signal through its transpose (``rbp.register_site`` adds a site)."""


TIED = ("each use is its own layer and the shared tensor's .grad is the sum of their updates: the output "
        "layer's use contributes its exact gradient (Fact 1), every other use the learning channel's update")


def _shape(t) -> str:
    return "x".join(str(d) for d in t.shape) if t is not None else "-"


class ConversionReport:
    """Sites (with their feedback shapes), structural modules, excluded layers, tied weights and hidden
    weight layers of one converted model.  ``str(report)`` is a table; :meth:`as_dict` the same as data."""

    def __init__(self, alg, sites, plan, tied, hidden):
        self.algorithm = alg
        self._sites = sites
        self.structural = [(n or "model", type(m).__name__) for n, m in plan.structural]
        self.excluded = [(n, type(m).__name__) for n, m in plan.excluded]
        self.parameters = plan.bare          # (name, shape) of the structural modules' own parameters
        self.tied = tied
        self.hidden = hidden                 # {parameter: function} of hidden weight layers; None: not yet seen

    @property
    def sites(self) -> list[dict]:
        rows = []
        for s in self._sites:
            fbk = s.feedback
            lazy = getattr(s, "_lazy_feedback", None) is not None
            if lazy and s._lazy_feedback.only_if_fed:
                fshape = "- (first layer; drawn if a pass shows its input is computed)"
            elif lazy:
                fshape = "drawn at the first pass"
            elif fbk is None:
                fshape = "-" if s.receives_feedback else "none (input is indices)"
            else:
                fshape = _shape(fbk)
            rows.append(dict(name=getattr(s, "rbp_name", "?"), kind=s.kind, weight=_shape(s.weight),
                             feedback=fshape, adaptive=bool(fbk is not None and fbk.requires_grad)))
        return rows

    def as_dict(self) -> dict:
        return dict(algorithm=self.algorithm.describe(), sites=self.sites,
                    structural=[dict(name=n, type=t) for n, t in self.structural],
                    structural_parameters=[dict(name=n, shape=list(sh)) for n, sh in self.parameters],
                    excluded=[dict(name=n, type=t) for n, t in self.excluded],
                    tied=self.tied, hidden_weight_layers=self.hidden)

    def hidden_message(self) -> str:
        names = ", ".join(f"{n} (by {f})" for n, f in sorted(self.hidden.items()))
        return (f"rbp.convert: parameters that no site serves are multiplied into the signal: {names}; autograd's "
                "backprop trains them and carries the learning signal through their transpose. Register a site "
                "adapter for their module (rbp.register_site) to serve them by the learning channel, or name "
                "the module in exclude= to say that backprop is intended")

    def warn_hidden(self):
        warnings.warn(self.hidden_message(), UnknownWeightWarning, stacklevel=3)

    def __str__(self):
        sites = self.sites
        w = max([len(r["name"]) for r in sites] + [4])
        lines = [f"rbp.convert with {self.algorithm.describe()}: {len(sites)} sites, {len(self.structural)} "
                 f"structural modules with parameters, {len(self.excluded)} excluded",
                 f"  {'site':<{w}}  {'kind':<10} {'weight':<14} feedback"]
        for r in sites:
            lines.append(f"  {r['name']:<{w}}  {r['kind']:<10} {r['weight']:<14} {r['feedback']}"
                         + (" (adaptive)" if r["adaptive"] else ""))
        if self.structural:
            shown = ", ".join(f"{n} ({t})" for n, t in self.structural[:12])
            more = f", ... ({len(self.structural) - 12} more)" if len(self.structural) > 12 else ""
            lines.append(f"  structural (autograd's derivative; their parameters learn from the signal): {shown}{more}")
        if self.excluded:
            lines.append("  excluded (plain autograd): " + ", ".join(f"{n} ({t})" for n, t in self.excluded))
        for group in self.tied:
            lines.append(f"  tied: {' = '.join(group)}: {TIED}")
        if self.hidden is None:
            lines.append("  hidden weight layers: checked at the first forward pass")
        elif self.hidden:
            lines.append("  hidden weight layers (autograd's backprop): "
                         + ", ".join(f"{n} (by {f})" for n, f in sorted(self.hidden.items())))
        return "\n".join(lines)

    __repr__ = __str__

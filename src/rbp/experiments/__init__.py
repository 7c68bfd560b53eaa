"""Paper 1's experiments, one command away: experiment files -> runner -> result store -> report.

>>> from rbp import experiments
>>> exp = experiments.load("table1-mnist")           # validated TOML (see experiment.py)
>>> experiments.run(exp, "results/table1", epochs=3, seeds=2)   # resumable
>>> rows = experiments.load_rows("results/table1")   # one row per run and epoch
>>> from rbp.report import write_report; write_report("results/table1")

Data flow: experiment file -> :class:`Experiment` (configs) -> ``TrainSpec`` per
config -> :func:`rbp.train.train_group` (one ensemble per config) -> one run file
per config x seed (:mod:`.store`) -> :mod:`rbp.report`.
"""

from .experiment import Config, Experiment, bundled_names, load, load_all, parse
from .runner import run
from .store import Store, load_rows

__all__ = ["Config", "Experiment", "bundled_names", "load", "load_all", "parse", "run", "Store", "load_rows"]

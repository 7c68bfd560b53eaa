"""Run a sweep on a Dask cluster: a LocalCluster of worker processes here.

An experiment is a TOML file (or string) of configurations;
`rbp.experiments.run` trains every configuration x seed, sends each
configuration's seeds to a worker as one task, and writes one run file per
network into the result store as the results arrive. The store is resumable:
run the script again and only what is missing trains. For a real cluster
pass ``scheduler="tcp://host:8786"`` instead of ``workers`` (see the record
docs/scaling.md). Needs ``pip install 'rbp[distributed]'``.

    python examples/04_dask_sweep.py [OUT_DIR]    # 4 configurations x 3 seeds
    RBP_EXAMPLE_QUICK=1 python examples/04_dask_sweep.py [OUT_DIR]
"""

import os
import sys
from pathlib import Path

from rbp.experiments import parse, run
from rbp.report import write_report

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
out = Path(sys.argv[1] if len(sys.argv) > 1 else "dask-sweep")

# The sparsity of SRBP's feedback (cf. paper 1, Fig. 4) on the bundled digits.
experiment = parse(f"""
name = "srbp-sparsity-digits"
description = "SRBP with sparse feedback matrices on digits"
dataset = "digits"

[protocol]
epochs = {1 if QUICK else 20}
seeds = {2 if QUICK else 3}
hidden = [100, 100]

[[config]]
id = "bp"
algorithm = "bp"

[[config]]
id = "srbp"
algorithm = "srbp"

[[config]]
id = "srbp-sparse-4"
algorithm = "srbp"
feedback = "sparse-4"

[[config]]
id = "srbp-sparse-1"
algorithm = "srbp"
feedback = "sparse-1"
""", "srbp-sparsity-digits.toml")

# Worker processes import this file; only the client runs the sweep.
if __name__ == "__main__":
    # workers=2 starts a LocalCluster of 2 worker processes for this call
    # (one torch thread each); scheduler="tcp://host:8786" would send the
    # tasks to a running cluster instead.
    summary = run(experiment, out, executor="dask", workers=2, threads=1,
                  progress=False, log=print)
    print(f"{summary['trained']} networks trained, {summary['skipped']} already "
          f"stored, {len(summary['failed'])} failed, {summary['seconds']:.1f} s")
    report = write_report(out)
    names = ", ".join(Path(f).name for f in report["figures"])
    print(f"report: {report['report']}, figures: {names}")

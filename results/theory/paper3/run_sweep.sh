#!/bin/bash
# The paper-3 sweep recorded in docs/theory.md (authors' protocol), for the nonlinear units with the
# teacher psi(X U^T) v / sqrt(p) (fixed 2026-12-07; the linear units' points, whose target X theta does
# not involve the teacher, are those of the earlier sweep, 50 runs a point, and are not rerun here).
# One thread, in the background of a shared 2-core machine.  Widths outer, so a sweep stopped by the end of
# a session has every activation and lambda up to some width; each point is written to
# sweep_<activation>.json as soon as it is done, and a stopped sweep goes on with --append.
# Run from the repository root:  bash results/theory/paper3/run_sweep.sh [STAGE...]
set -u
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
RBP="${RBP:-rbp}"
OUT=results/theory/paper3
FIG=docs/img/theory
common="--out $OUT --figures $FIG --threads 1 --dtype float32"
point() {   # point ACT WIDTH RUNS
  $RBP theory sweep --activation $1 --widths $2 --runs $3 --append $common
}
stages=("${@:-200 400 800 1600 3200 6400 12800}")
for w in ${stages[@]}; do
  runs=10
  [ "$w" = 6400 ] && runs=2
  [ "$w" = 12800 ] && runs=1
  for act in relu tanh sigmoid; do point $act $w $runs; done
done

#!/bin/bash
# The paper-3 sweep recorded in docs/theory.md (authors' protocol), sized to fit in the background of a
# shared 2-core machine (load average 8-13 while it ran): one nice'd thread, under 50 minutes of CPU time
# in all. Each point is written to sweep_<activation>.json as soon as it is done; later stages --append.
# Run from the repository root:  bash results/theory/paper3/run_sweep.sh
#
# How it was actually run (the same commands, in four parts):
#   part 1 (09:45-09:51 UTC, stopped by hand after relu width 800, lambda 0):
#     rbp theory sweep --activation relu --widths 200 400 800 --runs 3 --dtype float32 $common
#   part 2 (09:51-09:54, stopped by hand after linear width 200, lambdas 0 and 0.2):
#     rbp theory sweep --activation linear --runs 50 $common
#   part 3 (09:53-11:04): the stages below, with a 4200 s wall-time limit. The limit stopped it during
#     linear width 12800, lambda 0.5. The script file was edited while bash was reading it, and bash
#     went on to run `sweep --activation relu --widths 1600 --runs 2 --append` outside the limit; it
#     was stopped by hand after its first point (lambda 0), which is kept.
#   part 4 (11:04-): the missing linear point:
#     rbp theory sweep --activation linear --widths 12800 --lams 0.5 --runs 50 --append $common
#   Part 3 used 324 s of user CPU time in 70 min 44 s of wall time (/usr/bin/time: 7 % of a core;
#   load average 10-13). Parts 1 and 2 took about 8 min of wall time between them; part 4 took
#   2 min 57 s of wall time and 84 s of CPU time.
set -u
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
RBP="${RBP:-rbp}"
OUT=results/theory/paper3
FIG=docs/img/theory
common="--out $OUT --figures $FIG --threads 1"
stages() {
  # nonlinear units, widths 200-800, 3 runs per point (float32: the authors' torch default)
  for act in tanh sigmoid; do
    $RBP theory sweep --activation $act --widths 200 400 800 --runs 3 --dtype float32 $common
  done
  $RBP theory sweep --activation relu --widths 800 --lams 0.02 0.05 0.2 --runs 3 --dtype float32 --append $common
  # linear units: every width of the paper, 50 runs per point (reduced recursion, float64)
  $RBP theory sweep --activation linear --widths 200 --lams 0.3 0.5 --runs 50 --append $common
  $RBP theory sweep --activation linear --widths 400 800 1600 3200 6400 12800 --runs 50 --append $common
  # then nonlinear units at 1600 (2 runs) and 3200 (1 run), as far as the time limit allows
  for act in relu tanh sigmoid; do
    $RBP theory sweep --activation $act --widths 1600 --runs 2 --dtype float32 --append $common
  done
  for act in relu tanh sigmoid; do
    $RBP theory sweep --activation $act --widths 3200 --runs 1 --dtype float32 --append $common
  done
}
export RBP OUT FIG common
timeout 4200 bash -c "$(declare -f stages); stages"
echo "exit $?"
for act in linear relu tanh sigmoid; do
  [ -f $OUT/sweep_$act.json ] && $RBP theory sweep --activation $act --replot $common
done

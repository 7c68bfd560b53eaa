"""Where a compiled step's time goes, plain model against converted ones (issue 22, docs/performance.md).

    python scripts/compile_profile.py resnet18-cifar [--algorithms plain,rbp,kp,usf] [--steps 4]

Each variant is `rbp bench --compile`'s loop (rbp.bench._GraphLoop: torch.compile(fullgraph=True), inductor),
3 warm-up steps (they compile), then torch.profiler over the given steps, one thread; prints the self CPU time
per step of the whole step and of its largest operations (inductor's graphs appear as "Call CompiledFxGraph").
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from rbp.bench import GRAPH_MODELS, _GraphLoop


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=GRAPH_MODELS)
    p.add_argument("--algorithms", default="plain,rbp,kp,usf")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    for alg in args.algorithms.split(","):
        loop = _GraphLoop(args.model, None if alg == "plain" else alg, "cpu", compile=True)
        loop.run(3)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loop.run(args.steps)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / 1000 / args.steps
        print(f"{alg}: self CPU {total:.1f} ms/step", flush=True)
        for e in events[:args.top]:
            print(f"    {e.key[:60]:60s} {e.self_cpu_time_total / 1000 / args.steps:8.1f} ms  "
                  f"{e.count / args.steps:.0f} calls", flush=True)


if __name__ == "__main__":
    main()

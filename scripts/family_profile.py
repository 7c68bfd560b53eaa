"""Where the wider family's extra step time goes on the bench's ResNet-18 (issue 22, docs/performance.md).

    python scripts/family_profile.py --batch 8 --algorithms plain,rbp,usf,frsf,brsf,kp [--retain-freed-memory]

For each variant: one `rbp bench` training loop (rbp.bench._GraphLoop, the converted model in a
plain PyTorch loop), 2 warm-up steps, then `torch.profiler` over 4 steps, one thread; prints the
self CPU time per step of the whole loop and of the operations that differ between the variants.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from rbp._malloc import retain_freed_memory
from rbp.bench import _GraphLoop

KEYS = ("aten::copysign_", "aten::copysign", "aten::normal_", "aten::add", "aten::add_", "aten::mul", "aten::mul_",
        "Optimizer.step#SGD.step", "Optimizer.zero_grad#SGD.zero_grad", "aten::convolution_backward",
        "aten::mkldnn_convolution")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--algorithms", default="plain,rbp,usf,frsf,brsf,kp")
    p.add_argument("--retain-freed-memory", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.retain_freed_memory:
        retain_freed_memory()
    for alg in args.algorithms.split(","):
        loop = _GraphLoop("resnet18-cifar", None if alg == "plain" else alg, "cpu", batch=args.batch)
        loop.run(2)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loop.run(args.steps)
        events = {e.key: e for e in prof.key_averages()}
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1000 / args.steps
        parts = ", ".join(f"{k.replace('aten::', '')} {events[k].self_cpu_time_total / 1000 / args.steps:.1f}"
                          for k in KEYS if k in events and events[k].self_cpu_time_total / 1000 / args.steps >= 0.5)
        print(f"{alg}: self CPU {total:.1f} ms/step; {parts}")


if __name__ == "__main__":
    main()

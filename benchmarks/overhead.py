"""Where the framework's per-step overhead goes: a tiny network so that Python overhead dominates.

    python -m benchmarks.overhead [--steps 40] [--profile]

Prints CPU milliseconds per training step for the Lightning run (normal and lean) and the bare
loop with a ~10k-parameter U-Net (batch 8), i.e. the fixed cost per step that the framework adds
on top of the same arithmetic. ``--profile`` adds a cProfile table of the normal Lightning run
(cumulative time, top 25 functions).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import warnings

import torch

from .train_bench import BareRunner, FrameworkRunner, build_cfg

TINY = ["model.net.base_channels=8", "model.net.channel_mult=[1,1,1]", "model.net.attention_resolutions=[]"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    cfg = build_cfg(dev, 8, lean=False, extra=TINY)
    runners = {"kakusan (normal run)": FrameworkRunner(cfg),
               "kakusan (lean)": FrameworkRunner(build_cfg(dev, 8, lean=True, extra=TINY)),
               "bare PyTorch loop": BareRunner(cfg, dev)}
    cpu_ms: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.reps):
        for name, r in runners.items():
            _, cpu = r.run(args.steps + 3, args.steps)
            cpu_ms[name].append(1000 * statistics.median(cpu))
    print(f"tiny U-Net ({runners['bare PyTorch loop'].params} parameters), batch 8, 1 thread; "
          "median CPU ms per step over steps, median over repetitions")
    bare = statistics.median(cpu_ms["bare PyTorch loop"])
    for name, v in cpu_ms.items():
        m = statistics.median(v)
        print(f"  {name:24s} {m:7.2f} ms/step   (+{m - bare:.2f} ms vs bare)")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        runners["kakusan (normal run)"].run(args.steps, args.steps - 1)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()

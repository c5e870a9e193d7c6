"""Run the benchmarks and print one Markdown table.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--out FILE.md] [--threads N] [--no-dit]
                             [--reps N] [--timed N] [--no-sampling]

Variants of one benchmark run in the same process on the same data and seed, interleaved
(A B C, B C A, C A B, ...) so that load from other processes hits all of them alike. Each
repetition starts with warm-up steps that are not timed. Peak memory comes from a separate,
untimed pass per variant (a watcher thread would otherwise steal CPU from the timed runs).
On CUDA every variant runs under bf16 autocast (Lightning ``precision=bf16-mixed``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from .common import Result, load_average, machine_description, markdown_table, peak_memory
from .sample_bench import build_runners
from .train_bench import BareRunner, DiffusersRunner, FrameworkRunner, build_cfg

KAKUSAN = "kakusan (Lightning, normal run)"
# experiment=dit_mnist (not model=dit on top of the default experiment, whose U-Net sizes a DiT cannot take)
DIT_OVERRIDES = ["experiment=dit_mnist", "model.sample_shape=[1,32,32]", "model.net.patch_size=4",
                 "model.net.hidden_size=192", "model.net.depth=6", "model.net.num_heads=3"]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_training(group: str, runners: dict, batch: int, warm: int, timed: int, reps: int,
                   device: torch.device) -> list[Result]:
    names = list(runners)
    results = {n: Result(group, n, "img/s", params=runners[n].params) for n in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for n in order:
            wall, cpu = runners[n].run(warm + timed, timed)
            results[n].reps.append(batch * len(wall) / sum(wall))
            results[n].cpu_reps.append(batch * len(cpu) / sum(cpu))
            _log(f"{group} | {n} | rep {rep + 1}/{reps}: {results[n].reps[-1]:.2f} img/s")
    for n in names:  # untimed memory pass
        with peak_memory(device) as box:
            runners[n].run(2, 1)
        results[n].peak_mb = box["peak_mb"]
    return list(results.values())


def bench_sampling(group: str, runners: list, batch: int, reps: int, device: torch.device) -> list[Result]:
    results = {r.name: Result(group, r.name, "img/s", params=r.params) for r in runners}
    for r in runners:  # warm-up call
        r.run()
    for rep in range(reps):
        order = runners[rep % len(runners):] + runners[:rep % len(runners)]
        for r in order:
            wall, cpu = r.run()
            results[r.name].reps.append(batch / wall)
            results[r.name].cpu_reps.append(batch / cpu)
            _log(f"{group} | {r.name} | rep {rep + 1}/{reps}: {results[r.name].reps[-1]:.2f} img/s")
    for r in runners:
        with peak_memory(device) as box:
            r.run()
        results[r.name].peak_mb = box["peak_mb"]
    return list(results.values())


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small batches and few repetitions (~2 min on 2 CPU cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-dit", action="store_true", help="skip the DiT benchmarks")
    ap.add_argument("--reps", type=int, help="timed repetitions per variant")
    ap.add_argument("--timed", type=int, help="timed training steps per repetition (more: less noise, longer run)")
    ap.add_argument("--no-sampling", action="store_true", help="skip the sampling benchmarks")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.quick:
        tb, warm, timed, reps, sb, steps = 16, 2, 4, 2, 4, 50
    else:
        tb, warm, timed, reps, sb, steps = (128 if gpu else 64), 3, (50 if gpu else 10), 3, (64 if gpu else 16), 50
    reps = args.reps or reps
    timed = args.timed or timed
    load_before = load_average()
    started = time.time()
    results: list[Result] = []

    _log("UNet training")
    fw_cfg = build_cfg(device, tb, lean=False)
    runners = {KAKUSAN: FrameworkRunner(fw_cfg),
               "kakusan (Lightning, no logger/callbacks/progress bar)": FrameworkRunner(build_cfg(device, tb, lean=True)),
               "bare PyTorch loop": BareRunner(fw_cfg, device),
               "diffusers UNet2DModel + DDPMScheduler loop": DiffusersRunner(fw_cfg, device)}
    results += bench_training("train UNet", runners, tb, warm, timed, reps, device)

    if not args.no_sampling:
        _log("UNet sampling")
        samplers, label = build_runners(fw_cfg, device, sb, steps)
        results += bench_sampling(f"sample UNet {label}", samplers, sb, reps, device)

    dit_exists = (Path(__file__).resolve().parents[1] / "lightning_modules" / "nets" / "dit.py").is_file()
    if dit_exists and not args.no_dit:
        _log("DiT training")
        dit_cfg = build_cfg(device, tb, lean=False, extra=DIT_OVERRIDES)
        runners = {KAKUSAN: FrameworkRunner(dit_cfg), "bare PyTorch loop": BareRunner(dit_cfg, device)}
        results += bench_training("train DiT", runners, tb, warm, timed, reps, device)
        if not args.no_sampling:
            _log("DiT sampling")
            samplers, label = build_runners(dit_cfg, device, sb, steps, with_diffusers_net=False)
            results += bench_sampling(f"sample DiT {label}", samplers, sb, reps, device)

    reference: dict[str, str] = {}
    for r in results:
        reference.setdefault(r.group, r.variant)
    report = "\n".join([
        f"# kakusan benchmarks ({'quick' if args.quick else 'full'}, {device.type})", "",
        machine_description(device),
        f"- load average (1/5/15 min) before: {load_before}; after: {load_average()}; wall time {time.time() - started:.0f} s",
        f"- training: batch {tb}, {warm} warm-up + {timed} timed steps per repetition, {reps} interleaved repetitions; "
        "default config network (`configs/train.yaml`), AdamW, grad-clip 1.0, LR warm-up, EMA update in every loop; "
        "validation/checkpoints/sample grids off",
        f"- sampling: batch {sb}, {steps} network evaluations, {reps} interleaved repetitions after one warm-up call",
        "- ratio: throughput / throughput of the first row of its benchmark (> 1 = faster than it)",
        "- peak memory: " + ("torch.cuda.max_memory_allocated above the pre-run level" if gpu else
                             "peak RSS above the pre-run level, separate untimed pass (coarse on CPU)"),
        "", markdown_table(results, reference), ""])
    for group in sorted({r.group for r in results if r.group.startswith("train")}):
        fw = next(r for r in results if r.group == group and r.variant == KAKUSAN)
        bare = next(r for r in results if r.group == group and r.variant == "bare PyTorch loop")
        report += f"\n- {group}: framework overhead vs bare loop {100 * (bare.median / fw.median - 1):+.1f}% wall, " \
                  f"{100 * (bare.cpu_median / fw.cpu_median - 1):+.1f}% CPU time " \
                  "(framework time per image / bare-loop time per image - 1)"
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return report


if __name__ == "__main__":
    main()

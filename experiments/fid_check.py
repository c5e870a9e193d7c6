"""Sanity check of the metrics on a real checkpoint: trained vs untrained, through the evaluate command.

    python -m experiments.fid_check <run>/checkpoints/last.ckpt --num-samples 1000 \\
        --metrics fid_digits,class_accuracy,fid_inception,kid_inception --sampler ddim --steps 50

Runs ``python -m experiments.evaluate`` twice with the same seed: on the checkpoint, and on a copy whose
weights (EMA included) are re-initialised from the same config (an untrained model). A trained model must
score better (lower FID/KID, higher class accuracy). Prints a table with the wall time of each run and
writes ``fid_check.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch

from kakusan.checkpoint import checkpoint_config, read_checkpoint


def untrained_copy(ckpt_path: Path, out: Path, seed: int = 0) -> Path:
    """The checkpoint with freshly initialised weights (same config, same kakusan metadata)."""
    ckpt = read_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, ckpt_path)
    torch.manual_seed(seed)
    module = hydra.utils.instantiate(cfg.model)
    fresh = module.state_dict()
    ckpt["state_dict"] = {k: fresh[k] for k in ckpt["state_dict"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out


def run_evaluate(ckpt: Path, run_dir: Path, args: argparse.Namespace) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "experiments.evaluate", f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}",
           f"metrics=[{args.metrics}]", f"num_samples={args.num_samples}", f"seed={args.seed}",
           f"batch_size={args.batch_size}", "wandb.enabled=false"]
    if args.sampler:
        cmd += [f"sampler={args.sampler}", "sampler.progress=false"]
        if args.steps:
            cmd.append(f"sampler.steps={args.steps}")
    if args.real_num_samples:
        cmd.append(f"real_num_samples={args.real_num_samples}")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return json.loads((run_dir / "summary.json").read_text()), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--metrics", default="fid_digits,class_accuracy,fid_inception,kid_inception")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--real-num-samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("logs/fid_check"))
    args = ap.parse_args(argv)

    fresh = untrained_copy(args.ckpt, args.out / "untrained.ckpt", args.seed)
    rows = {}
    for name, ckpt in (("trained", args.ckpt), ("untrained", fresh)):
        summary, seconds = run_evaluate(ckpt, args.out / name, args)
        rows[name] = {k: summary.get(k) for k in args.metrics.split(",")} | {"wall_s": round(seconds, 1)} | {
            k: v for k, v in summary.items() if k.startswith("time/")}
    (args.out / "fid_check.json").write_text(json.dumps(rows, indent=2))
    keys = [*args.metrics.split(","), "wall_s"]
    print(f"{'':10s}" + "".join(f"{k:>16s}" for k in keys))
    for name, row in rows.items():
        print(f"{name:10s}" + "".join(f"{row[k]:>16.4f}" if isinstance(row[k], (int, float)) else f"{'-':>16s}"
                                      for k in keys))
    verdicts = {}
    for k in keys:
        a, b = rows["trained"].get(k), rows["untrained"].get(k)
        if k.startswith(("fid_", "kid_")) and a is not None:
            verdicts[k] = a < b
        elif k == "class_accuracy" and a is not None:
            verdicts[k] = a > b
    for k, better in verdicts.items():
        print(f"trained better than untrained on {k}: {better}")
    ok = all(verdicts.values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

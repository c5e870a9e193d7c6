"""Does a text-conditional latent model follow its prompts? Class accuracy vs guidance scale.

    python -m experiments.eval_latent_text ckpt=<ldm_mnist_text run>/checkpoints/last.ckpt [n=20] [scales=1,3,5]

For each guidance scale, draws ``n`` samples for each prompt "a handwritten digit k" (k = 0..9),
classifies them with the framework's digits classifier and prints the accuracy (chance: 10%),
the accuracy for "a handwritten digit 3" alone and the digits-FID against the validation split.
Saves one grid per scale (rows = digits) as ``<run>/samples/prompts_cfg<scale>.png``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from kakusan.checkpoint import load_datamodule, load_module
from kakusan.images import save_grid
from kakusan.summary import update_summary


def evaluate(ckpt: str, n: int = 20, scales: tuple[float, ...] = (1.0, 3.0, 5.0), steps: int = 50, seed: int = 0,
             fid: bool = True) -> dict[str, float]:
    from lightning_modules.diffusion.samplers import DDIMSampler
    from lightning_modules.metrics.digits_classifier import class_accuracy, predict_digits
    from lightning_modules.metrics.fid import compute_fid

    module, cfg = load_module(ckpt)
    run = Path(ckpt).resolve().parents[1]
    sampler = DDIMSampler(steps=steps, clip_x0=False, progress=False)
    labels = torch.arange(10).repeat_interleave(n)
    prompts = [f"a handwritten digit {int(k)}" for k in labels]
    real = load_datamodule(cfg).real_samples(len(labels)) if fid else None
    out: dict[str, float] = {}
    for s in scales:
        gen = torch.Generator().manual_seed(seed)
        x = torch.cat([module.sample(len(batch), cond={"text": batch}, sampler=sampler, generator=gen,
                                     guidance_scale=s) for batch in (prompts[i:i + 100] for i in range(0, len(prompts), 100))])
        acc = class_accuracy(x, labels)
        pred = predict_digits(x[labels == 3])
        out[f"text_acc/cfg{s:g}"] = acc
        out[f"text_acc_digit3/cfg{s:g}"] = float((pred == 3).float().mean())
        if fid:
            out[f"fid_digits/cfg{s:g}"] = compute_fid(x, real, extractor="digits")
        save_grid(x.view(10, n, *x.shape[1:])[:, : min(n, 10)].reshape(-1, *x.shape[1:]),
                  run / "samples" / f"prompts_cfg{s:g}.png", nrow=min(n, 10), scale=2)
        print(" ".join(f"{k}={v:.3f}" for k, v in out.items() if k.endswith(f"cfg{s:g}")), flush=True)
    update_summary(run, out)
    return out


def main(argv: list[str]) -> None:
    kw = dict(a.split("=", 1) for a in argv)
    if "ckpt" not in kw:
        raise SystemExit(__doc__)
    evaluate(kw["ckpt"], n=int(kw.get("n", 20)), steps=int(kw.get("steps", 50)),
             scales=tuple(float(s) for s in kw.get("scales", "1,3,5").split(",")), fid=kw.get("fid", "1") == "1")


if __name__ == "__main__":
    main(sys.argv[1:])

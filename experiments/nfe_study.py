"""Quality against the number of network evaluations: ``python -m experiments.nfe_study ckpt_path=...``.

For every sampler in ``samplers`` and every step count in ``steps`` it draws ``num_samples`` samples
with the same seed (the same starting noise for every cell), counts the network evaluations (NFE,
with a forward hook on the denoiser), times them and scores them with every metric in ``metrics``.
Writes ``nfe_study.csv``, ``nfe_study.md``, ``nfe_study.png``, ``summary.json`` and ``manifest.json``.
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.sample import inherit_x0_settings, pick_device
from kakusan.config_check import check_argv_or_exit
from kakusan.checkpoint import load_datamodule, load_module
from kakusan.errors import UserError
from kakusan.manifest import write_manifest
from kakusan.run import hydra_overrides, seed_everything, set_torch_threads, task_wrapper
from kakusan.summary import update_summary

log = logging.getLogger("kakusan.nfe_study")
MetricFn = Callable[..., "float | None"]


def _fid(fake, real, labels, extractor: str = "digits", **kw) -> float:
    from lightning_modules.metrics.fid import compute_fid

    return compute_fid(fake, real, extractor=extractor, **kw)


def _class_accuracy(fake, real, labels, **kw) -> float | None:
    if labels is None:
        return None  # unconditional model: nothing to agree with
    from lightning_modules.metrics.digits_classifier import class_accuracy

    return class_accuracy(fake, labels, **kw)


def energy_distance(fake, real, labels=None, max_points: int = 2000) -> float:
    """Energy distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (Székely & Rizzo) between flattened samples.

    Zero iff the distributions agree; needs no feature extractor, so it suits points, poses and toys.
    Uses the first ``max_points`` of each set (the cost is quadratic).
    """
    x = fake.reshape(len(fake), -1)[:max_points].double()
    y = real.reshape(len(real), -1)[:max_points].double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


BUILTIN: dict[str, MetricFn] = {"fid": _fid, "class_accuracy": _class_accuracy, "energy_distance": energy_distance}


def build_metrics(cfg: DictConfig) -> dict[str, MetricFn]:
    out: dict[str, MetricFn] = {}
    for name, params in (cfg.metrics or {}).items():
        if params is None:
            continue
        params = OmegaConf.to_container(params, resolve=True) or {}
        if "_target_" in params:
            fn = hydra.utils.instantiate({**params, "_partial_": True})
            out[name] = lambda fake, real, labels, fn=fn: fn(fake=fake, real=real, labels=labels)
        elif name in BUILTIN:
            out[name] = lambda fake, real, labels, fn=BUILTIN[name], p=params: fn(fake, real, labels, **p)
        else:
            raise UserError(f"unknown metric {name!r}: use one of {', '.join(BUILTIN)} or give it a _target_ "
                            f"(a function fn(fake=..., real=..., labels=...) -> float)")
    if not out:
        raise UserError("no metrics to compute: set metrics (e.g. metrics.fid.extractor=digits)")
    return out


def build_samplers(cfg: DictConfig, schedule: Any, trained: DictConfig | None = None) -> dict[str, list[tuple[int, Any]]]:
    """``{name: [(steps, sampler), ...]}``, every sampler validated before any sampling; x0 clipping and
    thresholding follow the checkpoint's sampler unless set here (``samplers.NAME.clip_x0=...``)."""
    T = schedule.num_timesteps
    out: dict[str, list[tuple[int, Any]]] = {}
    steps = sorted({int(s) for s in cfg.steps})
    if not steps or steps[0] < 1:
        raise UserError(f"steps must be a list of positive step counts, got {list(cfg.steps)}")
    for name, scfg in (cfg.samplers or {}).items():
        if scfg is None:
            continue
        out[name] = []
        cap = scfg.get("max_steps")  # optional: a costly sampler runs only up to this many steps
        scfg = OmegaConf.create({k: v for k, v in scfg.items() if k != "max_steps"})
        for s in steps:
            if s > T:
                log.warning("%s: %d steps > %d training timesteps, skipped", name, s, T)
                continue
            if cap is not None and s > int(cap):
                log.info("%s: %d steps > samplers.%s.max_steps=%d, skipped", name, s, name, int(cap))
                continue
            try:
                sampler = hydra.utils.instantiate(inherit_x0_settings(scfg, trained, f"samplers.{name}"), steps=s)
                sampler.validate(schedule)
            except (InstantiationException, ValueError) as e:
                cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
                raise UserError(f"invalid settings for sampler {name!r} with {s} steps: {cause}") from e
            out[name].append((s, sampler))
    if not any(out.values()):
        raise UserError("nothing to run: no sampler (samplers.*) with a valid step count (steps=[...])")
    return out


class NFECounter:
    """Counts forward calls of the module's networks (raw and EMA) while active."""

    def __init__(self, module: Any) -> None:
        self.count = 0
        nets = [module.net] + ([module.ema.shadow] if getattr(module, "ema", None) is not None else [])
        self.handles = [n.register_forward_hook(self._hook) for n in nets]

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def draw(module: Any, cfg: DictConfig, sampler: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    num_classes = getattr(module, "num_classes", None)
    xs, ys = [], []
    for b, start in enumerate(range(0, cfg.num_samples, cfg.batch_size)):
        n = min(cfg.batch_size, cfg.num_samples - start)
        gen = torch.Generator(device=device).manual_seed(int(cfg.seed) + b)
        cond = None
        if num_classes:
            y = (torch.arange(start, start + n)) % num_classes
            cond = {"y": y.to(device)}
            ys.append(y)
        xs.append(module.sample(n, cond=cond, sampler=sampler, generator=gen, guidance_scale=cfg.guidance_scale,
                                use_ema=cfg.use_ema).float().cpu())
    return torch.cat(xs), (torch.cat(ys) if ys else None)


def write_table(rows: list[dict[str, Any]], metric_names: list[str], run_dir: Path) -> tuple[Path, Path]:
    cols = ["sampler", "steps", "nfe", *metric_names, "seconds_per_sample", "seconds"]
    csv_path = run_dir / "nfe_study.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows([{c: r.get(c) for c in cols} for r in rows])
    fmt = lambda v: "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    md_path = run_dir / "nfe_study.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def plot(rows: list[dict[str, Any]], metric_names: list[str], run_dir: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metric_names if any(r.get(m) is not None for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.5 * max(1, len(shown)), 3.6), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], shown):
        for name in dict.fromkeys(r["sampler"] for r in rows):
            pts = [(r["nfe"], r[metric]) for r in rows if r["sampler"] == name and r.get(metric) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = run_dir / "nfe_study.png"
    fig.savefig(path)
    plt.close(fig)
    return path


@task_wrapper
def nfe_study(cfg: DictConfig) -> dict[str, Any]:
    set_torch_threads()
    run_dir = Path(cfg.paths.output_dir)
    if cfg.num_samples < 2 or cfg.batch_size < 1:
        raise UserError(f"num_samples must be >= 2 and batch_size >= 1, got {cfg.num_samples}, {cfg.batch_size}")
    metrics = build_metrics(cfg)
    seed = seed_everything(cfg.seed)
    write_manifest(run_dir, seed, hydra_overrides(), module="experiments.nfe_study",
                   extra={"ckpt_path": str(cfg.ckpt_path)})
    device = pick_device(cfg.device)
    module, mcfg = load_module(cfg.ckpt_path, device)
    grid = build_samplers(cfg, module.schedule, mcfg.model.get("sampler"))
    datamodule = load_datamodule(mcfg)
    if not hasattr(datamodule, "real_samples"):
        raise UserError(f"{type(datamodule).__name__} has no real_samples(num, split): nothing to compare with")
    real = datamodule.real_samples(cfg.real_num_samples or 10**9, cfg.real_split)

    rows: list[dict[str, Any]] = []
    counter = NFECounter(module)
    cells = [(name, s, sampler) for name, items in grid.items() for s, sampler in items]
    try:
        for name, steps, sampler in tqdm(cells, desc="nfe study", unit="run"):
            counter.count = 0
            t0 = time.perf_counter()
            fake, labels = draw(module, cfg, sampler, device)
            seconds = time.perf_counter() - t0
            batches = -(-cfg.num_samples // cfg.batch_size)
            row: dict[str, Any] = {"sampler": name, "steps": steps, "nfe": counter.count // batches,
                                   "seconds": round(seconds, 3), "seconds_per_sample": seconds / cfg.num_samples}
            for mname, fn in metrics.items():
                value = fn(fake, real, labels)
                row[mname] = None if value is None else float(value)
            rows.append(row)
            log.info("%s", row)
    finally:
        counter.close()
    names = list(metrics)
    csv_path, md_path = write_table(rows, names, run_dir)
    png = plot(rows, names, run_dir, f"{Path(str(cfg.ckpt_path)).name}: {cfg.num_samples} samples, seed {seed}")
    summary = update_summary(run_dir, {"status": "finished", "seed": seed, "ckpt_path": str(cfg.ckpt_path),
                                       "num_samples": int(cfg.num_samples), "num_real": int(len(real)),
                                       "rows": rows, "files": {"csv": str(csv_path), "markdown": str(md_path),
                                                               "plot": str(png)}})
    log.info("NFE study:\n%s", md_path.read_text())
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="nfe_study")
def main(cfg: DictConfig) -> None:
    nfe_study(cfg)


if __name__ == "__main__":
    check_argv_or_exit("nfe_study")
    main()

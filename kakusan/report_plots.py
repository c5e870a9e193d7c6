"""Pictures for an ablation: a metric against each swept value (error bars over seeds) and training curves."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .report_table import Group, mean_std  # noqa: E402

# Curves drawn from csv/metrics.csv when present, in this order.
CURVE_COLUMNS = ("train/loss_step", "train/loss_epoch", "val/loss")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def group_label(group: Group, skip: Sequence[str] = ()) -> str:
    parts = [f"{k.split('.')[-1]}={v}" for k, v in group.values.items() if k not in skip]
    return ", ".join(parts) or "all runs"


def plot_metric_vs_key(groups: Sequence[Group], key: str, metric: str, path: Path) -> Path | None:
    """``metric`` (mean ± std over seeds) against the swept ``key``; one line per setting of the other keys."""
    others = [k for k in groups[0].values if k != key]
    lines: dict[str, list[tuple[Any, float, float, int]]] = {}
    for group in groups:
        vals = [float(r.summary[metric]) for r in group.finished if _is_number(r.summary.get(metric))]
        if not vals:
            continue
        mean, std = mean_std(vals)
        label = ", ".join(f"{k.split('.')[-1]}={group.values[k]}" for k in others) or metric
        lines.setdefault(label, []).append((group.values[key], mean, std, len(vals)))
    if not lines:
        return None
    numeric = all(_is_number(x) for pts in lines.values() for x, *_ in pts)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, pts in lines.items():
        if numeric:
            pts = sorted(pts, key=lambda p: float(p[0]))
        xs = [p[0] if numeric else str(p[0]) for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=4, label=label)
    if numeric:
        xs_all = [float(x) for pts in lines.values() for x, *_ in pts]
        if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
            ax.set_xscale("log")
    ns = sorted({p[3] for pts in lines.values() for p in pts})
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {key.split('.')[-1]} (mean ± std, n={'/'.join(map(str, ns))})", fontsize=9)
    return _save(fig, ax, path, legend=len(lines) > 1 or bool(others))


def _save(fig, ax, path: Path, legend: bool) -> Path:
    """Finish a line plot (legend, grid, tight layout), write it to ``path`` and free the figure."""
    if legend:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _curve(run_curves: pd.DataFrame, column: str) -> pd.Series | None:
    if column not in run_curves or "step" not in run_curves:
        return None
    s = run_curves[["step", column]].dropna()
    if s.empty:
        return None
    return s.groupby("step")[column].last()


def plot_curves(groups: Sequence[Group], column: str, path: Path) -> Path | None:
    """``column`` of ``csv/metrics.csv`` against the step: one line per group (mean over seeds, ± std band)."""
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    drawn = 0
    for group in groups:
        series = [c for c in (_curve(r.curves(), column) for r in group.finished) if c is not None]
        if not series:
            continue
        table = pd.concat(series, axis=1, join="inner")
        if table.empty:
            continue
        steps = table.index.to_numpy()
        mean = table.mean(axis=1).to_numpy()
        line, = ax.plot(steps, mean, marker="." if len(steps) < 30 else None,
                        label=f"{group_label(group)} (n={table.shape[1]})")
        if table.shape[1] > 1:
            std = table.std(axis=1, ddof=1).to_numpy()
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color())
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(column)
    ax.set_title(f"{column} (mean over seeds, band = ± std)", fontsize=9)
    return _save(fig, ax, path, legend=True)


def draw_all(groups: Sequence[Group], metrics: Sequence[str], out: Path) -> list[Path]:
    """Every plot for a report: metric vs each swept key, and the training curves found in the CSV logs."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    keys = list(groups[0].values) if groups else []
    for key in keys:
        if len({str(g.values[key]) for g in groups}) < 2:
            continue
        for metric in metrics:
            p = plot_metric_vs_key(groups, key, metric, out / f"{safe_name(metric)}_vs_{safe_name(key)}.png")
            if p:
                paths.append(p)
    columns = [c for c in CURVE_COLUMNS if any(c in r.curves() for g in groups for r in g.finished)]
    for column in columns:
        p = plot_curves(groups, column, out / f"curve_{safe_name(column)}.png")
        if p:
            paths.append(p)
    return paths


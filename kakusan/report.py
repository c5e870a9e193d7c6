"""Ablation reports from run folders: CSV + Markdown tables and PNG plots (no W&B needed).

>>> from kakusan.report import make_report
>>> report = make_report(["logs/train/multiruns/2026-01-01_00-00-00-000000"])
>>> print(report.markdown)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .report_plots import draw_all
from .report_runs import Run, load_runs
from .report_table import Group, differing_keys, group_runs, grouped_table, markdown, metric_names, runs_table


@dataclass
class Report:
    runs: list[Run]
    keys: list[str]          # config keys that differ between runs (seed included)
    metrics: list[str]
    groups: list[Group]      # runs that differ only by seed
    runs_df: pd.DataFrame    # one row per run
    table: pd.DataFrame      # one row per group: config values, n, failed, "<metric> mean/std"
    markdown: str
    out: Path | None
    files: list[Path]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]


def default_out(paths: Sequence[str | Path]) -> Path:
    """``<folder>/report`` for one folder (a multirun), else ``./report``."""
    return Path(paths[0]) / "report" if len(paths) == 1 else Path("report")


def make_report(paths: Sequence[str | Path], metrics: Sequence[str] | None = None, out: str | Path | None = None,
                plots: bool = True, write: bool = True, title: str | None = None) -> Report:
    """Read the runs under ``paths`` and build (and, with ``write``, save) the ablation report.

    Files in ``out``: ``runs.csv`` (one row per run, failed ones included with their error),
    ``table.csv`` (one row per setting, mean/std/n over seeds), ``report.md``, and PNG plots.
    """
    runs = load_runs(paths)
    keys = differing_keys(runs)
    names = metric_names(runs, metrics)
    groups = group_runs(runs, keys)
    title = title or f"Ablation: {', '.join(str(p) for p in paths)}"
    report = Report(runs=runs, keys=keys, metrics=names, groups=groups, runs_df=runs_table(runs, keys, names),
                    table=grouped_table(groups, names), markdown=markdown(groups, names, runs, title),
                    out=None, files=[])
    if write:
        out_dir = Path(out) if out is not None else default_out(paths)
        out_dir.mkdir(parents=True, exist_ok=True)
        report.out = out_dir
        report.runs_df.to_csv(out_dir / "runs.csv", index=False)
        report.table.to_csv(out_dir / "table.csv", index=False)
        (out_dir / "report.md").write_text(report.markdown)
        report.files = [out_dir / "runs.csv", out_dir / "table.csv", out_dir / "report.md"]
        if plots:
            pngs = draw_all(groups, names, out_dir)
            report.files += pngs
            if pngs:
                report.markdown += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
                (out_dir / "report.md").write_text(report.markdown)
    return report

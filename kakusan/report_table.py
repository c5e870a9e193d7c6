"""The ablation table: one row per run, config keys that differ as columns, seeds folded into mean ± std."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import UserError
from .report_runs import Run

SEED_KEYS = ("seed",)
# Bookkeeping numbers in summary.json that are not results.
NOT_METRICS = ("seed", "global_step", "epochs", "status", "error")
NOT_METRIC_PREFIXES = ("lr-",)  # LearningRateMonitor values: settings, not results


def _hashable(value: Any) -> str:
    """A comparable text form of a config value (lists and dicts included); missing keys are ``-``."""
    if value is _MISSING:
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


class _Missing:
    def __repr__(self) -> str:
        return "-"


_MISSING = _Missing()


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value is not the same in every run (overridden keys first, in their order)."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    differ = [k for k in keys if len({_hashable(r.config.get(k, _MISSING)) for r in runs}) > 1]
    order: dict[str, int] = {}
    for run in runs:
        for item in run.overrides:
            key = item.split("=", 1)[0].lstrip("+~")
            order.setdefault(key, len(order))
    return sorted(differ, key=lambda k: (order.get(k, len(order)), k))


def metric_names(runs: Sequence[Run], wanted: Sequence[str] | None = None) -> list[str]:
    """Numeric results found in the summaries (or ``wanted``, checked to exist somewhere)."""
    found: dict[str, None] = {}
    for run in runs:
        for key, value in run.summary.items():
            if (key not in NOT_METRICS and not key.startswith(NOT_METRIC_PREFIXES)
                    and isinstance(value, (int, float)) and not isinstance(value, bool)):
                found[key] = None
    if wanted:
        missing = [m for m in wanted if m not in found]
        if missing:
            raise UserError(f"metric(s) {', '.join(missing)} appear in no run's summary.json; "
                            f"available: {', '.join(sorted(found)) or 'none (no run finished)'}.")
        return list(wanted)
    return sorted(found, key=lambda k: (not k.startswith(("val/", "test/")), k))


def runs_table(runs: Sequence[Run], keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run: name, status, the differing config values, the metrics, the error if any."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "status": run.status}
        for key in keys:
            value = run.config.get(key, None)
            row[key] = _hashable(value) if isinstance(value, (list, dict)) else value
        for metric in metrics:
            value = run.summary.get(metric)
            row[metric] = float(value) if isinstance(value, (int, float)) and run.ok else math.nan
        row["error"] = run.error or ""
        row["path"] = str(run.path)
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Group:
    """Runs whose configs differ only in the seed."""

    key: tuple[str, ...]
    values: dict[str, Any]
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.ok]


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Group runs by every differing key except the seed, in first-seen order."""
    group_keys = [k for k in keys if k not in SEED_KEYS]
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = {k: run.config.get(k, _MISSING) for k in group_keys}
        key = tuple(_hashable(v) for v in values.values())
        groups.setdefault(key, Group(key, {k: (None if v is _MISSING else v) for k, v in values.items()}, []))
        groups[key].runs.append(run)
    return list(groups.values())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def grouped_table(groups: Sequence[Group], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per group: its config values, ``n`` (finished runs), ``failed``, mean and std per metric."""
    rows = []
    for group in groups:
        row: dict[str, Any] = {k: (_hashable(v) if isinstance(v, (list, dict)) else v) for k, v in group.values.items()}
        row["n"] = len(group.finished)
        row["failed"] = len(group.runs) - len(group.finished)
        for metric in metrics:
            vals = [float(r.summary[metric]) for r in group.finished
                    if isinstance(r.summary.get(metric), (int, float))]
            row[f"{metric} mean"], row[f"{metric} std"] = mean_std(vals)
        rows.append(row)
    return pd.DataFrame(rows)


def fmt(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cell = lambda v: "" if v is None else " ".join(str(v).split()).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown(groups: Sequence[Group], metrics: Sequence[str], runs: Sequence[Run], title: str = "Ablation") -> str:
    """The grouped table (mean ± sample std over seeds, n) and the list of failed/incomplete runs."""
    keys = list(groups[0].values) if groups else []
    header = [*keys, *metrics, "n"]
    if any(len(g.finished) < len(g.runs) for g in groups):
        header.append("failed")
    rows = []
    for group in groups:
        ok = group.finished
        row: list[Any] = [_hashable(v) if isinstance(v, (list, dict)) else v for v in group.values.values()]
        for metric in metrics:
            vals = [float(r.summary[metric]) for r in ok if isinstance(r.summary.get(metric), (int, float))]
            row.append(fmt(*mean_std(vals), len(vals)))
        row.append(len(ok))
        if "failed" in header:
            row.append(len(group.runs) - len(ok))
        rows.append(row)
    seeds = sorted({str(r.config.get("seed")) for r in runs})
    text = [f"## {title}", "",
            f"{len(runs)} runs, {len(groups)} settings; mean ± sample std (ddof=1) over seeds ({', '.join(seeds)}); "
            f"n = finished runs.", "", _md_table(header, rows)]
    bad = [r for r in runs if not r.ok]
    if bad:
        text += ["", f"### Failed or incomplete runs ({len(bad)})", "",
                 _md_table(["run", "status", "error", "path"], [[r.name, r.status, r.error, r.path] for r in bad])]
    return "\n".join(text) + "\n"

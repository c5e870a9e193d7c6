"""Ablation report: ``python -m experiments.report PATH [PATH ...] [--metrics M ...] [--out DIR]``.

PATH is a multirun folder (``logs/<task>/multiruns/<time>``, one job folder per run) or run folders.
Prints the table (one row per setting, mean ± std over seeds, n) and writes ``runs.csv``,
``table.csv``, ``report.md`` and PNG plots to ``--out`` (default ``PATH/report``). Failed runs are
listed with their error. Works from the local folders alone; W&B is not needed.
"""
from __future__ import annotations

import argparse
import sys

from kakusan.errors import UserError
from kakusan.report import make_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="multirun folder(s) or run folders")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="summary.json keys to report (default: every numeric result, e.g. val/loss)")
    p.add_argument("--out", default=None, help="output folder (default: PATH/report, or ./report for several)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--title", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = make_report(args.paths, metrics=args.metrics, out=args.out, plots=not args.no_plots, title=args.title)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown.split("\n![")[0].rstrip())
    print(f"\nwrote {len(report.files)} files to {report.out}")
    if report.failed:
        print(f"{len(report.failed)} of {len(report.runs)} runs failed or are incomplete (listed above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

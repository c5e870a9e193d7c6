"""``resume=auto``: find the run this command already started, and its newest readable checkpoint."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
IGNORED_OVERRIDE_KEYS = ("resume", "hydra.run.dir", "hydra.sweep.dir", "callbacks.fault_injection")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def comparable_overrides(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if not _key(o).startswith(IGNORED_OVERRIDE_KEYS))


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Checkpoints of a run folder, newest first (by modification time; ``last.ckpt`` wins ties)."""
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    return sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)


def readable_checkpoint(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """Return the newest checkpoint that loads, its content, and a message for each corrupt one skipped."""
    problems = []
    for path in checkpoint_candidates(run_dir):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if "state_dict" not in ckpt:
                raise ValueError("no state_dict")
            return path, ckpt, problems
        except Exception as e:  # noqa: BLE001 - any failure means "not usable"
            msg = f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}); falling back to an older one"
            log.error(msg)
            problems.append(msg)
    return None, None, problems


def same_overrides(run_dir: Path, overrides: list[str]) -> bool:
    """Whether the run in ``run_dir`` was started with ``overrides`` (as ``resume=auto`` compares them)."""
    try:
        started = json.loads((run_dir / "manifest.json").read_text()).get("overrides", [])
    except (OSError, json.JSONDecodeError):
        return False
    return comparable_overrides(started) == comparable_overrides(overrides)


def find_resumable_run(runs_root: Path, overrides: list[str], exclude: Path | None = None) -> Path | None:
    """Newest run folder under ``runs_root`` started with the same overrides that did not finish."""
    if not runs_root.is_dir():
        return None
    wanted = comparable_overrides(overrides)
    for run in sorted((p for p in runs_root.iterdir() if p.is_dir()), reverse=True):
        if exclude is not None and run.resolve() == exclude.resolve():
            continue
        manifest, summary = run / "manifest.json", run / "summary.json"
        if not manifest.is_file() or not checkpoint_candidates(run):
            continue
        try:
            m = json.loads(manifest.read_text())
            status = json.loads(summary.read_text()).get("status") if summary.is_file() else None
        except json.JSONDecodeError:
            continue
        if status == "finished":
            continue
        if comparable_overrides(m.get("overrides", [])) == wanted:
            return run
    return None

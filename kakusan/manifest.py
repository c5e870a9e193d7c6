"""``manifest.json``: what is needed to reproduce a run (code state, packages, seed, hardware, command)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kakusan", "torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf", "wandb", "numpy",
            "einops", "torchmetrics", "clean-fid", "scikit-learn", "mlxtend", "diffusers", "open-clip-torch")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    diff = _git("diff", "HEAD")
    return {"commit": commit.strip() if commit else None,
            "dirty": bool(status.strip()) if status is not None else None,
            "diff": diff if diff else ""}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    return info


def command_line(overrides: list[str] | None = None, module: str | None = None) -> str:
    if module:
        return " ".join(["python", "-m", module, *map(shlex.quote, overrides or [])])
    return " ".join(map(shlex.quote, [sys.executable, *sys.argv]))


def write_manifest(run_dir: str | Path, seed: int | None, overrides: list[str] | None = None,
                   module: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    git = git_state()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(),
        "git_commit": git["commit"], "git_dirty": git["dirty"],
        "git_diff_file": "git_diff.patch" if git["diff"] else None,
        "packages": package_versions(), "seed": seed, "hardware": hardware(),
        "argv": sys.argv, "overrides": overrides or [], "command": command_line(overrides, module),
        "cwd": os.getcwd(),
        **(extra or {}),
    }
    if git["diff"]:
        (run_dir / "git_diff.patch").write_text(git["diff"])
    path = run_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path

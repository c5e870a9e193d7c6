"""``manifest.json``: what is needed to reproduce a run (code state, packages, seed, hardware, command).

Reproducing a run from its folder::

    git checkout <git_commit>
    git apply <run>/git_diff.patch          # uncommitted changes, new (untracked) source files included
    <manifest["reproduce"]>                  # env + python -m experiments.train <overrides> hydra.run.dir=...

``manifest["command"]`` is the bare entry-point call with the job's own overrides (one value each,
also for a multirun job), ``manifest["reproduce"]`` adds the environment variables that change
results and a fresh run folder.
"""
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

from . import CHECKOUT as PROJECT_ROOT
from .ddp_launch import global_rank

PACKAGES = ("kakusan", "torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf", "wandb", "numpy",
            "einops", "torchmetrics", "clean-fid", "scikit-learn", "mlxtend", "diffusers", "open-clip-torch")
# Environment variables that change what a run reads or computes (recorded, and set by ``reproduce``).
ENV_VARS = ("KAKUSAN_DATA_DIR", "KAKUSAN_CACHE_DIR", "KAKUSAN_THREADS", "PROJECT_ROOT", "CUBLAS_WORKSPACE_CONFIG",
            "PYTHONHASHSEED", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
# Untracked files whose content goes into the patch (new configs and code), and a size cap per file.
TEXT_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".json", ".txt", ".md", ".sh")
MAX_UNTRACKED_BYTES = 200_000


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def untracked_files() -> list[str]:
    """Files git does not track and does not ignore (new code or configs not yet committed)."""
    out = _git("ls-files", "--others", "--exclude-standard")
    return [line for line in (out or "").splitlines() if line]


def new_file_patch(rel: str, text: str) -> str:
    """A git-style patch that creates ``rel`` with content ``text`` (what ``git apply`` expects)."""
    lines = text.splitlines(keepends=True)
    body = "".join("+" + line for line in lines)
    if lines and not lines[-1].endswith("\n"):
        body += "\n\\ No newline at end of file\n"
    header = f"diff --git a/{rel} b/{rel}\nnew file mode 100644\n--- /dev/null\n+++ b/{rel}\n"
    return header + (f"@@ -0,0 +1,{len(lines)} @@\n" + body if lines else "")


def untracked_patch(paths: list[str]) -> tuple[str, list[str]]:
    """A patch that creates the small text files among ``paths``; returns it and the files left out."""
    parts, skipped = [], []
    for rel in paths:
        path = PROJECT_ROOT / rel
        try:
            if path.suffix not in TEXT_SUFFIXES or path.stat().st_size > MAX_UNTRACKED_BYTES:
                skipped.append(rel)
                continue
            parts.append(new_file_patch(rel, path.read_text()))
        except (OSError, UnicodeDecodeError):
            skipped.append(rel)
    return "".join(parts), skipped


def git_state() -> dict[str, Any]:
    """Commit, dirty flag (tracked changes or untracked files), the full patch and the untracked names."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    diff = _git("diff", "HEAD") or ""
    untracked = untracked_files() if commit else []
    extra, not_in_patch = untracked_patch(untracked)
    tracked_dirty = bool(status.strip()) if status is not None else None
    return {"commit": commit.strip() if commit else None,
            "dirty": (tracked_dirty or bool(untracked)) if tracked_dirty is not None else None,
            "diff": diff + extra, "untracked": untracked, "untracked_not_in_patch": not_in_patch}


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
        info["cudnn_version"] = torch.backends.cudnn.version()
    return info


def environment() -> dict[str, str]:
    return {k: os.environ[k] for k in ENV_VARS if k in os.environ}


def command_line(overrides: list[str] | None = None, module: str | None = None) -> str:
    if module:
        return " ".join(["python", "-m", module, *map(shlex.quote, overrides or [])])
    return " ".join(map(shlex.quote, [sys.executable, *sys.argv]))


def reproduce_command(command: str, env: dict[str, str], multirun: bool) -> str:
    """``command`` with the recorded environment and a new run folder (a job of a sweep runs alone)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    extra = " hydra.mode=RUN" if multirun else ""
    run_dir = "hydra.run.dir=" + shlex.quote("logs/reproduce/${now:%Y-%m-%d_%H-%M-%S-%f}")
    return f"{prefix + ' ' if prefix else ''}{command}{extra} {run_dir}"


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def write_manifest(run_dir: str | Path, seed: int | None, overrides: list[str] | None = None,
                   module: str | None = None, extra: dict[str, Any] | None = None,
                   resumed_from: str | None = None) -> Path:
    """Write ``run_dir/manifest.json`` (and ``git_diff.patch`` when the tree is dirty); rank 0 only.

    Processes of ranks > 0 (DDP children, SLURM tasks) share rank 0's run folder: they write nothing
    and get the path back.
    """
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    if global_rank() != 0:
        return path
    git = git_state()
    run_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    command = command_line(overrides, module)
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(),
        "git_commit": git["commit"], "git_dirty": git["dirty"],
        "git_diff_file": "git_diff.patch" if git["diff"] else None,
        "git_untracked": git["untracked"], "git_untracked_not_in_patch": git["untracked_not_in_patch"],
        "packages": package_versions(), "seed": seed, "hardware": hardware(),
        "argv": sys.argv, "overrides": overrides or [], "command": command,
        "reproduce": reproduce_command(command, env, _is_multirun()) if module else command,
        "env": env, "cwd": os.getcwd(),
        **(extra or {}),
    }
    if git["diff"]:
        (run_dir / "git_diff.patch").write_text(git["diff"])
    if resumed_from and path.is_file():
        # resume=auto continues an earlier run's folder: keep its record and append this relaunch
        original = json.loads(path.read_text())
        original.setdefault("resumes", []).append({"created": manifest["created"], "checkpoint": resumed_from,
                                                   "argv": manifest["argv"], "git_commit": manifest["git_commit"]})
        manifest = original
    path.write_text(json.dumps(manifest, indent=2))
    return path

"""Atomic checkpoint writes: a kill during a write never leaves a truncated file behind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | Path, before_replace: Callable[[Path], None] | None = None) -> None:
    """``torch.save`` into a temporary file in the same folder, fsync, then ``os.replace``.

    ``os.replace`` is atomic on POSIX: readers see the old file or the new one, never a mix. A process
    killed before the rename leaves ``.<name>.tmp-<pid>``, which the next run of the folder removes
    (:func:`kakusan.run_folder.remove_stale_temp_files`). ``before_replace(tmp)`` runs between the two
    (fault-injection tests kill the process there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes local files atomically (remote paths use Lightning's own)."""

    before_replace: Callable[[Path], None] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path, self.before_replace)

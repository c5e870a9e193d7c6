"""Run folders are never lost: one owner at a time, no silent re-use, no debris left by a kill.

A run folder belongs to the run that created it. :func:`claim_run_folder` is the only way a task
starts writing into one:

- a folder that already holds a run (its ``manifest.json``, ``summary.json`` or checkpoints) is
  refused unless the task resumes that very run; the refusal names the folder, says what is in it
  and how to continue it or start a new one, and changes nothing in it;
- a lock file (``.lock``: PID, host, process start time, command) makes a second process that
  wants the same folder stop with a message naming the holder; a lock whose process is gone (a
  SIGKILL, a node crash) is taken over, and the takeover is logged;
- temporary files of an interrupted atomic write (``.*.tmp-PID``, ``*.tmp<PID>``) are removed;
- Hydra's ``.hydra/`` record (the composed config, Hydra's own config and the overrides) is written
  here, for a new run only: Hydra itself is told not to write it (``hydra.output_subdir: null``), so
  nothing touches a folder before its owner is known.

The lock is released when the task ends (:func:`release_run_folder`, called by the task wrapper),
and at interpreter exit.
"""
from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .ddp_launch import global_rank
from .errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RUN_MARKERS = ("manifest.json", "summary.json")


class RunFolderConflict(UserError):
    """The run folder holds another run, or another process is writing it. Nothing was written."""


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a run: its manifest, its summary or a checkpoint."""
    run_dir = Path(run_dir)
    if any((run_dir / name).is_file() for name in RUN_MARKERS):
        return True
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(ckpts.glob("*.ckpt"))


def describe_run(run_dir: Path) -> str:
    """One phrase about the run in a folder: status, creation time and overrides, as far as known."""
    parts = []
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        parts.append(f"status: {summary.get('status', 'unknown')}")
    except (OSError, json.JSONDecodeError):
        parts.append("status: unfinished (no summary)")
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        parts.append(f"started {manifest.get('created', '?')}")
        overrides = manifest.get("overrides") or []
        parts.append("overrides: " + (" ".join(overrides) if overrides else "none"))
    except (OSError, json.JSONDecodeError):
        pass
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ lock
def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a live process
    from a later one that reuses its PID; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    now_started = process_start_time(pid)
    return started is None or now_started is None or now_started == started


@dataclass
class RunLock:
    path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def release(self) -> None:
        current = read_lock(self.path)
        if current.get("pid") == os.getpid() and current.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)


_HELD: dict[Path, RunLock] = {}


def _lock_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start_time(os.getpid()),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv}


def acquire_lock(run_dir: Path) -> RunLock:
    """Create ``run_dir/.lock`` atomically, or take over a stale one; refuse a live holder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    info = _lock_info()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            pid, host = holder.get("pid"), holder.get("host")
            if pid == os.getpid() and host == info["host"]:
                return _HELD.setdefault(run_dir, RunLock(path, holder))  # this process holds it already
            if isinstance(pid, int) and host == info["host"] and process_alive(pid, holder.get("started")):
                command = " ".join(holder.get("argv") or []) or "?"
                raise RunFolderConflict(
                    f"{run_dir} is in use by another process: PID {pid} on {host}, since {holder.get('since', '?')} "
                    f"({command}). Two processes writing one run folder would corrupt it, so this one stops and "
                    f"writes nothing. Wait for it to finish (or stop it), then run the command again.")
            if host not in (None, info["host"]):
                raise RunFolderConflict(
                    f"{run_dir} is locked by PID {pid} on another machine ({host}, since {holder.get('since', '?')}); "
                    f"this machine cannot tell whether it still runs. If it does not, delete {path} and run again.")
            log.warning("took over the lock of %s from PID %s (%s), which is no longer running", run_dir, pid,
                        holder.get("since", "?"))
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
        lock = RunLock(path, info)
        _HELD[run_dir] = lock
        return lock
    raise RunFolderConflict(f"could not lock {run_dir}: another process keeps taking it")


def release_run_folder(run_dir: str | Path | None = None) -> None:
    """Release the lock on ``run_dir`` (every folder this process holds when None) and put back any
    deferred log file (its held-back records dropped unless the folder was claimed)."""
    release_log_files(flush=False)
    keys = list(_HELD) if run_dir is None else [Path(run_dir)]
    for key in keys:
        lock = _HELD.pop(key, None)
        if lock is not None:
            lock.release()


def owns(run_dir: str | Path) -> bool:
    return Path(run_dir) in _HELD


atexit.register(release_run_folder)


def read_lock(path: Path) -> dict[str, Any]:
    """The holder recorded in a lock file; {} when it is missing, unreadable or not ours."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def check_unlocked(run_dir: Path) -> None:
    """Refuse early (before anything is built or logged) when a live process holds ``run_dir``'s lock."""
    if global_rank() != 0:
        return
    holder = read_lock(run_dir / LOCK_NAME)
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() \
            and process_alive(pid, holder.get("started")):
        acquire_lock(run_dir)  # raises the message that names the holder


# ------------------------------------------------------------------------------------------ log files
_DEFERRED: list[tuple[logging.Handler, logging.handlers.MemoryHandler]] = []


def defer_log_files(run_dir: Path) -> None:
    """Hold back what the job's log files in ``run_dir`` would receive until the folder is claimed: a
    refused command must not append to an existing run's log (the console still shows everything)."""
    if global_rank() != 0:
        return  # ranks > 0 write into the folder rank 0 owns
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            memory = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1, target=handler)
            memory.setLevel(handler.level)
            root.removeHandler(handler)
            root.addHandler(memory)
            _DEFERRED.append((handler, memory))


def release_log_files(flush: bool) -> None:
    """Put the deferred log files back; their held-back records are written when ``flush``."""
    root = logging.getLogger()
    while _DEFERRED:
        handler, memory = _DEFERRED.pop()
        root.removeHandler(memory)
        if flush:
            memory.flush()
        else:
            memory.buffer.clear()
        memory.target = None
        root.addHandler(handler)


# ------------------------------------------------------------------------------------------ claim
def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left behind (checkpoints, summary)."""
    patterns = [("checkpoints", ".*.tmp-*"), (".", "summary.json.tmp*"), ("faults", ".*.tmp-*")]
    removed = []
    for sub, pattern in patterns:
        folder = run_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.glob(pattern):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(path)
            log.warning("removed %s (%.1f MB), left by an interrupted write", path, size / 2**20)
    return removed


def write_hydra_record(run_dir: Path, cfg: Any) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as Hydra would write them."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=False)
    try:
        hc = HydraConfig.get()
    except ValueError:  # composed in-process (notebooks, tests): no Hydra job
        return
    OmegaConf.save(OmegaConf.create({"hydra": hc}), out / "hydra.yaml", resolve=False)
    OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), out / "overrides.yaml")


def check_not_taken(run_dir: Path, how_to_continue: str | None = None) -> None:
    """Refuse a folder that already holds a run; the message says how to continue it or start anew.
    Ranks > 0 of a distributed run share rank 0's folder and are never refused."""
    if global_rank() != 0 or not holds_run(run_dir):
        return
    cont = how_to_continue or "A run folder belongs to the run that created it."
    raise RunFolderConflict(
        f"{run_dir} already holds a run ({describe_run(run_dir)}); nothing in it was changed. {cont} "
        f"To start a new run, leave out hydra.run.dir (every run gets a new timestamped folder) or choose a "
        f"folder that does not exist yet.")


def claim_run_folder(run_dir: str | Path, cfg: Any = None, resuming: bool = False,
                     how_to_continue: str | None = None) -> Path:
    """Make this process the owner of ``run_dir`` (see the module docstring); rank 0 only.

    ``resuming``: the folder holds the run this task continues (no refusal, no new ``.hydra/``).
    """
    run_dir = Path(run_dir)
    if global_rank() != 0:
        return run_dir
    if not resuming:
        check_not_taken(run_dir, how_to_continue)
    acquire_lock(run_dir)
    if not resuming and holds_run(run_dir):  # another process created it between the check and the lock
        release_run_folder(run_dir)
        check_not_taken(run_dir, how_to_continue)
    release_log_files(flush=True)
    remove_stale_temp_files(run_dir)
    if cfg is not None and not resuming:
        write_hydra_record(run_dir, cfg)
    return run_dir

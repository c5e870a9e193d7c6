"""Weights & Biases without prompts: offline unless the user has configured W&B."""
from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def configure_wandb_env() -> str:
    """Choose the W&B mode before any ``wandb.init`` and return it.

    An explicit ``WANDB_MODE`` wins; otherwise ``online`` when an API key or a netrc login exists,
    else ``offline``. ``WANDB_CONSOLE``/login prompts are never reached: offline runs need no login.
    """
    mode = os.environ.get("WANDB_MODE")
    if not mode:
        mode = "online" if wandb_credentials_present() else "offline"
        os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "false")
    return mode


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run (if any), recording failure; never raises."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
    except Exception:  # noqa: BLE001 - closing must never hide the real error
        pass


def _log_records(data: bytes):
    """Records of W&B's transaction log (``run-<id>.wandb``: a LevelDB-style log of 32 KiB blocks)."""
    import struct

    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (no ':W&B' header)")
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def read_offline_run(folder: str | Path) -> dict:
    """Id, group, tags, name and exit code of an offline run folder (``wandb/offline-run-*``), read from its
    transaction log without a server: check what a sweep logged before ``wandb sync``."""
    from wandb.proto import wandb_internal_pb2

    folder = Path(folder)
    info: dict = {"folder": str(folder), "exit_code": None}
    for data in _log_records(next(folder.glob("run-*.wandb")).read_bytes()):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(run_id=rec.run.run_id, group=rec.run.run_group, tags=list(rec.run.tags),
                        name=rec.run.display_name)
        elif kind == "exit":
            info["exit_code"] = rec.exit.exit_code
    return info

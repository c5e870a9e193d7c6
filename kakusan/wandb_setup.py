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

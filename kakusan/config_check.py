"""Catch config typos before Hydra starts, and list the valid keys with close matches."""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def _groups() -> set[str]:
    return {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}


def explain_override_error(overrides: list[str], config_name: str = "train") -> str | None:
    """Return a one-paragraph message if an override names a key or option that does not exist."""
    plain = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "hydra.", "-"))]
    groups = _groups()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            # compose with the group choices only, then check every dotted key against the result
            group_ovr = [o for o in plain if o.split("=", 1)[0] in groups]
            try:
                cfg = compose(config_name=config_name, overrides=group_ovr)
            except Exception as e:  # noqa: BLE001 - an unknown option of a group
                key, value = group_ovr[0].split("=", 1) if group_ovr else ("?", "?")
                for o in group_ovr:
                    k, v = o.split("=", 1)
                    options = sorted(p.stem for p in (Path(CONFIG_DIR) / k).rglob("*.yaml"))
                    if v not in options and v != "null":
                        close = difflib.get_close_matches(v, options, n=3)
                        hint = f" Did you mean {' or '.join(close)}?" if close else ""
                        return f"'{k}={v}': there is no {k} config named '{v}'. Options: {', '.join(options)}.{hint}"
                return f"cannot compose the config: {e}"
    finally:
        GlobalHydra.instance().clear()
    for o in plain:
        key = o.split("=", 1)[0]
        if key in groups or key in cfg:
            continue
        parts = key.split(".")
        node: object = cfg
        for i, part in enumerate(parts):
            if isinstance(node, DictConfig) and part in node:
                node = node[part]
                continue
            if isinstance(node, DictConfig):
                valid = sorted(str(k) for k in node.keys())
                where = ".".join(parts[:i]) or "the top level"
                close = difflib.get_close_matches(part, valid, n=3)
                hint = f" Did you mean {' or '.join('.'.join(parts[:i] + [c]) for c in close)}?" if close else ""
                return (f"'{key}' is not a config key: '{part}' does not exist under {where}. "
                        f"Valid keys there: {', '.join(valid)}.{hint} To add a new key on purpose, write +{o}.")
            break
    return None


def check_argv_or_exit(config_name: str = "train") -> None:
    """Run before ``hydra.main``: a typo exits with code 2 and a readable message, no traceback."""
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    if any(a in ("--help", "-h", "--cfg", "-c", "--info") for a in sys.argv[1:]) or "-m" in sys.argv or "--multirun" in sys.argv:
        args = [a for a in args if "," not in a]  # sweep values are checked per job by Hydra
    try:
        msg = explain_override_error(args, config_name)
    except Exception:  # noqa: BLE001 - never block a valid run because the checker failed
        return
    if msg:
        print(f"\nerror: {msg}\n", file=sys.stderr)
        sys.exit(2)


def valid_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    node = OmegaConf.select(cfg, prefix) if prefix else cfg
    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []

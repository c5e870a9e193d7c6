"""Check command-line overrides before Hydra starts: typos get the valid keys and close matches, and
keys that are valid arguments of a config's ``_target_`` pass without Hydra's ``+``.

A config node with a ``_target_`` lists only some of the arguments of the class or function it
builds (``trainer`` lists a dozen of ``pytorch_lightning.Trainer``'s ~50). Hydra rejects any other key
unless it is written ``+trainer.max_steps=20``; here a key that the target's signature accepts is
rewritten to that form, so ``trainer.max_steps=20`` works as typed, while ``trainer.max_step=20``
still stops with "Did you mean trainer.max_steps". ``+key=value`` for a key that already exists
(Hydra's own suggestion for some errors) becomes ``++key=value`` (set it either way).
"""
from __future__ import annotations

import difflib
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def _groups() -> set[str]:
    return {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}


def group_options(group: str) -> list[str]:
    """The options of a config group: its files (names starting with ``_`` are building blocks, not
    options) and the nodes registered in Hydra's config store (``sampler=checkpoint``)."""
    from hydra.core.config_store import ConfigStore

    files = {p.relative_to(Path(CONFIG_DIR) / group).with_suffix("").as_posix()
             for p in (Path(CONFIG_DIR) / group).rglob("*.yaml") if not p.name.startswith("_")}
    stored = ConfigStore.instance().repo.get(group, {})
    return sorted(files | {name.removesuffix(".yaml") for name in stored if isinstance(name, str)})


def target_parameters(node: DictConfig) -> set[str] | None:
    """Keyword arguments the node's ``_target_`` accepts; None when it takes ``**kwargs`` or cannot be
    imported (then nothing is added on its behalf)."""
    from hydra.utils import get_method

    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not isinstance(target, str):
        return None
    try:
        fn = get_method(target)
        sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:  # noqa: BLE001 - a target that does not import is Hydra's error to report later
        return None
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}


@dataclass
class Checked:
    """The overrides as they should reach Hydra, or the message that stops the command."""

    overrides: list[str] = field(default_factory=list)
    error: str | None = None


def _split(override: str) -> tuple[str, str, str]:
    """``(prefix, key, value)`` of ``[+|++|~]key=value``."""
    prefix = "++" if override.startswith("++") else override[:1] if override[:1] in "+~" else ""
    body = override[len(prefix):]
    key, _, value = body.partition("=")
    return prefix, key, value


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def check_overrides(overrides: list[str], config_name: str = "train", sweep: bool = False) -> Checked:
    """Check ``overrides`` against the composed config (see the module docstring).

    ``sweep``: values may be sweep lists (``a,b``, ``range(...)``); only keys and group options are
    checked then.
    """
    groups = _groups()
    group_ovr, other = [], []
    for o in overrides:
        if o.startswith("-") or "=" not in o:
            continue
        prefix, key, value = _split(o)
        if not prefix and key in groups:
            options = group_options(key)
            values = [v.strip() for v in value.split(",")] if sweep else [value]
            for v in values:
                if v not in options and v != "null" and not (sweep and "(" in v):
                    close = difflib.get_close_matches(v, options, n=3)
                    hint = f" Did you mean {' or '.join(close)}?" if close else ""
                    return Checked(error=f"'{key}={v}': there is no {key} config named '{v}'. Options: "
                                         f"{', '.join(options)}.{hint}")
            if not (sweep and "," in value):
                group_ovr.append(o)
        else:
            other.append(o)
    try:
        cfg = _compose(config_name, group_ovr)
    except Exception as e:  # noqa: BLE001 - e.g. a group option that exists but does not compose
        return Checked(error=f"cannot compose the config: {e}")

    out = []
    for o in overrides:
        if o.startswith("-") or "=" not in o or o not in other:
            out.append(o)
            continue
        prefix, key, value = _split(o)
        if key.startswith("hydra.") or key.startswith("hydra/") or prefix in ("~", "++"):
            out.append(o)
            continue
        exists = _exists(cfg, key)
        if prefix == "+":
            out.append(f"++{key}={value}" if exists else o)
            continue
        if exists:
            out.append(o)
            continue
        problem = _missing_key(cfg, key, o)
        if problem is None:
            out.append(f"+{o}")
        else:
            return Checked(error=problem)
    return Checked(overrides=out)


def _exists(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` is in ``cfg`` (also when its value is ``???``, which ``in`` hides)."""
    node: object = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def _missing_key(cfg: DictConfig, key: str, override: str) -> str | None:
    """None when ``key`` is an argument of the ``_target_`` of the node it would live in, else the message."""
    parts = key.split(".")
    node: object = cfg
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node.keys():
            node = node._get_node(part)
            continue
        if not isinstance(node, DictConfig):
            where = ".".join(parts[:i])
            return f"'{key}' is not a config key: {where} is a value, not a group of keys."
        params = target_parameters(node)
        if i == len(parts) - 1 and params is not None and part in params:
            return None
        valid = sorted({str(k) for k in node.keys()} | (params or set()))
        where = ".".join(parts[:i]) or "the top level"
        close = difflib.get_close_matches(part, valid, n=3)
        hint = f" Did you mean {' or '.join('.'.join(parts[:i] + [c]) for c in close)}?" if close else ""
        shown = ", ".join(valid) if len(valid) <= 40 else ", ".join(sorted(str(k) for k in node.keys()))
        return (f"'{key}' is not a config key: '{part}' does not exist under {where}. "
                f"Valid keys there: {shown}.{hint} To add a new key on purpose, write +{override}.")
    return None


def check_argv_or_exit(config_name: str = "train") -> None:
    """Run before ``hydra.main``: a typo exits with code 2 and a readable message (no traceback);
    otherwise ``sys.argv`` gets the overrides as Hydra should see them (see the module docstring)."""
    argv = sys.argv[1:]
    if any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help", "--shell-completion") for a in argv):
        return
    sweep = "-m" in argv or "--multirun" in argv
    positions = [i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")]
    try:
        checked = check_overrides([argv[i] for i in positions], config_name, sweep=sweep)
    except Exception:  # noqa: BLE001 - never block a valid run because the checker failed
        return
    if checked.error:
        print(f"\nerror: {checked.error}\n", file=sys.stderr)
        sys.exit(2)
    for i, new in zip(positions, checked.overrides):
        argv[i] = new
    sys.argv[1:] = argv


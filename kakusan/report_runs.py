"""Reading finished (or failed) runs from their folders, for ablation reports. No W&B needed.

A run folder holds ``.hydra/config.yaml`` (the composed config, written before the job starts),
``.hydra/overrides.yaml``, ``summary.json`` (final numbers and ``status``), ``failure.json`` when it
failed, ``manifest.json`` and ``csv/metrics.csv`` (the CSV logger's curves). A multirun folder holds
one such folder per job (``0/``, ``1/``, ...).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from omegaconf import OmegaConf

from .errors import UserError

RUN_MARKERS = (".hydra/config.yaml", "summary.json", "manifest.json")


@dataclass
class Run:
    """One run: where it is, its config (flattened ``a.b.c`` keys), final numbers and status."""

    path: Path
    name: str
    config: dict[str, Any]
    overrides: list[str]
    summary: dict[str, Any]
    status: str  # finished | failed | incomplete
    error: str | None = None
    _curves: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "finished"

    def curves(self) -> pd.DataFrame:
        """The CSV logger's table (``step``, ``epoch``, one column per logged metric); empty if absent."""
        if self._curves is None:
            self._curves = read_curves(self.path)
        return self._curves


def is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_run_dirs(paths: Iterable[str | Path], max_depth: int = 4) -> list[Path]:
    """Run folders named in ``paths`` or found below them (multirun folders, folders of runs)."""
    found: list[Path] = []
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.is_dir():
            raise UserError(f"{root} is not a folder. Give run folders (each with .hydra/ and summary.json) "
                            f"or multirun folders (logs/<task>/multiruns/<time>) to the report.")
        if is_run_dir(root):
            found.append(root)
            continue
        level = [root]
        for _ in range(max_depth):
            nxt = []
            for folder in level:
                for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    if child.name in ("wandb", "checkpoints", "samples", "csv"):
                        continue
                    (found if is_run_dir(child) else nxt).append(child)
            level = nxt
    unique = sorted(dict.fromkeys(p.resolve() for p in found), key=_natural_key)
    if not unique:
        raise UserError(f"no run folders found in {', '.join(map(str, paths))}: a run folder has .hydra/config.yaml, "
                        f"summary.json or manifest.json. Point the report at a multirun folder or at run folders.")
    return unique


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (``[1, 2]``)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "+c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        try:
            parsed = OmegaConf.to_container(OmegaConf.create({"v": value}))["v"]  # type: ignore[index]
        except Exception:  # noqa: BLE001 - a Hydra-only syntax (sweeps, functions): keep the text
            parsed = value
        out[key.lstrip("+~")] = parsed
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_curves(run_dir: Path) -> pd.DataFrame:
    candidates = [run_dir / "csv" / "metrics.csv", *sorted((run_dir / "csv").glob("version_*/metrics.csv"))]
    for path in candidates:
        if path.is_file():
            try:
                return pd.read_csv(path)
            except (pd.errors.EmptyDataError, pd.errors.ParserError):
                break
    return pd.DataFrame()


def load_run(path: Path, name: str | None = None) -> Run:
    """Read one run folder; a folder without a summary counts as ``incomplete`` (crashed or running)."""
    config: dict[str, Any] = {}
    cfg_file = path / ".hydra" / "config.yaml"
    if cfg_file.is_file():
        config = flatten(OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False))
    overrides: list[str] = []
    ovr_file = path / ".hydra" / "overrides.yaml"
    manifest = _read_json(path / "manifest.json")
    if ovr_file.is_file():
        overrides = [str(o) for o in (OmegaConf.to_container(OmegaConf.load(ovr_file)) or [])]
    elif manifest.get("overrides"):
        overrides = list(manifest["overrides"])
    if not config:  # no .hydra folder: the overrides are all we know
        config = parse_overrides(overrides)
        if manifest.get("seed") is not None:
            config.setdefault("seed", manifest["seed"])
    summary = _read_json(path / "summary.json")
    failure = _read_json(path / "failure.json")
    if failure or summary.get("status") == "failed":
        status, error = "failed", failure.get("error") or summary.get("error") or "failed (no message)"
    elif summary.get("status") == "finished":
        status, error = "finished", None
    else:
        status, error = "incomplete", "no summary.json with status 'finished' (crashed, killed or still running)"
    return Run(path=path, name=name or path.name, config=config, overrides=overrides, summary=summary,
               status=status, error=error)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under ``paths``, named by their path relative to the common parent."""
    dirs = find_run_dirs(list(paths))
    common = Path(*_common_parts(dirs)) if len(dirs) > 1 else dirs[0].parent
    return [load_run(d, str(d.relative_to(common)) if d != common else d.name) for d in dirs]


def _common_parts(dirs: list[Path]) -> list[str]:
    parts = [d.parts for d in dirs]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return common or ["/"]

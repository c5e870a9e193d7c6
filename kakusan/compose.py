"""Compose a run's config in-process, as ``experiments.train`` would see it under ``@hydra.main``.

For notebooks, benchmarks and tests that build modules from the real configs without launching a
Hydra job: the result has its ``hydra`` node removed, ``HydraConfig`` is set (interpolations such as
``${hydra:runtime.output_dir}`` resolve) and the run folder is ``out``.
"""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, open_dict

from .config_check import check_overrides
from .errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def compose_run_config(overrides: list[str], out: str | Path, config_name: str = "train",
                       private_cache: bool = False) -> DictConfig:
    """``configs/<config_name>.yaml`` with ``overrides``, its run folder (``paths.output_dir``) at ``out``.

    Overrides mean what they mean on the command line: an argument of a config's ``_target_`` needs no
    ``+`` (:mod:`kakusan.config_check`). ``private_cache`` puts ``paths.cache_dir`` inside the run folder
    too (tests use it so that no run reads a cache another one wrote). Hydra's global state is cleared
    before and after.
    """
    out = Path(out)
    overrides = list(overrides)
    try:
        cfg = _compose(config_name, overrides)
    except ConfigCompositionException:
        checked = check_overrides(overrides, config_name)
        if checked.error:
            raise UserError(checked.error) from None
        cfg = _compose(config_name, checked.overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
        if private_cache:
            cfg.paths.cache_dir = str(out / "cache")
        del cfg["hydra"]
    return cfg

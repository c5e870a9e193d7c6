"""kakusan (拡散): glue shared by the entry points — run folders, manifests, W&B set-up, summaries."""
import os
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

CHECKOUT = Path(__file__).resolve().parents[1]

# Paths the configs interpolate (configs/paths/default.yaml). They are resolvers rather than
# ${hydra:runtime.cwd} because Hydra resolves the sweep folder of a multirun before its runtime
# exists: `${kakusan.cwd:}` is the folder the command was launched from (where logs/ goes) and
# `${kakusan.checkout:}` this checkout (beside which ../shared/data lives).
OmegaConf.register_new_resolver("kakusan.cwd", lambda: os.getcwd(), replace=True)
OmegaConf.register_new_resolver("kakusan.checkout", lambda: str(CHECKOUT), replace=True)


def _register_checkpoint_sampler() -> None:
    """``sampler=checkpoint``: keep the sampler stored in a checkpoint and change only the keys given
    (``experiments.sample ckpt_path=... sampler.steps=100``). Its keys are every key of every sampler
    config in ``configs/sampler/``, all null (= the checkpoint's value), so it never needs editing."""
    import yaml
    from hydra.core.config_store import ConfigStore

    keys: dict[str, None] = {}
    for path in sorted((CHECKOUT / "configs" / "sampler").glob("*.yaml")):
        node = yaml.safe_load(path.read_text()) or {}
        keys.update({k: None for k in node if k != "defaults"})
    ConfigStore.instance().store(group="sampler", name="checkpoint", node=keys)


_register_checkpoint_sampler()

"""Hydra + DDP without output-folder clashes.

Lightning's DDP strategy on one node starts ranks 1..N-1 by re-running the command line
(``python -m experiments.train ARGS``) with ``hydra.run.dir`` set to the parent's ``hydra.run.dir``.
That breaks in two ways:

- in a multirun, ``ARGS`` still holds ``-m`` and the swept lists, so every child would launch the
  whole sweep again, and ``hydra.run.dir`` is not the job's folder (the job lives in
  ``hydra.sweep.dir/<num>``), so each child would write a second run folder;
- an ``hparams_search`` config sets ``hydra.mode: MULTIRUN``, which turns the child into a sweep too.

:func:`child_command` builds the child's command from what Hydra resolved for *this job*: the job's
own overrides (one value each), the config name/path flags, the job's output folder as
``hydra.run.dir`` and ``hydra.mode=RUN``. :func:`install` makes Lightning use it. The children write
no ``.hydra/`` folder (``hydra.output_subdir=null``); only rank 0 writes the manifest, summary and
W&B run (see :func:`global_rank`).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

# Hydra overrides that describe how the parent was launched, not what the job is.
_DROP_HYDRA = ("hydra.mode", "hydra.sweep", "hydra.run", "hydra.job.", "hydra.output_subdir", "hydra.sweeper",
               "hydra/sweeper", "hydra.launcher", "hydra/launcher")
_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


def global_rank() -> int:
    """This process's rank from the launcher's environment (0 when not distributed).

    Read before the Trainer exists, so entry points can skip rank-0-only work (manifest, summary)
    in the processes that Lightning or SLURM start for ranks > 0.
    """
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def config_flags(argv: Sequence[str]) -> list[str]:
    """The ``--config-name/-cn``, ``--config-path/-cp`` and ``--config-dir/-cd`` flags of a command line."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            out += [arg, argv[i + 1]]
            i += 2
            continue
        if any(arg.startswith(flag + "=") for flag in _CONFIG_FLAGS):
            out.append(arg)
        i += 1
    return out


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def child_command(local_rank: int) -> tuple[list[str], str]:
    """The command (and working directory) that starts rank ``local_rank`` of the current Hydra job."""
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hc = HydraConfig.get()
    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", spec.name]
    command += config_flags(sys.argv[1:])
    command += [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(_DROP_HYDRA)]
    command += list(hc.overrides.task)
    command += [f"hydra.run.dir={_quote(str(hc.runtime.output_dir))}",
                f"hydra.job.name={hc.job.name}_ddp_rank_{local_rank}",
                "hydra.output_subdir=null", "hydra.mode=RUN"]
    return command, get_original_cwd()


def install() -> None:
    """Make Lightning's subprocess launcher start DDP ranks with :func:`child_command` (idempotent)."""
    modules = []
    try:
        from lightning_fabric.strategies.launchers import subprocess_script as fabric_launcher

        modules.append(fabric_launcher)
    except ImportError:  # pragma: no cover - lightning_fabric ships with pytorch_lightning
        pass
    try:
        from pytorch_lightning.strategies.launchers import subprocess_script as pl_launcher

        modules.append(pl_launcher)
    except ImportError:  # pragma: no cover
        pass
    for module in modules:
        if hasattr(module, "_hydra_subprocess_cmd"):
            module._hydra_subprocess_cmd = child_command

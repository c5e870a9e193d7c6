"""Shared pieces of the benchmarks: config composition, timing statistics, peak memory, machine info.

Everything here is measurement plumbing; what is measured lives in ``train_bench.py`` and
``sample_bench.py``.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")


def compose_train_cfg(overrides: list[str], out_dir: str | None = None):
    """Compose ``configs/train.yaml`` as ``experiments.train`` would see it; the run folder
    (``paths.output_dir``) is a fresh temporary folder unless ``out_dir`` is given."""
    from kakusan.compose import compose_run_config

    return compose_run_config(overrides, out_dir or tempfile.mkdtemp(prefix="kakusan-bench-"))


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------- statistics
@dataclass
class Result:
    """Throughputs of the timed repetitions of one variant (items per second) and its peak memory."""

    group: str
    variant: str
    unit: str
    params: int | None = None
    reps: list[float] = field(default_factory=list)  # items per wall-clock second
    cpu_reps: list[float] = field(default_factory=list)  # items per CPU second of this process
    peak_mb: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.reps) if self.reps else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_reps) if self.cpu_reps else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median over repetitions, in percent."""
        if len(self.reps) < 2:
            return 0.0
        return 100.0 * (max(self.reps) - min(self.reps)) / self.median


def markdown_table(results: list[Result], reference: dict[str, str]) -> str:
    """One Markdown table; ``reference[group]`` names the variant the ratios are taken against.

    Wall-clock throughput is what a user sees; throughput per CPU-second of this process is the
    steadier figure on a shared machine (other processes' load inflates wall time, not CPU time).
    """
    lines = ["| benchmark | variant | params | throughput, wall (median) | spread (max-min)/median | ratio | "
             "throughput per CPU-second (median) | ratio (CPU) | peak memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ref = next((x for x in results if x.group == r.group and x.variant == reference.get(r.group)), None)
        ratio = f"{r.median / ref.median:.2f}x" if ref is not None and ref.median > 0 else "-"
        cratio = f"{r.cpu_median / ref.cpu_median:.2f}x" if ref is not None and ref.cpu_median > 0 else "-"
        params = f"{r.params / 1e6:.3f} M" if r.params else "-"
        mem = f"{r.peak_mb:.0f} MB" if r.peak_mb is not None else "-"
        variant = r.variant + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.group} | {variant} | {params} | {r.median:.2f} {r.unit} | {r.spread:.0f}% | {ratio} | "
                     f"{r.cpu_median:.2f} {r.unit} | {cratio} | {mem} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device, interval: float = 0.002) -> Iterator[dict[str, float]]:
    """Peak memory of the block in MB: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak
    resident set size (sampled every ``interval`` s from /proc) minus the size before the block.

    Run it in separate, untimed passes: the sampling thread itself costs CPU time.
    """
    box: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield box
        torch.cuda.synchronize(device)
        box["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        box["peak_mb"] = (peak[0] - base) / 2**20


# ------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_description(device: torch.device) -> str:
    import pytorch_lightning

    try:
        import diffusers

        dver = diffusers.__version__
    except ImportError:
        dver = "not installed"
    parts = [f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
             f"torch {torch.__version__}, pytorch-lightning {pytorch_lightning.__version__}, diffusers {dver}, "
             f"Python {platform.python_version()}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        parts.append(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, bf16 autocast")
    else:
        parts.append("device: CPU, float32")
    return "\n".join(f"- {p}" for p in parts)

"""The run's CSV log (``csv/metrics.csv``), kept whole across resumes.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts in a folder that has one,
so after a resume the file held only the steps since the resume. :class:`RunCSVLogger` instead
keeps the rows logged before the step the run resumes from (the checkpoint's ``global_step``; later
rows were logged after that checkpoint and are logged again by the resumed run), appends under the same columns, and writes every row as
it is logged, so a kill loses none of the rows a checkpoint already covers.
"""
from __future__ import annotations

import csv
from typing import Any

from lightning_fabric.loggers.csv_logs import _ExperimentWriter as _FabricWriter
from pytorch_lightning.loggers import CSVLogger
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _ResumingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep the rows logged up to ``resume_step`` (Lightning's writer deletes the file instead)."""
        if self._resume_step is None or not self._fs.isfile(self.metrics_file_path):
            return _FabricWriter._check_log_dir_exists(self)
        with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") not in (None, "") and int(float(r["step"])) < self._resume_step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = fields


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` on resume (``resume_step``: the checkpoint's
    ``global_step``, set by the training entry point) and flushes every ``flush_logs_every_n_steps`` steps."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir, resume_step=self._resume_step)
        return self._experiment

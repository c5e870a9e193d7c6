"""Every sweep of the README, run as a user types it: the whole code block, command by command, as real
processes from a fresh working directory.

The only changes to a command are size-reducing overrides appended at its end (fewer steps, samples,
trials and clips; each listed below) and the README's placeholders (RUN, S1, S2, REG, <time>) replaced
by the folders the block's own earlier commands made. A sweep block that this file does not know
fails the test, so a new README sweep cannot go untested; and each block's report must find its
sweep folder where the README names it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

README = ROOT / "README.md"
# Size-reducing overrides, appended to a command according to what it runs (entry point, experiment).
SMALL_TRAIN = ["debug=limit", "trainer.max_epochs=1"]
REDUCE = {
    "train": SMALL_TRAIN,
    "train experiment=video_ldm_moving_mnist": SMALL_TRAIN + ["data.num_train=32", "data.num_val=16", "data.batch_size=8"],
    "train experiment=hand_stage1": SMALL_TRAIN + ["data.batch_size=16"],
    "train experiment=hand_stage2": SMALL_TRAIN + ["data.batch_size=16"],
    "train hparams_search=mnist_optuna": SMALL_TRAIN + ["hydra.sweeper.n_trials=2"],
    "evaluate": ["num_samples=20", "batch_size=20", "sampler.steps=2"],
    "hands": ["num_samples=4", "batch_size=4", "sampler.steps=2", "metrics.fid_extractor=null", "figure.num=4"],
    "report": [],
}
# The run folder each placeholder stands for: the training of this experiment earlier in the block.
PLACEHOLDERS = {"S1": "hand_stage1", "S2": "hand_stage2", "REG": "hand_keypoint_regressor"}


def readme_blocks() -> list[list[str]]:
    """The commands of each ```bash block of the README (continuation lines joined, comments cut)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        commands, current = [], ""
        for line in body.splitlines():
            current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
            if line.rstrip().endswith("\\"):
                continue
            command = re.split(r"\s+#", current, maxsplit=1)[0].strip()
            current = ""
            if command:
                commands.append(command)
        blocks.append(commands)
    return blocks


def is_sweep(command: str) -> bool:
    return bool(re.match(r"python -m experiments\.\w+ -m ", command))


SWEEP_BLOCKS = [b for b in readme_blocks() if any(is_sweep(c) for c in b)]


def reducers(command: str) -> list[str]:
    words = shlex.split(command)
    entry = words[2].split(".", 1)[1]
    for word in words[3:]:
        if f"{entry} {word}" in REDUCE:
            return REDUCE[f"{entry} {word}"]
    return REDUCE[entry]


def run_folder(cwd: Path, task: str) -> Path:
    runs = sorted((cwd / "logs" / task / "runs").glob("*/checkpoints/last.ckpt"))
    assert runs, f"no run of {task} under {cwd}/logs"
    return runs[-1].parent.parent


def prepare(command: str, cwd: Path, trained: dict[str, Path]) -> list[str]:
    """The command's words with placeholders replaced, plus its size reducers."""
    words = []
    for word in shlex.split(command)[1:]:  # "python" -> this interpreter
        for name, task in {**PLACEHOLDERS, "RUN": None}.items():
            if re.search(rf"(^|=){name}/", word):
                folder = trained[task] if task else trained["RUN"]
                word = re.sub(rf"(^|=){name}/", lambda m: f"{m.group(1)}{folder}/", word)
        if "<time>" in word:
            matches = sorted(cwd.glob(word.replace("<time>", "*")))
            assert len(matches) == 1, f"{word}: the sweep folder is not where the README says ({matches})"
            word = str(matches[0])
        words.append(word)
    if words[1].startswith("experiments."):
        words += reducers(command)
    return [sys.executable, *words]


@pytest.mark.slow
@pytest.mark.parametrize("block", SWEEP_BLOCKS, ids=lambda b: next(c for c in b if is_sweep(c)).split()[4][:40])
def test_readme_sweep_block_runs_as_written(block, tmp_path):
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "KAKUSAN_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("PROJECT_ROOT", None)
    trained: dict[str, Path] = {}
    for command in block:
        argv = prepare(command, cwd, trained)
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        words = shlex.split(command)
        if words[2] == "experiments.train" and not is_sweep(command):
            experiment = next((w.split("=", 1)[1] for w in words if w.startswith("experiment=")), "ddpm_mnist")
            trained[experiment] = trained["RUN"] = run_folder(cwd, experiment)
        if is_sweep(command):
            sweeps = [p for p in (cwd / "logs").glob("*/multiruns/*") if p.is_dir()]
            assert len(sweeps) == 1, sweeps
            jobs = [p for p in sweeps[0].iterdir() if (p / "summary.json").is_file()]
            assert jobs and all(json.loads((j / "summary.json").read_text())["status"] == "finished" for j in jobs)
    sweep = sweeps[0]
    if any(c.startswith("python -m experiments.report") for c in block):
        table = (sweep / "report" / "table.csv").read_text().splitlines()
        rows = {"model.optimizer.lr=1e-4,2e-4": 2, "hparams_search=mnist_optuna": 2, "guidance_scale=1,2,4": 3,
                "experiment=video_ldm_moving_mnist": 4}
        sweep_cmd = next(c for c in block if is_sweep(c))
        expected = next(n for key, n in rows.items() if key in sweep_cmd)
        assert len(table) == 1 + expected, table
        if "seed=0,1,2" in sweep_cmd:  # seeds fold into mean ± std over n = 3
            assert all(line.split(",")[1:3] == ["3", "0"] for line in table[1:]), table
    else:  # the hands entry point writes its own table into the sweep folder
        assert len((sweep / "ablation_table.md").read_text().splitlines()) == 2 + len(jobs)
    if "hparams_search=mnist_optuna" in " ".join(block):
        import yaml

        best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
        values = [json.loads((j / "summary.json").read_text())["val/loss"] for j in jobs]
        assert best == pytest.approx(min(values))


def test_every_readme_sweep_block_is_tested():
    """The sweep blocks are the ones the README shows (a new one is picked up by the test above)."""
    sweeps = sorted(next(c for c in b if is_sweep(c)).split()[2] for b in SWEEP_BLOCKS)
    assert sweeps.count("experiments.train") >= 2 and "experiments.evaluate" in sweeps and "experiments.hands" in sweeps

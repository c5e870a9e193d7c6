"""The sampling entry point end to end on CPU: a tiny checkpoint, outputs, seeds, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch

from experiments.sample import sample
from kakusan.run import resolved_config
from tests.conftest import compose_cfg

TINY = ["model.net.base_channels=8", "model.net.channel_mult=[1,2]", "model.net.attention_resolutions=[]"]


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory) -> Path:
    """A checkpoint as experiments.train writes it (weights + resolved run config) of a tiny
    class-conditional MNIST U-Net with random weights (training is tested in test_train.py; a random
    net gives distinct conditional and unconditional outputs, which is what these tests need)."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg = compose_cfg(TINY + ["experiment=ddpm_mnist_cond", "debug=limit", "sampler.steps=2", "sampler.clip_x0=false"], out)
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model)
    with torch.no_grad():  # zero-initialised output layers would make every prediction 0
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.ema.shadow.load_state_dict(model.net.state_dict())
    path = out / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "kakusan": {"config": resolved_config(cfg)}}, path)
    return path


@pytest.fixture(scope="module")
def uncond_ckpt(tmp_path_factory) -> Path:
    """The same for the unconditional main-job model (random weights)."""
    out = tmp_path_factory.mktemp("uncond")
    cfg = compose_cfg(TINY + ["debug=limit", "sampler.steps=2"], out)
    model = hydra.utils.instantiate(cfg.model)
    path = out / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "kakusan": {"config": resolved_config(cfg)}}, path)
    return path


def run_sample(make_cfg, ckpt: Path, sub: str, *overrides: str) -> Path:
    cfg = make_cfg([f"ckpt_path={ckpt}", "num_samples=3", "batch_size=2", *overrides], config_name="sample", sub=sub)
    sample(cfg)
    return Path(cfg.paths.output_dir)


def test_same_seed_bit_identical_other_seed_differs(make_cfg, cond_ckpt):
    runs = [run_sample(make_cfg, cond_ckpt, sub, "sampler=ddim", "sampler.steps=2", "sampler.progress=false", f"seed={s}")
            for sub, s in (("a", 0), ("b", 0), ("c", 1))]
    npz = [np.load(r / "samples.npz") for r in runs]
    assert npz[0]["samples"].shape == (3, 1, 32, 32) and npz[0]["images"].shape == (3, 32, 32, 1)
    assert npz[0]["images"].dtype == np.uint8 and npz[0]["samples"].dtype == np.float32
    assert npz[0]["labels"].tolist() == [0, 1, 2]  # labels cycle through the classes
    assert np.array_equal(npz[0]["samples"], npz[1]["samples"])  # seed 0 honoured, bit for bit
    assert not np.array_equal(npz[0]["samples"], npz[2]["samples"])
    assert (runs[0] / "samples.png").read_bytes() == (runs[1] / "samples.png").read_bytes()
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["seed"] == 0 and summary["num_samples"] == 3
    assert summary["sampler"]["_target_"].endswith("DDIMSampler") and summary["sampler"]["steps"] == 2
    assert summary["time/seconds_per_sample"] > 0
    # x0 clipping follows the checkpoint's sampler (trained with clip_x0=false, e.g. latents), not ddim.yaml
    assert summary["sampler"]["clip_x0"] is False
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["command"].startswith("python -m experiments.sample")
    assert manifest["ckpt_path"] == str(cond_ckpt)


def test_class_label_guidance_and_other_samplers(make_cfg, cond_ckpt):
    run = run_sample(make_cfg, cond_ckpt, "g", "sampler=dpm_solver", "sampler.steps=2", "sampler.progress=false",
                     "class_label=7", "guidance_scale=3.0")
    npz = np.load(run / "samples.npz")
    assert npz["labels"].tolist() == [7] * 3 and np.isfinite(npz["samples"]).all()
    # guidance scale 3 changes the samples; scale 1 is the plain conditional model
    plain = np.load(run_sample(make_cfg, cond_ckpt, "p", "sampler=dpm_solver", "sampler.steps=2",
                               "sampler.progress=false", "class_label=7", "guidance_scale=1.0") / "samples.npz")
    assert not np.array_equal(plain["samples"], npz["samples"])
    # no sampler given: the checkpoint's own (here a 2-step DDPM sampler)
    own = run_sample(make_cfg, cond_ckpt, "own", "num_samples=1")
    assert json.loads((own / "summary.json").read_text())["sampler"]["_target_"].endswith("DDPMSampler")
    # an explicit setting on the command line wins over the checkpoint's
    explicit = run_sample(make_cfg, cond_ckpt, "e", "num_samples=1", "sampler=ddim", "sampler.steps=1",
                          "sampler.clip_x0=true")
    assert json.loads((explicit / "summary.json").read_text())["sampler"]["clip_x0"] is True


def test_changing_the_checkpoint_samplers_steps_alone(make_cfg, cond_ckpt):
    """``sampler.steps=1`` (no sampler named) changes only the steps of the checkpoint's own sampler; Hydra's
    ``+sampler.steps=1`` means the same."""
    from kakusan.config_check import check_overrides

    for typed in ("sampler.steps=1", "+sampler.steps=1"):
        override = check_overrides([typed], "sample").overrides[0]
        run = run_sample(make_cfg, cond_ckpt, f"steps{len(typed)}", "num_samples=1", override)
        used = json.loads((run / "summary.json").read_text())["sampler"]
        assert used["_target_"].endswith("DDPMSampler") and used["steps"] == 1  # trained with DDPM, 2 steps
        assert used["clip_x0"] is False  # everything else as stored


def test_guidance_scale_errors_are_one_paragraph(make_cfg, cond_ckpt, uncond_ckpt, capsys):
    for ckpt, scale, expected in ((uncond_ckpt, "3", "this model is unconditional"),
                                  (uncond_ckpt, "-1", "guidance_scale must be >= 0"),
                                  (cond_ckpt, "-1", "guidance_scale must be >= 0")):
        with pytest.raises(SystemExit) as e:
            run_sample(make_cfg, ckpt, f"g{scale}{ckpt.parent.parent.name}", f"guidance_scale={scale}")
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and "Traceback" not in err


def test_bad_input_fails_before_sampling(make_cfg, cond_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # user errors exit with code 2 and one paragraph
        run_sample(make_cfg, cond_ckpt, "x", "sampler=ddim", "sampler.steps=5000")
    assert e.value.code == 2
    assert "steps must lie in [1, 1000]" in capsys.readouterr().err
    failure = json.loads((tmp_path / "x" / "failure.json").read_text())
    assert "invalid sampler settings" in failure["error"] and not (tmp_path / "x" / "samples.npz").exists()
    with pytest.raises(SystemExit):
        run_sample(make_cfg, cond_ckpt, "y", "class_label=12")
    with pytest.raises(SystemExit):
        run_sample(make_cfg, cond_ckpt.parent / "missing.ckpt", "z")


def test_nfe_study_tables_plot_and_metrics(make_cfg, cond_ckpt):
    """The NFE study on the tiny checkpoint: real FID (digits features) and class accuracy per cell."""
    from experiments.nfe_study import nfe_study

    cfg = make_cfg([f"ckpt_path={cond_ckpt}", "steps=[1,2,5000]", "num_samples=4", "batch_size=4",
                    "real_num_samples=40", "samplers.ddpm.max_steps=1", "samplers.ddim.spacing=trailing"], config_name="nfe_study", sub="nfe")
    summary = nfe_study(cfg)
    run = Path(cfg.paths.output_dir)
    rows = summary["rows"]
    # 5000 > 1000 training steps is skipped; DDPM (max_steps=1) at 1 step, DDIM and DPM-Solver at 1 and 2
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 1), ("ddim", 1), ("ddim", 2), ("dpm_solver", 1),
                                                          ("dpm_solver", 2)]
    assert [r["nfe"] for r in rows] == [1, 1, 2, 1, 2]  # counted network calls, not assumed
    assert all(r["fid"] > 0 and 0.0 <= r["class_accuracy"] <= 1.0 and r["seconds_per_sample"] > 0 for r in rows)
    lines = (run / "nfe_study.csv").read_text().splitlines()
    assert lines[0] == "sampler,steps,nfe,fid,class_accuracy,seconds_per_sample,seconds" and len(lines) == 6
    assert (run / "nfe_study.md").read_text().startswith("| sampler | steps | nfe | fid |")
    assert (run / "nfe_study.png").stat().st_size > 1000 and (run / "manifest.json").is_file()
    # 1-step DDIM (trailing) and 1-step DPM-Solver++ both return the x0 prediction at t=999: same samples
    assert rows[1]["fid"] == pytest.approx(rows[3]["fid"], rel=1e-4)


def test_nfe_study_rejects_unknown_metric(make_cfg, cond_ckpt):
    from experiments.nfe_study import nfe_study

    cfg = make_cfg([f"ckpt_path={cond_ckpt}", "+metrics.sharpness={}"], config_name="nfe_study", sub="bad")
    with pytest.raises(SystemExit) as e:
        nfe_study(cfg)
    assert e.value.code == 2


def test_energy_distance_metric_is_a_distance():
    from experiments.nfe_study import energy_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    same, shifted = energy_distance(a, b), energy_distance(a, b + 1.0)
    assert 0 < same < 0.05 < shifted  # 2 samples of one law are close; a shift by 1 is far

"""Two-stage hands: expansion schedule and hook, both stages' training runs, the pipeline, seam score,
and the ``experiments.hands`` entry (ablation, summary, figure, table) on tiny checkpoints."""
import json
from pathlib import Path

import hydra
import pytest
import torch

from datamodules.base import DataError
from datamodules.hands import HandsDataModule
from experiments.train import train
from lightning_modules.diffusion.mask_expansion import ExpansionSchedule, KnownRegionHook, dilate_mask
from lightning_modules.diffusion.samplers import DDPMSampler
from lightning_modules.diffusion.schedule import NoiseSchedule
from lightning_modules.hand_pipeline import HandTwoStagePipeline, RenderSettings
from lightning_modules.metrics.hand_seam import seam_score
from tests.conftest import compose_cfg

TINY = ["model.net.net.base_channels=8", "model.net.net.channel_mult=[1,2]", "model.net.net.attention_resolutions=[]",
        "data.batch_size=8", "logger=csv", "sampler.steps=3", "callbacks.sample_logger.num_samples=4",
        "callbacks.sample_logger.sampler.steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_expansion_schedule_monotone_and_reaches_end():
    s = ExpansionSchedule(r_start=-2, r_end=3, start_frac=0.2, end_frac=0.6)
    r = s.radii(50)
    assert len(r) == 50 and all(a <= b for a, b in zip(r, r[1:]))
    assert r[:10] == [-2] * 10                       # before start_frac
    assert all(v == 3 for v in r[29:]) and r[28] < 3  # r_end exactly from end_frac (step 30 of 50) on
    g = ExpansionSchedule(r_start=0, r_end=4, start_frac=0.0, end_frac=0.9, growth_per_step=1).radii(20)
    assert g[:5] == [1, 2, 3, 4, 4] and all(a <= b for a, b in zip(g, g[1:]))
    # r_end < r_start: the kept region shrinks (the outpainted region expands into the hand)
    k = ExpansionSchedule(r_start=2, r_end=-1, start_frac=0.0, end_frac=0.5).radii(12)
    assert k[0] == 2 and k[5:] == [-1] * 7 and all(a >= b for a, b in zip(k, k[1:]))
    assert ExpansionSchedule(r_start=2, r_end=-1, growth_per_step=1).radii(10)[:4] == [1, 0, -1, -1]
    with pytest.raises(ValueError, match="start_frac"):
        ExpansionSchedule(start_frac=0.8, end_frac=0.5)


def test_dilate_mask_grows_and_erodes():
    m = torch.zeros(1, 1, 16, 16)
    m[..., 6:10, 6:10] = 1
    assert dilate_mask(m, 2).sum() > m.sum() > dilate_mask(m, -1).sum() == 4
    assert torch.equal(dilate_mask(m, 0), m) and (dilate_mask(m, 2) >= m).all()


def test_hook_keeps_known_pixels_noised_at_every_step():
    sched = NoiseSchedule(kind="linear", num_timesteps=100)
    known = torch.rand(2, 3, 16, 16) * 2 - 1
    base = torch.zeros(2, 1, 16, 16)
    base[..., 5:11, 5:11] = 1
    steps = 8
    radii = ExpansionSchedule(r_start=-1, r_end=2, end_frac=0.75).radii(steps)
    hook = KnownRegionHook(sched, known, base, radii, generator=torch.Generator().manual_seed(0))
    seen = []

    def checking_hook(x, t_next, i):
        out = hook(x, t_next, i)
        m = hook.last_mask.bool().expand_as(x)
        assert torch.equal(out[m], hook.last_known[m]) and torch.equal(out[~m], x[~m])
        seen.append((t_next, int(hook.last_mask.sum())))
        return out

    out = DDPMSampler(steps=steps, progress=False).sample(lambda x, t: torch.zeros_like(x), sched, (2, 3, 16, 16),
                                                         generator=torch.Generator().manual_seed(1),
                                                         step_hook=checking_hook)
    assert len(seen) == steps and seen[-1][0] == -1
    sizes = [s for _, s in seen]
    assert all(a <= b for a, b in zip(sizes, sizes[1:])) and sizes[0] < sizes[-1]  # the mask grows
    final_mask = hook.mask(steps - 1).bool().expand_as(out)
    assert torch.equal(out[final_mask], known[final_mask])  # the last step pastes the clean hand
    # the noised known image is q_sample(known, t_next, eps): its residual has the schedule's noise level
    x_t = torch.randn(2, 3, 16, 16)
    hook(x_t, 50, 0)
    a = sched.sqrt_alphas_cumprod[50]
    eps = (hook.last_known - a * known) / sched.sqrt_one_minus_alphas_cumprod[50]
    assert 0.8 < eps.std() < 1.2


def test_seam_score_higher_for_pasted_with_offset(data_dir):
    dm = HandsDataModule(str(data_dir), view="frame", batch_size=8)
    real = dm.real_batch(32)
    x, box = real["x"], real["cond"]["box"]
    # paste region: the hand's square box (what stage 1 generates), pasted from a shifted, brighter copy
    yy, xx = torch.meshgrid((torch.arange(32) + 0.5) / 32, (torch.arange(32) + 0.5) / 32, indexing="ij")
    half = box[:, 2, None, None] / 2
    m = (((xx - box[:, 0, None, None]).abs() < half) & ((yy - box[:, 1, None, None]).abs() < half)).float()[:, None]
    m = m * dilate_mask(torch.ones_like(m), -2)  # keep the boundary inside the frame
    shifted = (torch.roll(x, shifts=(3, 3), dims=(2, 3)) + 0.15).clamp(-1, 1)
    pasted = m * shifted + (1 - m) * x
    s_real, s_paste = seam_score(x, m), seam_score(pasted, m)
    assert s_paste > 1.5 * s_real > 0
    assert torch.isclose(seam_score(x, m), seam_score(x, m))  # deterministic
    with pytest.raises(ValueError, match="does not match"):
        seam_score(x, m[:, :, :16, :16])


def test_seam_band_radii_cover_every_cut():
    from lightning_modules.metrics.hand_seam import boundary_band

    m = torch.zeros(1, 1, 16, 16)
    m[..., 5:11, 5:11] = 1  # a 6x6 square
    assert torch.equal(boundary_band(m, 1), boundary_band(m, 1, (0, 0)))
    band = boundary_band(m, 1, (-2, 1))
    # from the square eroded by 3 (rows 8..7: empty) to the square dilated by 2 (a rounded 10x10)
    assert band[0, 0, 7, 7] == 1 and band[0, 0, 5, 5] == 1 and band[0, 0, 3, 7] == 1 and band[0, 0, 2, 7] == 0
    assert band.sum() > boundary_band(m, 1).sum()
    # a seam cut anywhere inside the band is seen; one outside it is not
    img = torch.zeros(1, 3, 16, 16)
    img[..., :, 13:] = 1.0  # vertical edge between columns 12 and 13, two pixels outside the square
    assert seam_score(img, m, 1, radii=(-2, 1)) > 0 and seam_score(img, m, 1) == 0
    with pytest.raises(ValueError, match="lo <= hi"):
        boundary_band(m, 1, (1, -2))


def _tiny_run(name: str, out: Path, extra=()) -> Path:
    cfg = compose_cfg([f"experiment={name}", "debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                       "trainer.limit_val_batches=1"] + TINY + list(extra), out)
    summary = train(cfg)
    assert summary["status"] == "finished", summary
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hands")
    s1 = _tiny_run("hand_stage1", root / "s1")
    s2 = _tiny_run("hand_stage2", root / "s2")
    reg = compose_cfg(["experiment=hand_keypoint_regressor", "debug=limit", "trainer.max_epochs=1",
                       "model.net.channels=[8,8,8]", "model.net.feature_dim=16", "logger=csv"], root / "reg")
    assert train(reg)["status"] == "finished"
    return {"s1": s1, "s2": s2, "reg": root / "reg" / "checkpoints" / "last.ckpt", "root": root}


def test_stage_runs_saved_samples_and_checkpoints(ckpts):
    for k in ("s1", "s2"):
        run = ckpts[k].parents[1]
        assert ckpts[k].is_file() and (run / "samples" / "final.png").is_file()
        assert json.loads((run / "summary.json").read_text())["val/loss"] > 0


def test_pipeline_blends_keep_the_hand_and_reject_bad_input(ckpts, data_dir):
    pipe = HandTwoStagePipeline.from_checkpoints(str(ckpts["s1"]), str(ckpts["s2"]),
                                                 sampler=DDPMSampler(steps=4, progress=False))
    assert pipe.render == RenderSettings(32, 32, "skeleton", 1.0, 0.25, 0.25)
    real = HandsDataModule(str(data_dir), view="frame", batch_size=8).real_batch(3)
    kp, y = real["cond"]["keypoints"], real["y"]
    exp = pipe(kp, y, "expansion", ExpansionSchedule(r_start=-1, r_end=1), seed=0)
    assert exp.final.shape == (3, 3, 32, 32) and exp.hand_rgb.shape == (3, 3, 32, 32)
    assert exp.hand_mask.shape == (3, 1, 32, 32) and exp.mask.shape == (3, 1, 32, 32)
    keep = exp.composite_mask.bool().expand_as(exp.final)
    assert keep.any() and torch.allclose(exp.final[keep], exp.known[keep])
    again = pipe(kp, y, "expansion", ExpansionSchedule(r_start=-1, r_end=1), seed=0)
    assert torch.equal(exp.final, again.final)                              # seeded
    paste = pipe(kp, y, "paste", seed=0, hands=(exp.hand_rgb, exp.hand_mask))
    hm = paste.mask.bool().expand_as(paste.final)
    assert torch.allclose(paste.final[hm], paste.known[hm]) and torch.equal(paste.known, exp.known)
    # paste_radius moves the cut: the hand mask dilated by 2 pixels (inside the crop) is the stage-1 image
    wide = pipe(kp, y, "paste", seed=0, hands=(exp.hand_rgb, exp.hand_mask), paste_radius=2)
    ring = (wide.composite_mask.bool() & ~paste.mask.bool()).expand_as(wide.final)
    assert ring.any() and torch.allclose(wide.final[ring], wide.known[ring])
    assert torch.equal(wide.final[~wide.composite_mask.bool().expand_as(wide.final)],
                       paste.final[~wide.composite_mask.bool().expand_as(paste.final)])
    one = pipe(kp, y, "one_stage", seed=0)
    assert one.final.shape == (3, 3, 32, 32) and one.hand_rgb is None
    # a blind stage 2 (pose + label only) draws the one-stage frame; the paste then adds the hand alone
    blind = pipe(kp, y, "paste", seed=0, hands=(exp.hand_rgb, exp.hand_mask), stage2_sees_hand=False)
    assert torch.allclose(blind.final[hm], paste.known[hm]) and not torch.equal(blind.final, paste.final)
    assert torch.allclose(blind.final[~hm], one.final[~hm])
    bad = kp.clone()
    bad[0, 3] = torch.tensor([-0.5, 0.5])
    with pytest.raises(DataError, match="outside the image"):
        pipe(bad, y)
    few = kp.clone()
    few[1, 10:] = float("nan")
    with pytest.raises(DataError, match="detected joints"):
        pipe(few, y)
    with pytest.raises(DataError, match="does not match the hand crops"):
        pipe.place(exp.hand_rgb, exp.hand_mask[..., :16, :16], pipe.conditions(kp)["box"])


def test_hands_entry_ablation_summary_figure_and_table(ckpts, make_cfg, capsys):
    from experiments.hands import run_hands, write_ablation_table

    sweep = ckpts["root"] / "sweep"
    reals = []
    for i, ab in enumerate(("one_stage", "paste", "expansion", "outpaint_expansion")):
        cfg = compose_cfg([f"hands_ablation={ab}", f"stage1_ckpt={ckpts['s1']}", f"stage2_ckpt={ckpts['s2']}",
                           f"pose_ckpt={ckpts['reg']}", "num_samples=4", "batch_size=4", "sampler.steps=3",
                           "sampler.progress=false", "figure.num=2", "metrics.fid_extractor=null"],
                          sweep / str(i), config_name="hands")
        s = run_hands(cfg)
        assert s["status"] == "finished" and s["ablation"] == ab and s["num_samples"] == 4
        assert (cfg.expansion.r_start, cfg.expansion.r_end) == ((5, 2) if ab == "outpaint_expansion" else (-2, 2))
        assert s["seam_score"] > 0 and s["seam_real"] > 0 and s["mpjpe_px"] > 0 and s["mpjpe_real_px"] > 0
        assert s["seam_band"] == [2, 2]  # metrics.seam_radii: one band for every blend, at their common cut
        reals.append(s["seam_real"])
        assert (sweep / str(i) / "figure.png").is_file()
    assert len(set(reals)) == 1  # the real photos are scored over the same band for every blend
    table = write_ablation_table(sweep)
    rows = table.read_text().strip().splitlines()
    assert len(rows) == 6 and "one_stage" in rows[2] and "| expansion" in rows[4] and "outpaint" in rows[5]
    assert (sweep / "ablation_table.csv").is_file()
    narrow = compose_cfg([f"stage1_ckpt={ckpts['s1']}", f"stage2_ckpt={ckpts['s2']}", "num_samples=4",
                          "metrics.seam_radii=[-1,1]", "metrics.fid_extractor=null"], sweep / "bad", config_name="hands")
    with pytest.raises(SystemExit) as e:  # the entry point's task wrapper: a one-line error, exit 2
        run_hands(narrow)
    assert e.value.code == 2 and "does not contain the expansion blend's cut at radius 2" in capsys.readouterr().err

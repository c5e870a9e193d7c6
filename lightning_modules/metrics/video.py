"""Video sample metrics: frame-wise FID, a temporal-consistency score, and FVD.

- **Frame-wise FID**: every frame is an image; FID between generated and real frames through
  :func:`lightning_modules.metrics.fid.compute_fid` (``extractor="digits"`` for Moving MNIST).
- **Temporal consistency**: mean absolute frame-to-frame change ``mean |x_{t+1} - x_t|`` in
  [0, 1] pixel units, for generated and real clips; their gap says whether samples flicker
  (too high) or freeze (too low). It is cheap and needs no weights, but it is not a quality score.
- **Digit consistency** (Moving MNIST): the fraction of a clip's frames the MNIST classifier gives
  the clip's most frequent label; it falls when a digit changes shape as it moves, which neither
  frame FID (frames judged alone) nor the frame-to-frame change (amount of motion) can see.
- **Digit motion** (Moving MNIST): the digit's ink centre of mass tracked over the frames; its
  mean displacement per frame (does the digit move as fast as real ones?) and the mean change of
  that displacement (jerk: does it move smoothly or jitter?).
- **FVD** (Unterthiner et al. 2018): Fréchet distance between Gaussians fitted to video features.
  The feature extractor is pluggable: ``i3d`` loads a TorchScript I3D (the file StyleGAN-V
  distributes, ``i3d_torchscript.pt``) from a local path only; ``random3d`` is a fixed random
  3-D conv net, for relative comparisons between runs of this project only (its numbers are
  not comparable with published FVDs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn
from torchmetrics import Metric

from kakusan.errors import UserError

VideoExtractor = Callable[[Tensor], Tensor]  # (B, T, C, H, W) in [-1, 1] -> (B, F)
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (as used by StyleGAN-V / DIGAN)"


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` in float64 (the FID / FVD formula)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise, as pytorch-fid does
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# --------------------------------------------------------------------------- extractors
class RandomConv3dExtractor(nn.Module):
    """A fixed, randomly initialised 3-D conv net (seeded): ``(B,T,C,H,W) -> (B, 2 * width * 4)``.

    Features are spatio-temporal means and standard deviations of its last activations, so they
    react to motion as well as appearance. Only for comparisons inside this project.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        chans = [in_channels, width, width * 2, width * 4]
        self.convs = nn.ModuleList(nn.Conv3d(a, b, 3, stride=(1, 2, 2), padding=1) for a, b in zip(chans, chans[1:]))
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, clips: Tensor) -> Tensor:
        h = clips.float().transpose(1, 2)  # (B, C, T, H, W)
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        return torch.cat([h.mean(dim=(2, 3, 4)), h.flatten(2).std(dim=2)], dim=1)


class I3DExtractor(nn.Module):
    """TorchScript I3D features (400-class Kinetics model; StyleGAN-V's ``i3d_torchscript.pt``).

    Clips ``(B,T,C,H,W)`` in [-1, 1]; grey clips are repeated to RGB; the script resizes to 224.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.model = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, clips: Tensor) -> Tensor:
        x = clips.float()
        if x.shape[2] == 1:
            x = x.repeat(1, 1, 3, 1, 1)
        return self.model(x.transpose(1, 2).contiguous(), rescale=False, resize=True, return_features=True)


def resolve_i3d_path(path: str | None = None, cache_dir: str | None = None) -> Path:
    """The local I3D file: ``path``, else ``$KAKUSAN_I3D_PATH``, else ``<cache_dir>/i3d_torchscript.pt``."""
    candidates = [p for p in (path, os.environ.get("KAKUSAN_I3D_PATH"),
                              str(Path(cache_dir) / "i3d_torchscript.pt") if cache_dir else None) if p]
    for p in candidates:
        if Path(p).is_file():
            return Path(p)
    raise UserError(f"FVD with the I3D extractor needs the TorchScript I3D weights, not found at "
                    f"{', '.join(candidates) or '(no path given)'}. Download i3d_torchscript.pt from {I3D_URL} "
                    f"and set metrics.i3d_path (or $KAKUSAN_I3D_PATH) to it, or use the 'random3d' extractor "
                    f"for comparisons within this project (not comparable with published FVDs).")


def video_extractor(name: str | VideoExtractor, in_channels: int = 1, i3d_path: str | None = None,
                    cache_dir: str | None = None, seed: int = 0) -> VideoExtractor:
    """``"i3d"`` | ``"random3d"`` | any callable ``(B,T,C,H,W) -> (B,F)``."""
    if callable(name):
        return name
    if name == "i3d":
        return I3DExtractor(resolve_i3d_path(i3d_path, cache_dir))
    if name == "random3d":
        return RandomConv3dExtractor(in_channels, seed=seed)
    raise UserError(f"unknown video feature extractor {name!r}; choose i3d or random3d (or pass a callable)")


# --------------------------------------------------------------------------- metrics
class FrechetVideoDistance(Metric):
    """FVD as a torchmetrics metric: ``update(clips, real=bool)`` then ``compute()``.

    Feature sums and outer-product sums (float64) are the states, so DDP reduces them exactly.
    """

    full_state_update = False

    def __init__(self, extractor: VideoExtractor, feature_dim: int | None = None, batch_size: int = 32, **kw) -> None:
        super().__init__(**kw)
        self.extractor, self.batch_size = extractor, batch_size
        if feature_dim is None:
            raise ValueError("feature_dim is required (run the extractor once on a dummy clip to get it)")
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(feature_dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(feature_dim, feature_dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, clips: Tensor, real: bool) -> None:
        side = "real" if real else "fake"
        for chunk in clips.split(self.batch_size):
            f = self.extractor(chunk.to(self.device)).double()
            setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
            setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
            setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])

    def _stats(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        n = getattr(self, f"{side}_n")
        if n < 2:
            raise ValueError(f"FVD needs at least 2 {side} clips, got {int(n)}")
        mu = getattr(self, f"{side}_sum") / n
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()

    def compute(self) -> Tensor:
        return torch.tensor(frechet_distance(*self._stats("fake"), *self._stats("real")))


def compute_fvd(fake: Tensor, real: Tensor, extractor: str | VideoExtractor = "random3d", batch_size: int = 32,
                i3d_path: str | None = None, cache_dir: str | None = None) -> float:
    """FVD between two sets of clips ``(N, T, C, H, W)`` in [-1, 1]."""
    ext = video_extractor(extractor, real.shape[2], i3d_path, cache_dir)
    dim = ext(real[:1]).shape[-1]
    metric = FrechetVideoDistance(ext, feature_dim=dim, batch_size=batch_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def temporal_change(clips: Tensor) -> Tensor:
    """Per-clip mean absolute frame-to-frame change in [0, 1] pixel units: ``(N,)``."""
    if clips.ndim != 5 or clips.shape[1] < 2:
        raise ValueError(f"need clips (N, T>=2, C, H, W), got {tuple(clips.shape)}")
    return (clips[:, 1:] - clips[:, :-1]).abs().float().mean(dim=(1, 2, 3, 4)) / 2.0


def ink_centres(frames: Tensor) -> Tensor:
    """Centre of mass ``(y, x)`` in pixels of each frame's ink, for frames ``(M, 1, H, W)`` in [-1, 1]
    (background -1): ``(M, 2)``. A blank frame gives the image centre."""
    _, _, h, w = frames.shape
    ink = (frames.float() + 1).clamp(min=0) / 2
    mass = ink.sum((1, 2, 3)).clamp(min=1e-6)
    ys, xs = torch.arange(h, dtype=ink.dtype), torch.arange(w, dtype=ink.dtype)
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=ink.dtype)
    cy = (ink.sum((1, 3)) * ys).sum(-1) / mass
    cx = (ink.sum((1, 2)) * xs).sum(-1) / mass
    return torch.where((mass > 1e-6)[:, None], torch.stack([cy, cx], 1), centre)


def digit_motion(clips: Tensor) -> tuple[Tensor, Tensor]:
    """How a single digit moves through clips ``(N, T, 1, H, W)``, from its ink's centre of mass per
    frame: ``(speed, jerk)``, each ``(N,)`` in pixels. ``speed`` is the mean displacement per frame
    (0 for a frozen clip); ``jerk`` the mean size of the change of that displacement (second
    difference): 0 for uniform motion, large for a digit that jitters or jumps. A bounce off the
    border gives real clips some jerk too, so compare with the real clips' values."""
    if clips.ndim != 5 or clips.shape[2] != 1 or clips.shape[1] < 3:
        raise ValueError(f"digit motion needs single-channel clips (N, T>=3, 1, H, W), got {tuple(clips.shape)}")
    n, t = clips.shape[:2]
    track = ink_centres(clips.flatten(0, 1)).reshape(n, t, 2)
    step = track[:, 1:] - track[:, :-1]
    return step.norm(dim=-1).mean(1), (step[:, 1:] - step[:, :-1]).norm(dim=-1).mean(1)


def center_digits(frames: Tensor) -> Tensor:
    """Shift each frame ``(M, 1, H, W)`` in [-1, 1] by whole pixels so that its ink's centre of mass is at
    the centre (MNIST's own preprocessing), padding with background; blank frames are left as they are."""
    m, _, h, w = frames.shape
    cy, cx = ink_centres(frames).unbind(1)
    dy = ((h - 1) / 2 - cy).round().long().clamp(-h + 1, h - 1)
    dx = ((w - 1) / 2 - cx).round().long().clamp(-w + 1, w - 1)
    padded = F.pad(frames.float(), (w, w, h, h), value=-1.0)[:, 0]  # (M, 3H, 3W)
    rows = (h - dy)[:, None] + torch.arange(h)  # (M, H): each frame's window into its padded copy
    cols = (w - dx)[:, None] + torch.arange(w)
    return padded[torch.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]][:, None]


def _digit_sized(frames: Tensor) -> Tensor:
    """Frames ``(M, C, H, W)`` as the digits classifier takes them: 28x28 or 32x32 as they are, any other
    size resized bilinearly to 32x32."""
    if tuple(frames.shape[-2:]) in ((28, 28), (32, 32)):
        return frames
    return F.interpolate(frames, size=(32, 32), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


def _frame_digit_labels(clips: Tensor, batch_size: int = 512) -> Tensor:
    """The MNIST classifier's label for every frame of single-channel clips: ``(N, T)`` long."""
    from .digits_classifier import predict_digits

    if clips.ndim != 5 or clips.shape[2] != 1:
        raise ValueError(f"digit metrics need single-channel clips (N, T, 1, H, W), got {tuple(clips.shape)}")
    n, t = clips.shape[:2]
    frames = _digit_sized(clips.flatten(0, 1).float())
    return predict_digits(center_digits(frames), batch_size).reshape(n, t)


def digit_consistency(clips: Tensor, batch_size: int = 512) -> Tensor:
    """Per-clip identity consistency of a moving digit: ``(N,)`` in [1/T, 1].

    The MNIST classifier labels every frame (resized to 32x32 like ``frame_fid``, then centred by its
    centre of mass, since the classifier knows centred digits only); the score is the
    fraction of a clip's frames that carry its most frequent label. A digit that keeps its shape
    while it moves scores 1; one that morphs into other digits scores less. Meant for one-digit
    clips (Moving MNIST with ``num_digits=1``); report it next to the real clips' value, which is
    the classifier's own floor.
    """
    return _consistency(_frame_digit_labels(clips, batch_size))


def _consistency(labels: Tensor) -> Tensor:
    counts = F.one_hot(labels, 10).sum(1)  # (N, 10) frames per label
    return counts.amax(1).float() / labels.shape[1]


def frame_class_accuracy(clips: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Share of all frames of class-conditional clips ``(N, T, 1, H, W)`` that the MNIST classifier
    (frames sized and centred as for :func:`digit_consistency`) reads as their clip's requested
    digit ``labels`` ``(N,)``."""
    if len(labels) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(labels)} labels")
    return _requested_share(_frame_digit_labels(clips, batch_size), labels)


def _requested_share(frame_labels: Tensor, requested: Tensor) -> float:
    return (frame_labels == requested.cpu().long()[:, None]).float().mean().item()


def digit_scores_by_class(clips: Tensor, requested: Tensor, batch_size: int = 512) -> list[dict[str, float]]:
    """Per requested digit of class-conditional clips: which classes keep their shape.

    One row per digit asked for, in order: ``class``, ``clips`` (how many), ``consistency`` (mean
    :func:`digit_consistency`), ``requested_share`` (frames read as the requested digit, as
    :func:`frame_class_accuracy`) and ``agreement_ends`` (clips whose first and last frames get
    the same label). The clip-weighted means of the columns are the all-clip scores."""
    if len(requested) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(requested)} labels")
    return _scores_by_class(_frame_digit_labels(clips, batch_size), requested)


def _scores_by_class(frame_labels: Tensor, requested: Tensor) -> list[dict[str, float]]:
    requested = requested.cpu().long()
    rows = []
    for k in torch.unique(requested).tolist():
        lab = frame_labels[requested == k]
        rows.append({"class": int(k), "clips": int(len(lab)), "consistency": _consistency(lab).mean().item(),
                     "requested_share": (lab == k).float().mean().item(),
                     "agreement_ends": (lab[:, 0] == lab[:, -1]).float().mean().item()})
    return rows


def class_table_markdown(rows: list[dict[str, float]]) -> str:
    """:func:`digit_scores_by_class` rows (with ``real_*`` columns where present) as a Markdown table."""
    real = any("real_requested_share" in r for r in rows)
    head = "| digit | clips | consistency | frames showing it | first = last frame |"
    lines = [head + (" real clips | real frames showing it |" if real else ""),
             "| ---: " * (7 if real else 5) + "|"]
    for r in rows:
        line = (f"| {r['class']} | {r['clips']} | {r['consistency']:.2f} | {r['requested_share']:.0%} | "
                f"{r['agreement_ends']:.0%} |")
        if real:
            line += (f" {r['real_clips']} | {r['real_requested_share']:.0%} |" if "real_clips" in r else " 0 | - |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_class_report(out_dir: str | Path, fake: Tensor, fake_labels: Tensor, real: Tensor | None = None,
                       real_labels: Tensor | None = None) -> list[dict[str, float]]:
    """Per requested digit scores of class-conditional clips (:func:`digit_scores_by_class`), beside the
    classifier's reading of real clips of the same digits when ``real_labels`` are given (its ceiling:
    the MNIST classifier does not read every real Moving MNIST frame right), written to
    ``out_dir/video_by_class.md``. Returns the rows."""
    if len(fake_labels) != len(fake):
        raise ValueError(f"{len(fake)} clips but {len(fake_labels)} labels")
    real_frames = _frame_digit_labels(real) if real is not None and real_labels is not None else None
    rows = _class_rows(_frame_digit_labels(fake), fake_labels, real_frames, real_labels)
    save_class_table(out_dir, rows)
    return rows


def _class_rows(fake_frames: Tensor, fake_labels: Tensor, real_frames: Tensor | None = None,
                real_labels: Tensor | None = None) -> list[dict[str, float]]:
    """:func:`_scores_by_class` of the generated clips' frame labels, with each digit's real clips' count
    and requested share beside it when the real frame labels are given."""
    rows = _scores_by_class(fake_frames, fake_labels)
    if real_frames is not None and real_labels is not None:
        real_rows = {r["class"]: r for r in _scores_by_class(real_frames, real_labels)}
        for r in rows:
            if r["class"] in real_rows:
                r["real_clips"] = real_rows[r["class"]]["clips"]
                r["real_requested_share"] = real_rows[r["class"]]["requested_share"]
    return rows


def save_class_table(out_dir: str | Path, rows: list[dict[str, float]]) -> Path:
    """Write per-digit rows as ``out_dir/video_by_class.md``."""
    path = Path(out_dir) / "video_by_class.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(class_table_markdown(rows))
    return path


def digit_agreement_by_distance(clips: Tensor, batch_size: int = 512) -> Tensor:
    """Share of frame pairs ``(i, i + d)`` whose digit labels agree, for ``d = 1 .. T-1``: ``(T-1,)``.

    Tells two failures apart that :func:`digit_consistency` mixes: glyphs the classifier cannot read
    (low agreement already between neighbouring frames) and a glyph that drifts while it moves
    (high agreement between neighbours, falling with the distance ``d``).
    """
    return _agreement(_frame_digit_labels(clips, batch_size))


def _agreement(labels: Tensor) -> Tensor:
    t = labels.shape[1]
    if t < 2:
        raise ValueError(f"agreement by frame distance needs clips of at least 2 frames, got {t}")
    return torch.stack([(labels[:, d:] == labels[:, :-d]).float().mean() for d in range(1, t)])


def frame_fid(fake: Tensor, real: Tensor, extractor: str = "digits", batch_size: int = 256, device=None) -> float:
    """FID between all frames of ``fake`` and of ``real`` clips ``(N, T, C, H, W)``.

    For the ``digits`` extractor (an MNIST classifier on 32x32), frames of other sizes are resized
    bilinearly to 32x32 first, both fake and real alike.
    """
    from .fid import compute_fid  # the image-metrics module (clean-fid protocol / digits features)

    f, r = fake.flatten(0, 1).float(), real.flatten(0, 1).float()
    if extractor == "digits":
        f, r = _digit_sized(f), _digit_sized(r)
    return compute_fid(f, r, extractor=extractor, batch_size=batch_size, device=device)


def video_metrics(fake: Tensor, real: Tensor, fid_extractor: str | None = "digits",
                  fvd_extractor: str | VideoExtractor | None = "random3d", i3d_path: str | None = None,
                  cache_dir: str | None = None, fake_labels: Tensor | None = None,
                  real_labels: Tensor | None = None) -> dict[str, float]:
    """All video metrics for generated ``fake`` and ``real`` clips; ``None`` skips FID or FVD.
    ``fake_labels``: the digits the clips were asked for (class-conditional models), scored with
    the digit metrics as ``video/class_accuracy``; ``real_labels``, the real clips' digits, give the
    same score of the real clips, ``video/class_accuracy_real`` (the classifier's ceiling)."""
    return video_scores(fake, real, fid_extractor, fvd_extractor, i3d_path, cache_dir, fake_labels, real_labels)[0]


def video_scores(fake: Tensor, real: Tensor, fid_extractor: str | None = "digits",
                 fvd_extractor: str | VideoExtractor | None = "random3d", i3d_path: str | None = None,
                 cache_dir: str | None = None, fake_labels: Tensor | None = None,
                 real_labels: Tensor | None = None) -> tuple[dict[str, float], list[dict[str, float]] | None]:
    """:func:`video_metrics` and, for class-conditional digit clips (``fake_labels`` with the ``digits``
    extractor), the per-digit rows of :func:`write_class_report` from the same frame labels (each
    frame is classified once); ``None`` rows otherwise."""
    if fake.shape[1:] != real.shape[1:]:
        raise UserError(f"generated clips {tuple(fake.shape[1:])} and real clips {tuple(real.shape[1:])} differ "
                        f"in shape; check model.sample_shape / data_shape against the data config")
    tc_fake, tc_real = temporal_change(fake).mean().item(), temporal_change(real).mean().item()
    out = {"video/temporal_change_fake": tc_fake, "video/temporal_change_real": tc_real,
           "video/temporal_change_gap": abs(tc_fake - tc_real)}
    if fid_extractor:
        out[f"video/frame_fid_{fid_extractor}"] = frame_fid(fake, real, fid_extractor)
    frame_labels: dict[str, Tensor] = {}
    if fid_extractor == "digits":  # the frames are digits: does each clip keep its digit?
        for name, clips in (("fake", fake), ("real", real)):
            labels = frame_labels[name] = _frame_digit_labels(clips)  # classify every frame once for all scores
            out[f"video/digit_consistency_{name}"] = _consistency(labels).mean().item()
            if name == "fake" and fake_labels is not None:  # frames showing the requested digit
                out["video/class_accuracy"] = _requested_share(labels, fake_labels)
            if name == "real" and real_labels is not None:  # ... and real frames showing theirs
                out["video/class_accuracy_real"] = _requested_share(labels, real_labels)
            if labels.shape[1] > 1:  # neighbouring frames and the first against the last
                agree = _agreement(labels)
                out[f"video/digit_agreement_next_{name}"] = agree[0].item()
                out[f"video/digit_agreement_ends_{name}"] = agree[-1].item()
            if labels.shape[1] > 2:  # does the digit move, and smoothly? (centre-of-mass track)
                speed, jerk = digit_motion(clips)
                out[f"video/digit_speed_{name}"] = speed.mean().item()
                out[f"video/digit_jerk_{name}"] = jerk.mean().item()
    if fvd_extractor is not None:
        name = fvd_extractor if isinstance(fvd_extractor, str) else "custom"
        out[f"video/fvd_{name}"] = compute_fvd(fake, real, fvd_extractor, i3d_path=i3d_path, cache_dir=cache_dir)
    rows = None
    if frame_labels and fake_labels is not None:
        rows = _class_rows(frame_labels["fake"], fake_labels, frame_labels["real"], real_labels)
    return out, rows

"""Hand masks from photos of one hand against a plain light background (no labels needed).

The Sign Language Digits photos show skin on a near-neutral white/grey wall whose brightness
falls off towards the corners (vignetting). Brightness therefore separates badly, colour well:
the method works on chroma in CIE Lab, with a small weight on lightness.

Method (deterministic, per image):
1. sRGB -> CIE Lab (D65).
2. Background colour = per-channel median of the 2-pixel border ring.
3. Distance ``d = sqrt((a-a_bg)^2 + (b-b_bg)^2 + (w_L (L-L_bg))^2)``, lightly smoothed (Gaussian
   ``sigma=0.7``) to suppress sensor noise.
4. Otsu threshold on ``d`` (with a floor ``min_distance`` so that a washed-out photo does not cut
   the wall in two).
5. Morphological clean-up: binary opening then closing with a 3x3 cross (scipy.ndimage).
6. Keep the connected components that contain at least one keypoint (the largest one when no
   keypoints are given or none falls inside a component), then fill holes smaller than ``max_hole`` of the image
   (the see-through ring of the "0" sign stays background).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .base import DataError

_CROSS = ndimage.generate_binary_structure(2, 1)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 or [0,1] float sRGB ``(..., 3)`` -> CIE Lab ``(..., 3)`` (D65 white, L in [0, 100])."""
    if rgb.dtype == np.uint8:  # 256-entry lookup table for the sRGB transfer curve
        v = np.arange(256) / 255.0
        lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)[rgb]
    else:
        x = rgb.astype(np.float32)
        lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ (m.T / np.array([0.95047, 1.0, 1.08883])[None]).astype(np.float32)
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold (maximal between-class variance) of a 1-D sample."""
    v = values.ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][np.argmax(between[:-1])]) if bins > 1 else float(centers[0])


def background_distance(images: np.ndarray, lightness_weight: float = 0.35, border: int = 2,
                        smooth: float = 0.7) -> np.ndarray:
    """Lab distance of every pixel from its photo's border median colour: ``(N, H, W)`` for ``(N, H, W, 3)``."""
    lab = rgb_to_lab(images)
    n = lab.shape[0]
    ring = np.concatenate([lab[:, :border].reshape(n, -1, 3), lab[:, -border:].reshape(n, -1, 3),
                           lab[:, :, :border].reshape(n, -1, 3), lab[:, :, -border:].reshape(n, -1, 3)], 1)
    bg = np.median(ring, axis=1)[:, None, None]
    diff = lab - bg
    diff[..., 0] *= lightness_weight
    d = np.sqrt((diff ** 2).sum(-1))
    return ndimage.gaussian_filter(d, (0, smooth, smooth)) if smooth > 0 else d


def hand_mask(image: np.ndarray, keypoints: np.ndarray | None = None, lightness_weight: float = 0.35,
              min_distance: float = 8.0, max_hole: float = 0.02) -> np.ndarray:
    """Boolean hand (and forearm) mask ``(H, W)`` of one uint8 RGB photo ``(H, W, 3)``.

    ``keypoints``: optional ``(J, 2)`` pixel coordinates ``(x, y)``; components touching them are kept.
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DataError(f"hand_mask expects one uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    return _mask_from_distance(background_distance(image[None], lightness_weight)[0], keypoints, min_distance,
                               max_hole)


def _mask_from_distance(d: np.ndarray, keypoints: np.ndarray | None, min_distance: float, max_hole: float) -> np.ndarray:
    thr = max(otsu_threshold(d), min_distance)
    fg = d > thr
    fg = ndimage.binary_opening(fg, _CROSS)
    fg = ndimage.binary_closing(fg, _CROSS, border_value=0)
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg
    keep: set[int] = set()
    if keypoints is not None and len(keypoints):
        h, w = fg.shape
        xs = np.clip(np.round(keypoints[:, 0]).astype(int), 0, w - 1)
        ys = np.clip(np.round(keypoints[:, 1]).astype(int), 0, h - 1)
        # a keypoint a pixel off the silhouette still selects the component next to it
        grown = ndimage.grey_dilation(labels, footprint=np.ones((3, 3), bool))
        keep = {int(v) for v in grown[ys, xs] if v > 0}
    if not keep:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        keep = {int(np.argmax(sizes)) + 1}
    fg = np.isin(labels, sorted(keep))
    filled = ndimage.binary_fill_holes(fg)
    holes, nh = ndimage.label(filled & ~fg)
    if nh:  # fill small holes only: the see-through ring of the "0" sign stays background
        sizes = ndimage.sum_labels(np.ones_like(holes), holes, index=np.arange(1, nh + 1))
        small = np.flatnonzero(sizes <= max_hole * fg.size) + 1
        fg = fg | np.isin(holes, small)
    return fg


def hand_masks(images: np.ndarray, keypoints: np.ndarray | None = None, lightness_weight: float = 0.35,
               min_distance: float = 8.0, max_hole: float = 0.02, chunk: int = 256) -> np.ndarray:
    """Masks for a stack ``(N, H, W, 3)``; ``keypoints`` ``(N, J, 2)`` pixels or ``None`` (rows may be NaN)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"hand_masks expects uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
    out = np.zeros(images.shape[:3], dtype=bool)
    for s in range(0, len(images), chunk):
        d = background_distance(images[s:s + chunk], lightness_weight)
        for j in range(len(d)):
            kp = keypoints[s + j] if keypoints is not None and np.isfinite(keypoints[s + j]).all() else None
            out[s + j] = _mask_from_distance(d[j], kp, min_distance, max_hole)
    return out

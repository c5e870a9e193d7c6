"""Contact sheet of the self-made hand masks: image | mask overlay | keypoints, for a visual check.

    python scripts/hand_mask_sheet.py --data-dir ../shared/data --out hand_masks.png [--num 24] [--seed 0]

Rows are random detected photos (fixed seed); the sheet also prints the mask-fraction range and
the share of keypoints that fall inside their mask.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.hand_keypoints import render_keypoints  # noqa: E402
from datamodules.hands import load_hands  # noqa: E402


def sheet(data_dir: str, num: int = 24, seed: int = 0, scale: int = 3, cols: int = 4) -> tuple[np.ndarray, dict]:
    d = load_hands(data_dir)
    idx = np.sort(np.random.default_rng(seed).choice(len(d["images"]), size=min(num, len(d["images"])), replace=False))
    tiles = []
    for i in idx:
        img, m = d["images"][i].astype(np.float32), d["masks"][i]
        over = img.copy()
        over[m] = 0.45 * over[m] + 0.55 * np.array([40, 220, 60])
        edge = m ^ np.roll(m, 1, 0) | m ^ np.roll(m, 1, 1)
        over[edge] = [255, 0, 0]
        kmap = render_keypoints(torch.from_numpy(d["keypoints"][i])[None], img.shape[0], "skeleton", 0.8)[0]
        sk = kmap.amax(0).numpy()[..., None]
        kp_img = img * (1 - sk) + sk * np.array([255, 0, 255])
        tiles.append(np.concatenate([img, over, kp_img], 1).clip(0, 255).astype(np.uint8))
    h, w = tiles[0].shape[:2]
    rows = int(np.ceil(len(tiles) / cols))
    out = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * (h + 4): r * (h + 4) + h, c * (w + 4): c * (w + 4) + w] = t
    frac = d["masks"].mean((1, 2))
    size = d["images"].shape[1]
    px = np.clip(np.floor(d["keypoints"] * size).astype(int), 0, size - 1)
    inside = d["masks"][np.arange(len(px))[:, None], px[..., 1], px[..., 0]]
    stats = {"mask_fraction_min": float(frac.min()), "mask_fraction_median": float(np.median(frac)),
             "mask_fraction_max": float(frac.max()), "keypoints_inside": float(inside.mean()),
             "hands_with_all_keypoints_inside": float(inside.all(1).mean())}
    img = Image.fromarray(out)
    return np.asarray(img.resize((img.width * scale, img.height * scale), Image.NEAREST)), stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default="hand_masks.png")
    p.add_argument("--num", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    img, stats = sheet(a.data_dir, a.num, a.seed)
    Image.fromarray(img).save(a.out)
    print(f"wrote {a.out}")
    for k, v in stats.items():
        print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()

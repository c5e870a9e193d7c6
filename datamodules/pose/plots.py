"""Stick-figure pictures of H36M-17 poses: the 2-D input and 3-D estimates next to the truth (matplotlib)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from .skeleton import BONES, LEFT, RIGHT


def _colour(child: int) -> str:
    return "tab:red" if child in RIGHT else "tab:blue" if child in LEFT else "0.3"


def _as_np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def draw_2d(ax, kp: np.ndarray) -> None:
    for p, c in BONES:
        if np.isfinite(kp[[p, c]]).all():
            ax.plot(kp[[p, c], 0], kp[[p, c], 1], color=_colour(c), lw=2)
    ax.scatter(kp[:, 0], kp[:, 1], s=8, c="k")
    ok = kp[np.isfinite(kp).all(-1)]
    mid, r = (ok.max(0) + ok.min(0)) / 2, (ok.max(0) - ok.min(0)).max() / 2 * 1.15 + 1
    ax.set_xlim(mid[0] - r, mid[0] + r)
    ax.set_ylim(mid[1] + r, mid[1] - r)  # image rows grow downwards
    ax.set_aspect("equal")
    ax.set_title("input 2-D keypoints")


def draw_3d(ax, pose: np.ndarray, title: str, ref: np.ndarray | None = None) -> None:
    """Plot camera-frame (x right, y down, z forward) poses with the vertical axis up."""
    def xyz(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return p[:, 0], p[:, 2], -p[:, 1]

    if ref is not None:
        for p, c in BONES:
            x, y, z = xyz(ref[[p, c]])
            ax.plot(x, y, z, color="0.75", lw=1.5)
    for p, c in BONES:
        x, y, z = xyz(pose[[p, c]])
        ax.plot(x, y, z, color=_colour(c), lw=2)
    allp = pose if ref is None else np.concatenate([pose, ref])
    mid, r = allp.mean(0), max(0.5, np.abs(allp - allp.mean(0)).max())
    ax.set_xlim(mid[0] - r, mid[0] + r)
    ax.set_ylim(mid[2] - r, mid[2] + r)
    ax.set_zlim(-mid[1] - r, -mid[1] + r)
    ax.set_xlabel("x")
    ax.set_ylabel("depth")
    ax.set_title(title, fontsize=9)


def save_pose_figure(path: str | Path, keypoints_2d: Tensor | np.ndarray, gt: Tensor | np.ndarray,
                     estimates: dict[str, Tensor | np.ndarray], title: str = "") -> Path:
    """One PNG: the 2-D input, the 3-D truth, and each estimate (grey: the truth behind it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kp, g = _as_np(keypoints_2d), _as_np(gt)
    n = 2 + len(estimates)
    fig = plt.figure(figsize=(3.2 * n, 3.4))
    draw_2d(fig.add_subplot(1, n, 1), kp)
    draw_3d(fig.add_subplot(1, n, 2, projection="3d"), g, "ground truth 3-D")
    for k, (name, est) in enumerate(estimates.items()):
        e = _as_np(est)
        err = float(np.linalg.norm(e - g, axis=-1).mean() * 1000)
        draw_3d(fig.add_subplot(1, n, 3 + k, projection="3d"), e, f"{name}\nMPJPE {err:.0f} mm", ref=g)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

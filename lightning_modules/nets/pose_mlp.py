"""Fully connected score / denoising network for root-relative 3-D poses (GFPose / ZeDO style).

The shape follows the network described by GFPose (Ci et al. 2023, "ScoreModelFC") and used by
ZeDO's released prior: the flattened pose ``(J*3)`` is lifted to ``hidden`` features, a
sinusoidal time embedding (``embed_dim``, through Linear+SiLU) is added by a separate linear
projection before every normalisation, and ``num_blocks`` residual blocks of two
[Linear (+ time) -> GroupNorm -> SiLU -> Dropout] layers follow; a final linear maps back to
``(J, 3)``. ZeDO's prior uses hidden 1024, embedding 512, 2 blocks, dropout 0.25.
"""
from __future__ import annotations

from torch import Tensor, nn

from .embeddings import timestep_embedding


class _TimedLayer(nn.Module):
    def __init__(self, d_in: int, hidden: int, embed_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.dense, self.dense_t = nn.Linear(d_in, hidden), nn.Linear(embed_dim, hidden)
        self.norm = nn.GroupNorm(groups, hidden)
        self.act, self.drop = nn.SiLU(), nn.Dropout(dropout)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return self.drop(self.act(self.norm(self.dense(h) + self.dense_t(temb))))


class PoseScoreMLP(nn.Module):
    """``net(x_t, t) -> (B, J, 3)`` for poses ``x_t`` of shape ``(B, J, 3)`` and integer/real timesteps ``t``."""

    def __init__(self, num_joints: int = 17, joint_dim: int = 3, hidden: int = 1024, embed_dim: int = 512,
                 num_blocks: int = 2, dropout: float = 0.25, groups: int = 32) -> None:
        super().__init__()
        if hidden % groups:
            raise ValueError(f"hidden ({hidden}) must be divisible by groups ({groups})")
        self.num_joints, self.joint_dim, self.embed_dim = num_joints, joint_dim, embed_dim
        self.time = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU())
        self.pre = _TimedLayer(num_joints * joint_dim, hidden, embed_dim, groups, dropout)
        self.blocks = nn.ModuleList(
            nn.ModuleList([_TimedLayer(hidden, hidden, embed_dim, groups, dropout),
                           _TimedLayer(hidden, hidden, embed_dim, groups, dropout)]) for _ in range(num_blocks))
        self.post = nn.Linear(hidden, num_joints * joint_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[1:] != (self.num_joints, self.joint_dim):
            raise ValueError(f"PoseScoreMLP expects poses (B, {self.num_joints}, {self.joint_dim}), got {tuple(x.shape)}")
        b = x.shape[0]
        t = t.expand(b) if t.ndim == 0 else t
        temb = self.time(timestep_embedding(t, self.embed_dim).to(x.dtype))
        h = self.pre(x.reshape(b, -1), temb)
        for first, second in self.blocks:
            h = h + second(first(h, temb), temb)
        return self.post(h).reshape(b, self.num_joints, self.joint_dim)

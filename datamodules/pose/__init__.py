"""3-D human pose data: BVH mocap, Human3.6M archives, cameras and the pose datamodule."""
from .datamodule import PoseDataModule

__all__ = ["PoseDataModule"]

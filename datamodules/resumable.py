"""A training loader whose position can be saved and restored mid-epoch.

The shuffle order of epoch ``e`` is a permutation drawn from its own generator seeded with
``(seed, e)``: it does not depend on the global RNG, so a resumed run sees exactly the batches
the uninterrupted run would have seen. Lightning saves ``state_dict()`` in every checkpoint
(stateful loaders) and calls ``load_state_dict()`` before creating the iterator on resume.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, items already consumed in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch))
        return torch.randperm(self.num_items, generator=g)

    def __iter__(self) -> Iterator[int]:
        # The offset applies to every iterator of the resumed epoch (Lightning may create and drop
        # one before training starts) and is cleared once that epoch has been read to the end.
        resuming = self.resume_at is not None and self.resume_at[0] == self.epoch
        skip = self.resume_at[1] if resuming else 0
        yield from self.order(self.epoch)[skip:].tolist()
        if resuming:
            self.resume_at = None

    def __len__(self) -> int:
        return self.num_items


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ResumableSampler`, with Lightning's stateful-loader interface.

    The position saved is the number of batches the training loop has *processed* in the current
    epoch (read from the trainer when available, because Lightning prefetches one batch ahead).
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, shuffle: bool = True, sampler: Any = None,
                 **kw: Any) -> None:
        self.resumable_sampler = ResumableSampler(len(dataset), seed, shuffle)
        # Under DDP Lightning rebuilds the loader with a DistributedSampler (passed as ``sampler``); it
        # is then used as is: each epoch is still reproducible, but a mid-epoch resume restarts the epoch.
        # Every iterator draws a base seed from ``generator``; without one it would come from the global
        # RNG, and a resumed run (which creates its iterator after restoring RNG states) would drift.
        kw.setdefault("generator", torch.Generator().manual_seed(int(seed)))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler if sampler is not None else self.resumable_sampler,
                         **kw)
        self.trainer: Any = None  # set by the datamodule so the processed-batch count is exact

    def _processed_in_epoch(self) -> int:
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.resumable_sampler.epoch, "batches": self._processed_in_epoch(),
                "batch_size": int(self.batch_size), "seed": int(self.resumable_sampler.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self.sampler is not self.resumable_sampler:
            return  # distributed sampler in charge (see __init__)
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(f"cannot resume mid-epoch with batch_size={self.batch_size}: the checkpoint was "
                             f"written with batch_size={state['batch_size']}")
        self.resumable_sampler.seed = state.get("seed", self.resumable_sampler.seed)
        self.resumable_sampler.set_epoch(state["epoch"])
        self.resumable_sampler.resume_at = (state["epoch"], state["batches"] * self.batch_size)

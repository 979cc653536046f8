"""Training data loaders with global-batch semantics and exact mid-epoch resume.

``data.batch_size`` is the *global* batch: with N data-parallel ranks each rank takes a contiguous 1/N slice of
every global batch, cut from one permutation that all ranks draw from the same seed. N ranks therefore see
exactly the batches one process sees, which is what makes a DDP run reproduce a single-process run (and
ablations comparable across machine sizes). The loader is resumable in Lightning's sense (``state_dict`` /
``load_state_dict``), so a run killed mid-epoch restarts at the next unseen batch instead of replaying the
epoch from its start.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


class GlobalBatchSampler:
    """Index batches for one rank: its slice of each global batch of a (seed, epoch) permutation."""

    def __init__(self, size: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if global_batch < 1:
            raise ValueError(f"data.batch_size={global_batch} must be >= 1.")
        if global_batch % world_size:
            raise ValueError(
                f"data.batch_size={global_batch} (the global batch) is not divisible by the "
                f"{world_size} data-parallel ranks; pick a multiple of {world_size}."
            )
        if size < world_size:
            raise ValueError(
                f"{size} training examples cannot feed {world_size} data-parallel ranks; add data or use fewer devices."
            )
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # completed passes over the data (each pass draws a new permutation)
        self.served = 0  # batches handed out in the current pass
        self._skip = 0  # batches to pass over on the next iteration (set when resuming)

    def _global_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        # A trailing incomplete global batch is dropped, unless it is the only one (tiny datasets).
        full = max(self.size // self.global_batch, 1)
        return [order[i * self.global_batch : (i + 1) * self.global_batch] for i in range(full)]

    def _my_slice(self, batch: list[int]) -> list[int]:
        bounds = [round(r * len(batch) / self.world_size) for r in range(self.world_size + 1)]
        return batch[bounds[self.rank] : bounds[self.rank + 1]]

    def __iter__(self):
        batches = self._global_batches()
        start, self._skip = self._skip, 0
        self.served = start
        for batch in batches[start:]:
            self.served += 1
            yield self._my_slice(batch)
        self.epoch, self.served = self.epoch + 1, 0

    def __len__(self) -> int:
        return max(self.size // self.global_batch, 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict) -> None:
        epoch, served = int(state["epoch"]), int(state["served"])
        self.epoch, self._skip = (epoch + 1, 0) if served >= len(self) else (epoch, served)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`GlobalBatchSampler` that Lightning saves and restores with the checkpoint."""

    def state_dict(self) -> dict:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


def train_loader(dataset, global_batch: int, seed: int, collate_fn, trainer=None) -> ResumableDataLoader:
    """The training loader for this process's rank (rank 0 of 1 outside a Trainer)."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    sampler = GlobalBatchSampler(len(dataset), global_batch, seed=seed, rank=rank, world_size=world)
    return ResumableDataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)

"""Samplers shared by the data modules, and the piece that makes training resumable inside an
epoch.

A training epoch is a function of ``(seed, epoch)`` alone: :class:`TrainSampler` draws its
order from a generator seeded with both, and folder datasets seed each sample's augmentation
with the sample's stream index (:class:`SeededAugmentation`). Neither the global RNG, nor the
number of workers, nor where a run was interrupted changes what a step trains on. Lightning
checkpoints only the loops' progress, so :class:`ResumableTrainData` adds where the current
epoch stood to the data module's checkpoint state, and the next train sampler starts there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ctxlit.errors import ConfigError


class TrainSampler(DistributedSampler):
    """Epoch ``e`` visits the ``N`` samples in an order set by ``(seed, e)``, sharded over ranks.

    Args:
        dataset: the training set (its length ``N``).
        seed: with the epoch, sets the order.
        num_replicas, rank: DDP sharding; rank ``r`` reads positions ``r, r+W, ...`` of the
            epoch's order, padded by repetition to a multiple of ``W`` as Lightning's
            ``DistributedSampler`` pads (Lightning keeps a sampler that already is one).
        stream: yield stream indices ``e * N + i`` rather than ``i``: the synthetic stream
            reads new samples every epoch, and :class:`SeededAugmentation` seeds with them.
        weights: per-sample draw probabilities: ``N`` draws with replacement (class balancing)
            instead of a permutation.

    :meth:`resume` makes the next pass over epoch ``e`` start ``k`` of this rank's samples in.
    """

    def __init__(self, dataset: Sized, *, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 stream: bool = False, weights: torch.Tensor | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.stream = stream
        self.weights = None if weights is None else (weights / weights.sum()).double().numpy()
        self._resume: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def draws(self) -> np.ndarray:
        """Epoch ``self.epoch``'s ``N`` sample indices, before sharding."""
        n = len(self.dataset)
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(n) if self.weights is None else rng.choice(n, size=n, replace=True, p=self.weights)

    def resume(self, epoch: int, samples: int) -> None:
        self.set_epoch(epoch)
        self._resume = (epoch, samples)

    def __iter__(self) -> Iterator[int]:
        order = self.draws() + (self.epoch * len(self.dataset) if self.stream else 0)
        shard = np.resize(order, self.total_size)[self.rank : self.total_size : self.num_replicas]
        resume, self._resume = self._resume, None  # for the first pass only
        skip = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return iter(shard[skip:].tolist())


class SeededAugmentation(Dataset):
    """``dataset[i % N]`` for stream index ``i``, its random transforms drawn from a generator
    seeded with ``(seed, i)``: the same augmentation for a sample in a given epoch whatever the
    worker count, the global RNG or a resume (torchvision's transforms draw from the global CPU
    generator, which is forked so nothing else sees the reseeding)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would reseed CUDA's too, outside the fork
            torch.default_generator.manual_seed(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
            return self.dataset[index % len(self.dataset)]


def run_seed() -> int:
    """The run's seed (``seed_everything``), which Lightning exports; 0 without one."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableTrainData:
    """Data-module mixin: checkpoints record how far into its epoch training was, and the next
    :meth:`train_sampler_for` starts there, so a mid-epoch checkpoint (``every_n_train_steps``,
    or the one a SIGTERM writes) resumes exactly where the interrupted run stood."""

    trainer = None  # LightningDataModule's, once attached
    _resume_at: tuple[int, int] | None = None  # (epoch, batches of it already trained)

    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        # the loop's progress counters: the batches of this epoch trained so far (public
        # attributes of Lightning's loops, read the same way by its own checkpointing)
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_epoch": self.trainer.current_epoch, "train_batches": batches}

    def load_state_dict(self, state: dict) -> None:
        if "train_epoch" in state:
            self._resume_at = (int(state["train_epoch"]), int(state["train_batches"]))
            # Lightning warns that a mid-epoch resume is unreliable unless the DataLoader itself
            # is stateful; here the sampler carries the position, so the warning is wrong.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def train_sampler_for(self, dataset: Sized, *, seed: int, batch_size: int, **options) -> TrainSampler:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = TrainSampler(dataset, seed=seed, num_replicas=world, rank=rank, **options)
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            self._resume_at = None
            sampler.resume(epoch, batches * batch_size)
        return sampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation under DDP without padding: rank r reads samples r, r+W, r+2W, ...

    Lightning's default ``DistributedSampler`` repeats samples so every rank gets the same
    count (63 validation samples on 2 ranks are counted as 64). Here each sample is seen
    exactly once; ranks may run a different number of batches, which is fine for
    torchmetrics objects (synchronised once at epoch end). Lightning keeps a sampler that is
    already a ``DistributedSampler``.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


def evaluation_sampler(dataset: Sized, trainer) -> Sampler | None:
    """``None`` (in order) in one process, :class:`UnpaddedDistributedSampler` under DDP.

    Every process needs at least one sample: a process with none would stop Lightning with a
    zero-length DataLoader deep inside the fit, and its peers with a lost connection.
    """
    if trainer is None or trainer.world_size <= 1:
        return None
    if len(dataset) < trainer.world_size:
        raise ConfigError(
            f"the validation set has {len(dataset)} sample(s), fewer than the {trainer.world_size} processes "
            f"(trainer.devices x trainer.num_nodes): every process needs at least one"
        )
    return UnpaddedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank)

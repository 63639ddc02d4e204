"""Samplers shared by the data modules."""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler, Sampler

from ctxlit.errors import ConfigError


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

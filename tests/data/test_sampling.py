"""The training sampler: an order set by (seed, epoch) alone, DDP shards, a resume position;
and augmentation seeded per sample."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, DistributedSampler

from ctxlit.data.sampling import ResumableTrainData, SeededAugmentation, TrainSampler

N = 10


def test_order_depends_on_seed_and_epoch_and_a_stream_moves_on_every_epoch():
    a, b = TrainSampler(range(N), seed=3), TrainSampler(range(N), seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(N))
    b.set_epoch(1)
    assert list(a) != list(b) and sorted(b) == list(range(N))
    assert list(TrainSampler(range(N), seed=4)) != list(a)
    stream = TrainSampler(range(N), seed=3, stream=True)
    stream.set_epoch(2)
    b.set_epoch(2)
    assert list(stream) == [i + 2 * N for i in b]


def test_rank_shards_cover_the_epoch_padded_like_lightnings_distributed_sampler():
    whole = list(TrainSampler(range(N), seed=0))
    shards = [list(TrainSampler(range(N), seed=0, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    padded = whole + whole[:2]  # 10 -> 12, repeated from the start
    assert shards == [padded[r::3] for r in range(3)]
    reference = DistributedSampler(range(N), num_replicas=3, rank=1, shuffle=False)
    assert len(reference) == len(shards[1]) == 4
    assert isinstance(TrainSampler(range(N)), DistributedSampler)  # so Lightning keeps it under DDP


def test_resume_skips_this_ranks_trained_samples_once_and_only_in_its_epoch():
    full = TrainSampler(range(N), seed=1, num_replicas=2, rank=1)
    full.set_epoch(4)
    expected = list(full)
    sampler = TrainSampler(range(N), seed=1, num_replicas=2, rank=1)
    sampler.resume(4, 3)
    assert sampler.epoch == 4 and list(sampler) == expected[3:]
    assert list(sampler) == expected  # the next pass is whole
    sampler.resume(4, 3)
    sampler.set_epoch(5)  # the checkpoint ended its epoch: Lightning moved on before iterating
    full.set_epoch(5)
    assert list(sampler) == list(full)


def test_weighted_draws_follow_the_weights():
    weights = torch.tensor([1.0] * 5 + [0.0] * 5)
    sampler = TrainSampler(range(N), seed=0, weights=weights)
    draws = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    assert len(draws) == 20 * N and set(draws) <= set(range(5)) and len(set(draws)) == 5


class RandomItems(Dataset):
    """An item that is one draw from the global RNG, as a random crop would be."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        return i, torch.rand(()).item()


def test_augmentation_is_set_by_the_stream_index_and_leaves_the_global_rng_alone():
    data = SeededAugmentation(RandomItems(), seed=7)
    torch.manual_seed(0)
    first = data[13]
    after = torch.rand(())
    torch.manual_seed(123)
    assert data[13] == first and first[0] == 3  # sample 3, in epoch 1
    assert data[3][0] == 3 and data[3][1] != first[1]  # the same sample in epoch 0: another draw
    assert SeededAugmentation(RandomItems(), seed=8)[13][1] != first[1]
    torch.manual_seed(0)
    data[13]
    assert torch.rand(()) == after  # the global generator did not move


def test_the_resume_position_reaches_the_next_sampler_once():
    module = ResumableTrainData()
    assert module.state_dict() == {}
    module.load_state_dict({"train_epoch": 2, "train_batches": 3})
    sampler = module.train_sampler_for(range(N), seed=0, batch_size=2)
    assert sampler.epoch == 2 and len(list(sampler)) == N - 6
    assert len(list(module.train_sampler_for(range(N), seed=0, batch_size=2))) == N


"""The training loader's seeding (slkd.host.data): every item's random draws are a function of
(seed, epoch, index), whatever loads it."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from slkd.host.data import EpochTagged, SeededItems, SyntheticCIFAR100, item_seed, train_loader
from slkd.host.views import two_view_transform
from tests.helpers.tiny import tiny_cfg

BATCH = 4


def _augmented_set(size=12, contrast_k=None):
    return SyntheticCIFAR100(size, two_view_transform("cifar100"), seed=5, contrast_k=contrast_k)


def _cfg(workers, seed=0):
    cfg = tiny_cfg("unused", batch=BATCH, seed=seed)
    cfg.SLKD.LOADER.WORKERS = workers
    return cfg


def _epoch_items(loader, epoch):
    """``{index: (weak, strong)}`` of one epoch."""
    loader.sampler.set_epoch(epoch)
    items = {}
    for (weak, strong), _target, index in loader:
        for row, key in enumerate(index.tolist()):
            items[key] = (weak[row], strong[row])
    return items


def _assert_same_items(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key][0], b[key][0], rtol=0, atol=0)
        torch.testing.assert_close(a[key][1], b[key][1], rtol=0, atol=0)


def test_an_item_is_the_same_whoever_loads_it():
    dataset = _augmented_set()
    in_process = _epoch_items(train_loader(dataset, _cfg(0), device=torch.device("cpu")), 3)
    persistent = train_loader(dataset, _cfg(2), device=torch.device("cpu"))
    assert persistent.persistent_workers and persistent.num_workers == 2
    _epoch_items(persistent, 1)  # the workers have drawn a whole epoch before
    _assert_same_items(in_process, _epoch_items(persistent, 3))


def test_items_change_with_epoch_and_seed_and_stay_apart_within_a_batch():
    dataset = _augmented_set()
    epoch_one = _epoch_items(train_loader(dataset, _cfg(0), device=torch.device("cpu")), 1)
    epoch_two = _epoch_items(train_loader(dataset, _cfg(0), device=torch.device("cpu")), 2)
    other_seed = _epoch_items(train_loader(dataset, _cfg(0, seed=1), device=torch.device("cpu")), 1)
    for other in (epoch_two, other_seed):
        assert sum(not torch.equal(epoch_one[key][1], other[key][1]) for key in epoch_one) >= len(epoch_one) - 1
    # one image, two keys: the random crop and RandAugment differ
    same_image = SyntheticCIFAR100(2, two_view_transform("cifar100"), seed=5)
    same_image.data[1] = same_image.data[0]
    items = SeededItems(same_image, seed=0)
    assert not torch.equal(items[(1, 0)][0][1], items[(1, 1)][0][1])


def test_processes_together_load_the_one_process_batch():
    dataset = _augmented_set(size=16)
    one = train_loader(dataset, _cfg(0), device=torch.device("cpu"))
    ranks = [train_loader(dataset, _cfg(0), device=torch.device("cpu"), world_size=2, rank=rank) for rank in (0, 1)]
    for epoch in (1, 2):
        for loader in (one, *ranks):
            loader.sampler.set_epoch(epoch)
        for whole, *parts in zip(one, *ranks):
            together = torch.cat([part[2] for part in parts])
            order = together.argsort()
            assert torch.equal(together[order], whole[2].sort().values)
            for view in (0, 1):
                joined = torch.cat([part[0][view] for part in parts])[order]
                torch.testing.assert_close(joined, whole[0][view][whole[2].argsort()], rtol=0, atol=0)


def test_crd_negatives_are_seeded_per_item_too():
    dataset = _augmented_set(size=40, contrast_k=8)
    items = SeededItems(dataset, seed=0)
    first, again = items[(2, 7)], items[(2, 7)]
    assert np.array_equal(first[3], again[3])
    assert not np.array_equal(first[3], items[(3, 7)][3])


def test_loading_leaves_the_process_random_streams_alone():
    items = SeededItems(_augmented_set(), seed=0)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    expected = random.random(), np.random.rand(), torch.rand(1)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    items[(1, 0)]
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_item_seed_is_a_function_of_the_key():
    keys = [(seed, epoch, index) for seed in (0, 1) for epoch in range(4) for index in range(200)]
    seeds = [item_seed(*key) for key in keys]
    assert seeds == [item_seed(*key) for key in keys]
    assert len(set(seeds)) == len(keys)
    assert all(0 <= seed < 2**64 for seed in seeds)


def test_epoch_tagged_sampler_passes_the_epoch_on():
    sampler = EpochTagged(torch.utils.data.distributed.DistributedSampler(range(6), num_replicas=1, rank=0, seed=0))
    sampler.set_epoch(4)
    keys = list(sampler)
    assert {epoch for epoch, _ in keys} == {4} and sorted(index for _, index in keys) == list(range(6))
    assert len(sampler) == 6
    assert DataLoader(SeededItems(list(range(6)), seed=0), sampler=sampler, batch_size=6).__iter__().__next__().tolist() == [index for _, index in keys]


@pytest.mark.parametrize("epoch", [0, 7])
def test_seed_everything_gives_each_rank_its_own_streams(epoch):
    from slkd.host.runtime import seed_everything

    draws = []
    for rank in (0, 0, 1):
        seed_everything(3, epoch, rank=rank)
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_missing_cifar100_names_the_fetch_command_for_this_checkout(tmp_path):
    from slkd.host.data import DatasetMissing, check_dataset_files

    checkout = tmp_path / "my checkout"
    (checkout / "data" / "cifar-100-python").mkdir(parents=True)
    (checkout / "data" / "cifar-100-python" / "train").write_bytes(b"")
    with pytest.raises(DatasetMissing) as error:
        check_dataset_files(tiny_cfg("unused"), str(checkout / "data"))
    message = str(error.value)
    assert "test, meta not found" in message and "\n" not in message
    assert message.endswith(f"Fetch it with: slkd-fetch cifar100 --mdistiller-root '{checkout}'")

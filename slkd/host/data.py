"""Datasets and loaders for slkd's trainer.

The datasets are the host's own (mdistiller's CIFAR-100 and ImageNet classes, CRD's
contrastive sampling included), so every method reads the same files; slkd only decides
the transform (one or two views, :mod:`slkd.host.views`) and how the loader is fed:
workers sized to the machine, pinned memory, persistent workers, prefetching, and a
``DistributedSampler`` under torchrun.

Every random draw a training item makes (crops, flips, RandAugment, Cutout, CRD's negatives)
is a function of ``(SLKD.SEED, epoch, index)`` alone (:class:`SeededItems`): not of the
worker that loads it, the number of workers or processes, or what the workers drew before.
So a resumed epoch loads exactly what the uninterrupted run loaded, and under torchrun the
processes' batches together are the one process's batch, augmentations included.

``SyntheticCIFAR100`` stands in for CIFAR-100 in smoke runs and benchmarks: random pixels
of the right shape, labels in range, the real transforms, and CRD's contrastive sampling.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from slkd.errors import ConfigError, DatasetMissing
from slkd.host.views import TWO_VIEW_TYPES, cifar100_test_transform, cifar100_weak_transform, two_view_transform



class SyntheticCIFAR100(Dataset):
    """CIFAR-100-shaped random data: ``(image, label, index)`` items, or ``(image, label)``.

    With ``contrast_k`` the items are CRD's ``(image, label, index, sample_index)``, as
    mdistiller's ``CIFAR100InstanceSample`` yields them: ``sample_index`` holds a positive
    (the item itself in ``"exact"`` mode, an image of the same class in ``"relax"`` mode)
    and then ``contrast_k`` negatives drawn from the other classes with numpy's global
    random state, with replacement when ``contrast_k`` exceeds what exists.

    Args:
        size: number of images.
        transform: applied to each 32x32 RGB PIL image.
        seed: the pixels and labels are a function of ``seed`` alone.
        with_index: return the index as mdistiller's training sets do.
        num_classes: labels are drawn from ``range(num_classes)``.
        contrast_k: number of negatives per item (CRD's ``CRD.NCE.K``); None: no sampling.
        contrast_mode: ``"exact"`` or ``"relax"`` (CRD's ``CRD.MODE``).
    """

    def __init__(self, size, transform=None, seed=0, with_index=True, num_classes=100, contrast_k=None, contrast_mode="exact"):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, size=(size, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, num_classes, size=size).tolist()
        self.transform = transform
        self.with_index = with_index
        self.contrast_k = contrast_k
        if contrast_k is not None:
            if contrast_mode not in ("exact", "relax"):
                raise ConfigError(f"CRD.MODE is {contrast_mode!r}: choose exact or relax")
            labels = np.asarray(self.targets)
            if len(set(self.targets)) < 2:
                raise ConfigError("contrastive sampling needs images of at least two classes")
            self.contrast_mode = contrast_mode
            self.positives = {label: np.flatnonzero(labels == label) for label in set(self.targets)}
            self.negatives = {label: np.flatnonzero(labels != label) for label in set(self.targets)}

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        target = self.targets[index]
        if self.contrast_k is not None:
            return image, target, index, self._contrast_indices(index, target)
        if self.with_index:
            return image, target, index
        return image, target

    def _contrast_indices(self, index, target):
        positive = index if self.contrast_mode == "exact" else np.random.choice(self.positives[target])
        negatives = self.negatives[target]
        drawn = np.random.choice(negatives, self.contrast_k, replace=self.contrast_k > len(negatives))
        return np.concatenate(([positive], drawn)).astype(np.int64)


def synthetic_cifar100_sets(train_size: int, test_size: int, seed: int = 0, contrast_k=None, contrast_mode="exact"):
    """Train and test ``SyntheticCIFAR100`` sets with CIFAR-100's weak and test transforms.

    ``contrast_k`` and ``contrast_mode`` give the training set CRD's contrastive sampling.
    """
    train = SyntheticCIFAR100(train_size, cifar100_weak_transform(), seed=seed, contrast_k=contrast_k, contrast_mode=contrast_mode)
    test = SyntheticCIFAR100(test_size, cifar100_test_transform(), seed=seed + 1, with_index=False)
    return train, test


def data_source(dataset: Dataset) -> str:
    """``"synthetic N"`` for a :class:`SyntheticCIFAR100` of N images, else ``"real"``: what a
    run trained on, as its ``summary.json`` records it."""
    return f"synthetic {len(dataset)}" if isinstance(dataset, SyntheticCIFAR100) else "real"


def check_dataset_files(cfg, data_root: str) -> None:
    """Raise :class:`DatasetMissing` naming the path and the fetch command when absent."""
    if cfg.DATASET.TYPE == "cifar100":
        folder = os.path.join(data_root, "cifar-100-python")
        missing = [name for name in ("train", "test", "meta") if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise DatasetMissing(
                f"CIFAR-100 is missing: {', '.join(missing)} not found in {folder}. Fetch it with: "
                f"slkd-fetch cifar100 --mdistiller-root {shlex.quote(os.path.dirname(os.path.abspath(data_root)))}"
            )
    elif cfg.DATASET.TYPE == "imagenet":
        for split in ("train", "val"):
            folder = os.path.join(data_root, "imagenet", split)
            if not os.path.isdir(folder):
                raise DatasetMissing(
                    f"ImageNet {split} split not found at {folder}: put the ILSVRC-2012 "
                    "train/ and val/ class folders there (mdistiller reads data/imagenet)."
                )


def use_views(dataset: Dataset, dataset_type: str, num_views: int) -> None:
    """Make ``dataset`` yield two views ``(weak, strong)`` per image when ``num_views == 2``.

    A dataset whose transform already makes two views keeps it.
    """
    if num_views == 2 and not isinstance(getattr(dataset, "transform", None), TWO_VIEW_TYPES):
        dataset.transform = two_view_transform(dataset_type)


def auto_workers(world_size: int = 1) -> int:
    """Loader workers per process: the CPUs this process may use, shared between processes."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cpus // max(1, world_size) - 1))


def train_loader(dataset, cfg, *, device: torch.device, world_size: int = 1, rank: int = 0, drop_last=False):
    """The training loader: shuffled, sharded across processes under torchrun.

    ``SOLVER.BATCH_SIZE`` is the global batch: each of ``world_size`` processes loads
    ``BATCH_SIZE / world_size`` images (mdistiller's DataParallel split the same batch).
    The order is a permutation drawn from ``(SLKD.SEED, epoch)``, also in one process, and
    each item's random draws come from ``(SLKD.SEED, epoch, index)`` (:class:`SeededItems`),
    so at every step the processes' batches together are the one process's batch. Call
    ``loader.sampler.set_epoch(epoch)`` before each epoch.
    """
    return DataLoader(
        SeededItems(dataset, int(cfg.SLKD.SEED)),
        batch_size=_per_process_batch(cfg.SOLVER.BATCH_SIZE, world_size),
        sampler=_epoch_keys(len(dataset), cfg, world_size, rank),
        drop_last=drop_last,
        **_feeding(cfg, device, world_size),
    )


def key_loader(size: int, collate, cfg, *, device: torch.device, world_size: int = 1, rank: int = 0, drop_last=False):
    """The ``(epoch, index)`` keys :func:`train_loader` loads, in its order and split over
    processes, each batch of keys made into a batch by ``collate(keys)`` in the workers
    (``SLKD.DEVICE_VIEWS``: the batch's draws, the images stay on the device)."""
    return DataLoader(
        _Keys(size),
        batch_size=_per_process_batch(cfg.SOLVER.BATCH_SIZE, world_size),
        sampler=_epoch_keys(size, cfg, world_size, rank),
        collate_fn=collate,
        drop_last=drop_last,
        **_feeding(cfg, device, world_size),
    )


def _epoch_keys(size: int, cfg, world_size: int, rank: int) -> "EpochTagged":
    """This process's share of a permutation of ``range(size)`` drawn from ``(SLKD.SEED,
    epoch)``, as ``(epoch, index)`` keys."""
    return EpochTagged(DistributedSampler(_Keys(size), num_replicas=world_size, rank=rank, shuffle=True, seed=int(cfg.SLKD.SEED)))


class _Keys(Dataset):
    """``size`` items, each its own key."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, key):
        return key


class EpochTagged(Sampler):
    """``sampler``'s indices as ``(epoch, index)`` keys for :class:`SeededItems`.

    The keys are drawn in the main process, where ``set_epoch`` is called, and travel to the
    workers with the batch, so persistent workers learn the epoch without being restarted.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, index) for index in self.sampler)

    def __len__(self):
        return len(self.sampler)


class SeededItems(Dataset):
    """``dataset`` read by ``(epoch, index)`` keys, each item's randomness seeded from
    ``(seed, epoch, index)``.

    Before ``dataset[index]`` runs, python's ``random``, numpy's global state and torch's CPU
    generator (the ones torchvision's transforms, slkd's RandAugment and mdistiller's CRD
    sampling draw from) are seeded from :func:`item_seed`. In a loader worker nothing else
    draws from them; in the main process (no workers) they are put back afterwards, so the
    process's own random streams (a model's dropout) go on undisturbed. The seeding costs
    about 30 us per item in a worker, where a CIFAR-100 item's two views take about 400 us
    (2-core CPU, measured interleaved); saving and restoring numpy's state alone would cost
    70 us more.
    """

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if torch.utils.data.get_worker_info() is not None:
            return self._seeded(epoch, index)
        saved = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
        try:
            return self._seeded(epoch, index)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.default_generator.set_state(saved[2])

    def _seeded(self, epoch, index):
        seed = item_seed(self.seed, epoch, index)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)  # 32 bits: seeding numpy with more costs some 50 us per item
        torch.random.default_generator.manual_seed(seed)
        return self.dataset[index]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for item ``index`` in ``epoch`` of a run seeded with ``seed`` (a hash: no
    two keys of a run share it in practice, and nearby keys give unrelated streams)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def test_loader(dataset, cfg, *, device: torch.device, world_size: int = 1, rank: int = 0):
    """The evaluation loader: in order, sharded without padding under torchrun."""
    sampler = _ShardSampler(len(dataset), world_size, rank) if world_size > 1 else None
    return DataLoader(
        dataset,
        batch_size=int(cfg.DATASET.TEST.BATCH_SIZE),
        shuffle=False,
        sampler=sampler,
        **_feeding(cfg, device, world_size),
    )


class _ShardSampler(torch.utils.data.Sampler):
    """Every ``world_size``-th index from ``rank``: each image evaluated exactly once."""

    def __init__(self, size, world_size, rank):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _feeding(cfg, device: torch.device, world_size: int) -> dict:
    workers = int(cfg.SLKD.LOADER.WORKERS)
    if workers < 0:
        workers = auto_workers(world_size)
    options = {"num_workers": workers, "pin_memory": bool(cfg.SLKD.LOADER.PIN_MEMORY) and device.type == "cuda"}
    if workers > 0:
        options["persistent_workers"] = True  # items are seeded by key (SeededItems), not by worker
        options["prefetch_factor"] = int(cfg.SLKD.LOADER.PREFETCH)
    return options


def _per_process_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ConfigError(
            f"SOLVER.BATCH_SIZE={batch_size} is the global batch and must divide evenly over "
            f"{world_size} processes; pick a multiple of {world_size}"
        )
    return batch_size // world_size

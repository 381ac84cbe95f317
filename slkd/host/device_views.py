"""CIFAR-100's weak and strong views made a batch at a time on the training device.

The PIL path (:class:`slkd.host.views.Cifar100TwoViews` in loader workers) costs some 400 us of
CPU per image for its two views. Here the training set is one uint8 tensor on the device, and
each step's views are made there from the batch's dataset indices:

1. on the host, every item's draws: ``Cifar100TwoViews.draw`` from a torch generator and a
   python ``random.Random`` seeded with :func:`slkd.host.data.item_seed` of ``(seed, epoch,
   index)``, the seed :class:`slkd.host.data.SeededItems` gives the global streams the PIL
   path draws from: the same parameters by construction, whatever the batch, the process or
   the run that draws them;
2. on the host, the draws turned into per-image parameters (:mod:`slkd.host.batch_augment`)
   and packed into one int64 and one float32 tensor, copied to the device without blocking
   (from pinned memory on CUDA);
3. on the device, in a fixed sequence of batched ops: the crops and flips of both views in
   one gather, each RandAugment round on the images sorted by op (the order is known on the
   host, so every op works on one contiguous slice), the Cutout, the normalisation.

Nothing is read back from the device, so making the views does not synchronise the host with
it. The views equal the PIL path's pixel for pixel (:mod:`slkd.host.batch_augment`'s table).
"""

from __future__ import annotations

import math
import random
from itertools import groupby

import torch

from slkd.host.batch_augment import BATCH_RAND_AUGMENT_OPS, affine_nearest, crop_flip_coefficients, cutout_bounds, normalise, paint_boxes
from slkd.host.config import ConfigError
from slkd.host.data import item_seed, key_loader
from slkd.host.views import CIFAR100_MEAN, CIFAR100_PADDING, CIFAR100_SIDE, CIFAR100_STD, Cifar100TwoViews


class BatchDraws:
    """One batch's draws as per-image parameters, in two flat host tensors.

    ``ints`` (int64) holds, in order: the dataset ``rows`` ``[B]``; the crop coefficients of
    the weak then the strong views ``[2B, 6]``; for each RandAugment round, the images'
    ``order`` by op ``[B]``, its inverse ``[B]`` and the op's ints ``[B, 6]`` in that order;
    the Cutout bounds ``[B, 4]``. ``factors`` (float32) holds each round's factors ``[B]``
    in its order. ``segments[r]`` lists round ``r``'s ``(op_index, start, end)`` slices.
    """

    def __init__(self, ints, factors, segments, size):
        self.ints = ints
        self.factors = factors
        self.segments = segments
        self.size = size

    def pin_memory(self):
        """A copy in pinned memory (a loader with ``pin_memory`` calls this)."""
        return BatchDraws(self.ints.pin_memory(), self.factors.pin_memory(), self.segments, self.size)

    def to(self, device):
        """The two tensors on ``device``: copied without blocking, from pinned memory on CUDA."""
        if device.type != "cuda":
            return self.ints.to(device), self.factors.to(device)
        pinned = self if self.ints.is_pinned() else self.pin_memory()
        return pinned.ints.to(device, non_blocking=True), pinned.factors.to(device, non_blocking=True)


def draw_items(views: Cifar100TwoViews, seed: int, epoch: int, indices) -> list:
    """Each item's ``TwoViewDraw``, from ``(seed, epoch, index)`` as the PIL path draws it."""
    generator, rng = torch.Generator(), random.Random()
    drawn = []
    for index in indices:
        key = item_seed(seed, epoch, index)
        generator.manual_seed(key)
        rng.seed(key)
        drawn.append(views.draw(generator, rng))
    return drawn


def draw_batch(views: Cifar100TwoViews, seed: int, epoch: int, rows) -> BatchDraws:
    """The :class:`BatchDraws` of the dataset items ``rows`` in ``epoch`` of a run seeded with ``seed``."""
    rows = [int(row) for row in rows]
    return pack_draws(rows, draw_items(views, seed, epoch, rows), views.augment.num_ops)


class DrawBatch:
    """A loader's ``collate_fn`` for :func:`slkd.host.data.key_loader`: a batch of ``(epoch,
    index)`` keys becomes ``(BatchDraws, labels)``, drawn in the loader's workers (some 35 us
    an image, where PIL's two views take 400)."""

    def __init__(self, views: Cifar100TwoViews, seed: int, targets):
        self.views = views
        self.seed = int(seed)
        self.targets = targets

    def __call__(self, keys):
        rows = [index for _epoch, index in keys]
        labels = torch.tensor([self.targets[row] for row in rows], dtype=torch.int64)
        return draw_batch(self.views, self.seed, keys[0][0], rows), labels


def pack_draws(rows, drawn, num_ops: int) -> BatchDraws:
    """The :class:`BatchDraws` of items ``rows`` of the dataset with draws ``drawn``."""
    side, size = CIFAR100_SIDE, len(rows)
    ints = list(rows)
    for view in ("weak", "strong"):
        for item in drawn:
            ints += crop_flip_coefficients(getattr(item, view), CIFAR100_PADDING, side)
    factors, segments = [], []
    for round_ in range(num_ops):
        operations = [item.augment.operations[round_] for item in drawn]
        order = sorted(range(size), key=lambda image: operations[image][0])
        inverse = [0] * size
        for position, image in enumerate(order):
            inverse[image] = position
        ints += order + inverse
        for image in order:
            op_index, magnitude = operations[image]
            op_ints, factor = BATCH_RAND_AUGMENT_OPS[op_index].arguments(magnitude, side, side)
            ints += op_ints
            factors.append(factor)
        start, slices = 0, []
        for op_index, group in groupby(operations[image][0] for image in order):
            count = sum(1 for _ in group)
            slices.append((op_index, start, start + count))
            start += count
        segments.append(slices)
    for item in drawn:
        ints += cutout_bounds(item.augment.cutout, side, side)
    return BatchDraws(torch.tensor(ints, dtype=torch.int64), torch.tensor(factors, dtype=torch.float32), segments, size)


class DeviceViews:
    """Makes CIFAR-100's ``(weak, strong)`` views of training batches on ``device``.

    Args:
        images: the training set, ``[N, 32, 32, 3]`` uint8 (CIFAR's ``data`` array) or a
            tensor of that shape; kept on ``device`` as ``[N, 3, 32, 32]``.
        seed: the run's ``SLKD.SEED``.
        device: where the images live and the views are made.
        views: the PIL transform whose draws and settings (RandAugment's op count, Cutout
            fraction and fill) are used; ``Cifar100TwoViews()`` by default.

    ``views_of(epoch, indices)`` returns two ``[B, 3, 32, 32]`` float32 tensors, equal to
    ``Cifar100TwoViews`` of those items under :class:`slkd.host.data.SeededItems`.
    """

    def __init__(self, images, seed: int, device, views: Cifar100TwoViews = None):
        self.views = Cifar100TwoViews() if views is None else views
        self.seed = int(seed)
        self.device = torch.device(device)
        images = torch.as_tensor(images)
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.mean = torch.tensor(CIFAR100_MEAN, device=self.device)
        self.std = torch.tensor(CIFAR100_STD, device=self.device)
        self.fill = torch.tensor(self.views.augment.fill, dtype=torch.uint8, device=self.device)

    def views_of(self, epoch: int, indices):
        """``(weak, strong)`` of the items ``indices`` (dataset rows) in ``epoch``."""
        return self.make(draw_batch(self.views, self.seed, epoch, indices))

    def make(self, draws: BatchDraws):
        """``(weak, strong)`` from a batch's ``draws``, made on the device."""
        size = draws.size
        ints, factors = (_Reader(tensor) for tensor in draws.to(self.device))
        images = self.images.index_select(0, ints.take(size))
        crops = ints.take(2 * size, 6)
        weak = affine_nearest(images, crops[:size], separable=True)
        strong = affine_nearest(images, crops[size:], separable=True)
        for slices in draws.segments:
            order, inverse, op_ints, op_factors = ints.take(size), ints.take(size), ints.take(size, 6), factors.take(size)
            ordered = strong.index_select(0, order)
            done = [BATCH_RAND_AUGMENT_OPS[op].apply(ordered[start:end], op_ints[start:end], op_factors[start:end]) for op, start, end in slices]
            strong = torch.cat(done).index_select(0, inverse)
        strong = paint_boxes(strong, ints.take(size, 4), self.fill)
        return normalise(weak, self.mean, self.std), normalise(strong, self.mean, self.std)


class _Reader:
    """Consecutive views into a flat tensor, in :class:`BatchDraws`'s order."""

    def __init__(self, flat):
        self.flat = flat
        self.start = 0

    def take(self, *shape):
        count = math.prod(shape)
        taken = self.flat[self.start: self.start + count].view(*shape)
        self.start += count
        return taken


def training_views(dataset, seed: int, device) -> DeviceViews:
    """The :class:`DeviceViews` of a CIFAR-100 training set (mdistiller's, or
    :class:`slkd.host.data.SyntheticCIFAR100`): its ``data`` array on ``device``, its
    ``Cifar100TwoViews`` transform's settings when it has one."""
    images = getattr(dataset, "data", None)
    if getattr(images, "shape", None) is None or tuple(images.shape[1:]) != (CIFAR100_SIDE, CIFAR100_SIDE, 3) or not hasattr(dataset, "targets"):
        raise ConfigError(
            f"SLKD.DEVICE_VIEWS needs CIFAR-100's training set as an array of N x 32 x 32 x 3 pixels (data) and "
            f"labels (targets); {type(dataset).__name__} has no such data: set SLKD.DEVICE_VIEWS False"
        )
    transform = getattr(dataset, "transform", None)
    return DeviceViews(images, seed, device, views=transform if isinstance(transform, Cifar100TwoViews) else None)


def training_feed(dataset, cfg, num_views: int, *, device, world_size: int = 1, rank: int = 0):
    """``SLKD.DEVICE_VIEWS``'s feed of a two-view trainer: ``(DeviceViews, loader)``, the loader
    yielding each step's ``(BatchDraws, labels)`` for the keys :func:`slkd.host.data.train_loader`
    would load (the same order and split over processes), its workers drawing."""
    if num_views != 2:
        raise ConfigError(
            f"SLKD.DEVICE_VIEWS makes the weak and strong views of two-view methods (SLD, MLKD); "
            f"{cfg.DISTILLER.TYPE} trains on one view: set SLKD.DEVICE_VIEWS False"
        )
    made = training_views(dataset, int(cfg.SLKD.SEED), device)
    collate = DrawBatch(made.views, made.seed, dataset.targets)
    return made, key_loader(len(dataset), collate, cfg, device=device, world_size=world_size, rank=rank)

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

import random
from itertools import groupby

import torch

from slkd.host.batch_augment import BATCH_RAND_AUGMENT_OPS, affine_nearest, crop_flip_coefficients, cutout_bounds, normalise, paint_boxes
from slkd.host.data import item_seed
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

    def to(self, device):
        """The two tensors on ``device``: copied without blocking, from pinned memory on CUDA."""
        if device.type == "cuda":
            return self.ints.pin_memory().to(device, non_blocking=True), self.factors.pin_memory().to(device, non_blocking=True)
        return self.ints.to(device), self.factors.to(device)


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
        starts = 0
        slices = []
        for op_index, group in groupby(operations[image][0] for image in order):
            count = sum(1 for _ in group)
            slices.append((op_index, starts, starts + count))
            starts += count
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

    def draw(self, epoch: int, indices) -> BatchDraws:
        """The host-side draws of the items ``indices`` (dataset rows) in ``epoch``."""
        rows = [int(index) for index in indices]
        drawn = draw_items(self.views, self.seed, epoch, rows)
        return pack_draws(rows, drawn, self.views.augment.num_ops)

    def views_of(self, epoch: int, indices):
        """``(weak, strong)`` of the items ``indices`` in ``epoch``."""
        return self.make(self.draw(epoch, indices))

    def make(self, draws: BatchDraws):
        """``(weak, strong)`` from a batch's ``draws``, made on the device."""
        ints, factors = draws.to(self.device)
        size = draws.size
        rows, ints = ints[:size], ints[size:]
        crops, ints = ints[: 2 * size * 6].view(2 * size, 6), ints[2 * size * 6:]
        images = self.images.index_select(0, rows)
        weak = affine_nearest(images, crops[:size], separable=True)
        strong = affine_nearest(images, crops[size:], separable=True)
        for round_, slices in enumerate(draws.segments):
            order, inverse = ints[:size], ints[size: 2 * size]
            op_ints = ints[2 * size: 8 * size].view(size, 6)
            ints = ints[8 * size:]
            op_factors = factors[round_ * size: (round_ + 1) * size]
            ordered = strong.index_select(0, order)
            done = [BATCH_RAND_AUGMENT_OPS[op].apply(ordered[start:end], op_ints[start:end], op_factors[start:end]) for op, start, end in slices]
            strong = torch.cat(done).index_select(0, inverse)
        strong = paint_boxes(strong, ints.view(size, 4), self.fill)
        return normalise(weak, self.mean, self.std), normalise(strong, self.mean, self.std)

"""slkd.host.batch_augment against PIL: every op on the same images with the same parameters
(CPU, no mdistiller). The largest pixel difference of each op is the one its module table states."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms.v2 import functional as tvf

from slkd.host import batch_augment, views

SIDE = 32

#: The largest |difference| to PIL per op, as slkd.host.batch_augment's table states it.
MAX_DIFFERENCE = {entry[0]: 0 for entry in views.RAND_AUGMENT_OPS}

#: Magnitudes at the edges of each range and where PIL takes another path (angle 0, shear 0:
#: no affine; a translation landing on a whole pixel), beside uniform draws.
EDGE_MAGNITUDES = {
    "Posterize": [4.0, 4.999, 5.0, 7.999],
    "Rotate": [-30.0, 0.0, 29.999, -0.001, 12.5],
    "ShearX": [-0.3, 0.0, 0.2999],
    "ShearY": [-0.3, 0.0, 0.2999],
    "Solarize": [0.0, 0.5, 128.0, 255.0, 255.5],
    "TranslateX": [-0.3, 0.0, 0.015625, -0.046875, 0.2999],
    "TranslateY": [-0.3, 0.0, 0.015625, -0.046875, 0.2999],
    "Brightness": [0.05, 0.5, 0.9499],
    "Color": [0.05, 0.5, 0.9499],
    "Contrast": [0.05, 0.5, 0.9499],
    "Sharpness": [0.05, 0.5, 0.9499],
}


def varied_images(count, seed=0):
    """``[count, 32, 32, 3]`` uint8: full-range noise, noise in narrow per-channel ranges, smooth
    gradients, flat images and channels, two-valued images (the cases where auto-contrast,
    equalisation and the blends take their special paths)."""
    rng = np.random.RandomState(seed)
    images = []
    for index in range(count):
        kind = index % 5
        if kind == 0:
            image = rng.randint(0, 256, (SIDE, SIDE, 3))
        elif kind == 1:
            low = rng.randint(0, 200, 3)
            image = low + rng.randint(0, 56, (SIDE, SIDE, 3)) % (rng.randint(1, 56, 3))
        elif kind == 2:
            ys, xs = np.mgrid[0:SIDE, 0:SIDE]
            image = np.stack([xs * rng.randint(1, 8), ys * rng.randint(1, 8), (xs + ys) * 3 + rng.randint(0, 60)], axis=-1)
        elif kind == 3:
            image = np.broadcast_to(rng.randint(0, 256, 3), (SIDE, SIDE, 3)).copy()
            image[..., rng.randint(0, 3)] = rng.randint(0, 256, (SIDE, SIDE))
        else:
            image = np.where(rng.rand(SIDE, SIDE, 1) < 0.3, rng.randint(0, 256, 3), rng.randint(0, 256, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def as_batch(images):
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def as_pixels(batch):
    return batch.permute(0, 2, 3, 1).numpy()


def largest_difference(ours, theirs):
    return int(np.abs(as_pixels(ours).astype(int) - np.stack(theirs).astype(int)).max())


def magnitudes_for(name, low, high, count, seed):
    rng = random.Random(seed)
    drawn = EDGE_MAGNITUDES.get(name, []) + [low + (high - low) * rng.random() for _ in range(count)]
    return drawn[:count]


def apply_batched(index, images, magnitudes):
    op = batch_augment.BATCH_RAND_AUGMENT_OPS[index]
    arguments = [op.arguments(magnitude, SIDE, SIDE) for magnitude in magnitudes]
    ints = torch.tensor([ints for ints, _factor in arguments], dtype=torch.int64)
    factors = torch.tensor([factor for _ints, factor in arguments], dtype=torch.float32)
    return op.apply(as_batch(images), ints, factors)


def test_the_batched_ops_are_rand_augment_ops_in_their_order():
    assert [op.name for op in batch_augment.BATCH_RAND_AUGMENT_OPS] == [entry[0] for entry in views.RAND_AUGMENT_OPS]


@pytest.mark.parametrize("index", range(len(views.RAND_AUGMENT_OPS)), ids=[entry[0] for entry in views.RAND_AUGMENT_OPS])
def test_each_op_equals_pil_on_the_same_images_and_magnitudes(index):
    name, pil_op, low, high = views.RAND_AUGMENT_OPS[index]
    images = varied_images(60, seed=index)
    magnitudes = magnitudes_for(name, low, high, len(images), seed=index)
    expected = [np.asarray(pil_op(Image.fromarray(image), magnitude)) for image, magnitude in zip(images, magnitudes)]
    ours = apply_batched(index, images, magnitudes)
    assert ours.dtype == torch.uint8 and ours.shape == (len(images), 3, SIDE, SIDE)
    assert largest_difference(ours, expected) <= MAX_DIFFERENCE[name]


def test_ops_change_the_images_they_should():
    # the comparison above would pass for an op that returned its input where PIL does too
    images = varied_images(10)
    for index, (name, _op, low, high) in enumerate(views.RAND_AUGMENT_OPS):
        if name != "Identity":
            changed = apply_batched(index, images, [low + 0.3 * (high - low)] * len(images))
            assert not torch.equal(changed, as_batch(images)), name


def test_crops_and_flips_equal_pil_padding_crop_and_flip():
    images = varied_images(2 * 81)
    crops = [views.CropFlip(top, left, flip) for flip in (False, True) for top in range(9) for left in range(9)]
    coefficients = torch.tensor([batch_augment.crop_flip_coefficients(crop, 4, SIDE) for crop in crops])
    ours = batch_augment.affine_nearest(as_batch(images), coefficients, separable=True)
    expected = [np.asarray(views.crop_flip(Image.fromarray(image), crop, 4)) for image, crop in zip(images, crops)]
    assert largest_difference(ours, expected) == 0


def test_general_affine_path_equals_the_separable_one_where_both_apply():
    images = as_batch(varied_images(8))
    coefficients = torch.tensor([batch_augment.crop_flip_coefficients(views.CropFlip(t, 8 - t, t % 2 == 0), 4, SIDE) for t in range(8)])
    assert torch.equal(batch_augment.affine_nearest(images, coefficients), batch_augment.affine_nearest(images, coefficients, separable=True))


def test_cutout_equals_pil_rectangle():
    rng = random.Random(0)
    fractions = [0.0, 1e-9, 0.03, 0.25, 0.4999] + [0.5 * rng.random() for _ in range(75)]
    boxes = [views.draw_cutout_box(SIDE, SIDE, fraction, rng) for fraction in fractions]
    assert boxes[0] is None and any(box is not None and box[2] == SIDE for box in boxes)
    images = varied_images(len(boxes))
    fill = torch.tensor(views.CUTOUT_FILL, dtype=torch.uint8)
    bounds = torch.tensor([batch_augment.cutout_bounds(box, SIDE, SIDE) for box in boxes])
    ours = batch_augment.paint_boxes(as_batch(images), bounds, fill)
    expected = [np.asarray(views.paint_cutout(Image.fromarray(image), box, views.CUTOUT_FILL)) for image, box in zip(images, boxes)]
    assert largest_difference(ours, expected) == 0


def test_normalise_is_to_tensor_then_normalize_to_the_bit():
    images = varied_images(20)
    mean, std = torch.tensor(views.CIFAR100_MEAN), torch.tensor(views.CIFAR100_STD)
    ours = batch_augment.normalise(as_batch(images), mean, std)
    pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize(views.CIFAR100_MEAN, views.CIFAR100_STD)])
    assert torch.equal(ours, torch.stack([pipeline(Image.fromarray(image)) for image in images]))


def test_torchvision_autocontrast_is_not_pils_which_is_why_it_is_written_here():
    images = varied_images(60, seed=3)
    expected = [np.asarray(views.auto_contrast(Image.fromarray(image), None)) for image in images]
    assert largest_difference(tvf.autocontrast(as_batch(images)), expected) == 1


def test_divide_rounds_once_with_a_python_number_on_either_side():
    values = torch.arange(256, dtype=torch.float32)
    assert torch.equal(batch_augment.divide(values, 255.0), torch.from_numpy(np.arange(256, dtype=np.float32) / np.float32(255)))
    spread = torch.arange(1, 256, dtype=torch.float64)
    assert batch_augment.divide(255.0, spread).tolist() == [255.0 / value for value in range(1, 256)]

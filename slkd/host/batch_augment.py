"""CIFAR-100's view transforms as batched uint8 tensor operations, pixel for pixel PIL's.

Every function takes ``images``, ``[n, 3, H, W]`` uint8 on any device, and per-image
parameters, and returns new ``[n, 3, H, W]`` uint8 images; nothing is read back to the host.
The parameters are prepared on the host from the draws of :mod:`slkd.host.views` (a
magnitude, a crop, a box): a RandAugment op's by its ``arguments(magnitude, width, height)``
as ``(ints, factor)``, six integers and one float32 per image, which its ``apply(images,
ints [n, 6] int64, factors [n] float32)`` reads.

``torchvision.transforms.v2.functional`` takes one parameter for a whole batch (one angle, one
factor, one threshold), so only the ops without parameters can come from it, and of those only
``equalize`` follows PIL's arithmetic; kornia's enhance ops are defined on float images and
differ from PIL's (its brightness adds, its saturation works in HSV). The rest is written here,
each with PIL's own integer, float32 or float64 arithmetic in PIL's order (Pillow's
``libImaging`` and ``ImageOps``), which is what makes them exact:

=============  ======================================================  ==================
operation      implementation                                          max |diff| vs PIL
=============  ======================================================  ==================
crop + flip    here: :func:`affine_nearest`, a gather at the 16.16     0
               fixed-point source coordinates
AutoContrast   here: ``int(v * scale + offset)`` in float64 per        0
               channel (torchvision's ``autocontrast`` divides in
               float32 and differs by 1 on some pixels)
Brightness     here: blend with black, float32, truncated              0
Color          here: blend with PIL's integer L (ITU-R 601-2)          0
Contrast       here: blend with the rounded mean of L                  0
Equalize       ``torchvision.transforms.v2.functional.equalize``       0
Identity       the images themselves                                   0
Posterize      here: ``v & mask`` with a per-image mask                0
Rotate         here: PIL's matrix (double, rounded to 15 digits) in    0
               16.16 fixed point, :func:`affine_nearest`
Sharpness      here: PIL's 3x3 SMOOTH in float32 in its order (border  0
               pixels kept), then blend
ShearX/Y       here: 16.16 fixed point, :func:`affine_nearest`         0
Solarize       here: ``v < ceil(t) ? v : 255 - v``                     0
TranslateX/Y   here: a shift by ``floor(t + 0.5)`` pixels              0 (see below)
Cutout         here: a mask of the inclusive box PIL paints            0
normalise      here: ``(v / 255 - mean) / std`` in float32, as         0
               ``ToTensor`` and ``Normalize`` compute it (mean and
               std kept on the device)
=============  ======================================================  ==================

The differences are measured by tests/test_host_batch_augment.py on the same images and
parameters, on CPU tensors; tests/test_cuda.py checks the views made on a GPU against PIL's
too (not yet run on one). Where exactness rests on an assumption, it is this: PIL's C code is compiled
without fused multiply-adds (x86-64 wheels are; an aarch64 build may contract ``a + b * c``
in its blends and filter, which could move a pixel by 1); and PIL translates by adding 1.0 to
a double once per pixel, which can cross an integer where ``t + 0.5 + k`` lies within about
1e-14 of one, a shift of one pixel in that row or column that a uniformly drawn ``t`` reaches
with a probability of about 1e-13.

All images here have CIFAR-100's size, where PIL's affine transforms always take their
fixed-point path (coordinates below 32768).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as tvf

FIXED_ONE = 1 << 16  # 1.0 in PIL's 16.16 fixed point
FIXED_HALF = 1 << 15
NO_INTS = (0, 0, 0, 0, 0, 0)
# SMOOTH's weights as Pillow holds them: float32 quotients by the divisor 13
SMOOTH_EDGE = float(np.float32(1) / np.float32(13))
SMOOTH_CENTRE = float(np.float32(5) / np.float32(13))

#: ``arguments(magnitude, width, height) -> (ints, factor)`` on the host, ``apply(images,
#: ints, factors) -> images`` on the device; one per entry of
#: :data:`slkd.host.views.RAND_AUGMENT_OPS`, in its order.
BatchOp = namedtuple("BatchOp", "name arguments apply")


def divide(numerator, denominator):
    """``numerator / denominator`` rounded once, as PIL and ``ToTensor`` divide, on any device
    (either may be a python number: it becomes a tensor, because CUDA multiplies a tensor by
    the reciprocal of a python divisor, which can round differently)."""
    if not torch.is_tensor(numerator):
        numerator = torch.full_like(denominator, numerator)
    if not torch.is_tensor(denominator):
        denominator = torch.full((), denominator, dtype=numerator.dtype, device=numerator.device)
    return numerator.div(denominator)


# --- geometry: a gather from fixed-point source coordinates ---

def affine_nearest(images, coefficients, separable=False):
    """PIL's nearest-neighbour affine transform in 16.16 fixed point, per image.

    ``coefficients`` ``[n, 6]`` int64 ``(a0, a1, a2, a3, a4, a5)``: output pixel ``(x, y)``
    reads input ``((a0 x + a1 y + a2) >> 16, (a3 x + a4 y + a5) >> 16)``, black when that
    lies outside the image (the arithmetic of Pillow's ``affine_fixed``, whose ``a2`` and
    ``a5`` already hold the half-pixel offset). ``separable``: the caller knows ``a1`` and
    ``a3`` are 0 (crops, flips, translations), so the coordinates are computed per row and
    per column only.
    """
    n, channels, height, width = images.shape
    ys = torch.arange(height, device=images.device).view(1, height, 1)
    xs = torch.arange(width, device=images.device).view(1, 1, width)
    a = coefficients.view(n, 6, 1, 1)
    if separable:
        source_x = (a[:, 0] * xs + a[:, 2]) >> 16
        source_y = (a[:, 4] * ys + a[:, 5]) >> 16
    else:
        source_x = (a[:, 0] * xs + a[:, 1] * ys + a[:, 2]) >> 16
        source_y = (a[:, 3] * xs + a[:, 4] * ys + a[:, 5]) >> 16
    # a border of one black pixel: a coordinate outside the image is clamped onto it
    source = (source_y.clamp(-1, height) + 1) * (width + 2) + (source_x.clamp(-1, width) + 1)
    bordered = F.pad(images, (1, 1, 1, 1)).view(n, channels, -1)
    index = source.expand(n, height, width).reshape(n, 1, -1).expand(n, channels, -1)
    return bordered.gather(2, index).view(n, channels, height, width)


def _fix(value):
    return math.floor(value * 65536.0 + 0.5)


def fixed_point(matrix):
    """The 16.16 ints Pillow's ``affine_fixed`` makes of an affine ``matrix`` (6 doubles,
    input = matrix applied to the output pixel's centre)."""
    a0, a1, a2, a3, a4, a5 = matrix
    return (_fix(a0), _fix(a1), _fix(a2 + a0 * 0.5 + a1 * 0.5), _fix(a3), _fix(a4), _fix(a5 + a3 * 0.5 + a4 * 0.5))


def crop_flip_coefficients(crop, padding, side):
    """:func:`affine_nearest` coefficients of :func:`slkd.host.views.crop_flip`: the image
    zero-padded by ``padding``, cropped at ``crop.top``, ``crop.left``, mirrored if
    ``crop.flip`` (``side``: the image's width)."""
    first_column = crop.left - padding + (side - 1 if crop.flip else 0)
    step = -FIXED_ONE if crop.flip else FIXED_ONE
    return (step, 0, first_column * FIXED_ONE + FIXED_HALF, 0, FIXED_ONE, (crop.top - padding) * FIXED_ONE + FIXED_HALF)


def _rotate_arguments(degrees, width, height):
    # PIL's Image.rotate: the angle modulo 360, the matrix rounded to 15 digits, about the centre
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    centre_x, centre_y = width / 2, height / 2
    c = a * -centre_x + b * -centre_y + 0.0 + centre_x
    f = d * -centre_x + e * -centre_y + 0.0 + centre_y
    return fixed_point((a, b, c, d, e, f)), 0.0


def _shear_x_arguments(shear, _width, _height):
    return fixed_point((1, shear, 0, 0, 1, 0)), 0.0


def _shear_y_arguments(shear, _width, _height):
    return fixed_point((1, 0, 0, shear, 1, 0)), 0.0


def _translate_shift(offset):
    # PIL's scaling path reads pixel floor(offset + 0.5 + k) for output k, adding 1.0 per pixel
    return math.floor(offset + 0.5)


def _translate_x_arguments(width_fraction, width, _height):
    shift = _translate_shift(width_fraction * width)
    return (FIXED_ONE, 0, shift * FIXED_ONE, 0, FIXED_ONE, FIXED_HALF), 0.0


def _translate_y_arguments(height_fraction, _width, height):
    shift = _translate_shift(height_fraction * height)
    return (FIXED_ONE, 0, FIXED_HALF, 0, FIXED_ONE, shift * FIXED_ONE), 0.0


def _affine(images, ints, _factors):
    return affine_nearest(images, ints)


def _shift(images, ints, _factors):
    return affine_nearest(images, ints, separable=True)


# --- colour: blends with a degenerate image, PIL's ImageEnhance ---

def _blend(degenerate, images, factors):
    """PIL's ``Image.blend(degenerate, images, factor)`` for factors in [0, 1]: ``d + f * (v -
    d)`` in float32, truncated (``degenerate`` broadcasts against ``images``)."""
    base = degenerate.float()
    return (base + factors.view(-1, 1, 1, 1) * (images.float() - base)).to(torch.uint8)


def pil_luminance(images):
    """PIL's ``convert("L")``: ``(299 R + 587 G + 114 B) / 1000`` in its 16-bit fixed point,
    ``[n, 1, H, W]`` int32."""
    red, green, blue = images.to(torch.int32).split(1, dim=1)
    return (red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16  # python weights: no copy to the device


def _brightness(images, _ints, factors):
    return _blend(torch.zeros((), device=images.device), images, factors)


def _color(images, _ints, factors):
    return _blend(pil_luminance(images), images, factors)


def _contrast(images, _ints, factors):
    luminance = pil_luminance(images)
    pixels = luminance.shape[-1] * luminance.shape[-2]
    mean = (divide(luminance.sum(dim=(1, 2, 3), keepdim=True).double(), float(pixels)) + 0.5).floor()  # int(mean + 0.5)
    return _blend(mean, images, factors)


def pil_smooth(images):
    """PIL's ``filter(ImageFilter.SMOOTH)``: the 3x3 kernel (1 1 1, 1 5 1, 1 1 1) / 13 in
    float32, summed as Pillow's ``ImagingFilter3x3`` sums (0.5, then the row below, the row,
    the row above, each left to right), truncated; the border pixels are kept."""
    values = images.float()
    ones, fives = values * SMOOTH_EDGE, values * SMOOTH_CENTRE
    outer = (ones[..., :-2] + ones[..., 1:-1]) + ones[..., 2:]
    centre = (ones[..., :-2] + fives[..., 1:-1]) + ones[..., 2:]
    total = ((0.5 + outer[:, :, 2:]) + centre[:, :, 1:-1]) + outer[:, :, :-2]
    smooth = images.clone()
    smooth[:, :, 1:-1, 1:-1] = total.clamp(0, 255).to(torch.uint8)
    return smooth


def _sharpness(images, _ints, factors):
    return _blend(pil_smooth(images), images, factors)


def _factor_arguments(factor, _width, _height):
    return NO_INTS, factor


# --- lookup tables: ImageOps ---

def _auto_contrast(images, _ints, _factors):
    low = images.amin(dim=(2, 3), keepdim=True).double()
    high = images.amax(dim=(2, 3), keepdim=True).double()
    spread = high - low
    scale = divide(255.0, spread.clamp(min=1))
    offset = -low * scale
    stretched = (images.double() * scale + offset).trunc().clamp(0, 255).to(torch.uint8)
    return torch.where(spread > 0, stretched, images)  # one value in a channel: unchanged


def _equalize(images, _ints, _factors):
    return tvf.equalize(images)


def _identity(images, _ints, _factors):
    return images


def _posterize_arguments(bits, _width, _height):
    kept = max(1, int(bits))
    return (~(2 ** (8 - kept) - 1) & 0xFF, 0, 0, 0, 0, 0), 0.0


def _posterize(images, ints, _factors):
    return images & ints[:, 0].to(torch.uint8).view(-1, 1, 1, 1)


def _solarize_arguments(threshold, _width, _height):
    return (math.ceil(threshold), 0, 0, 0, 0, 0), 0.0  # v < threshold <=> v < ceil(threshold)


def _solarize(images, ints, _factors):
    return torch.where(images < ints[:, :1].view(-1, 1, 1, 1), images, 255 - images)


def _no_arguments(_magnitude, _width, _height):
    return NO_INTS, 0.0


BATCH_RAND_AUGMENT_OPS = (
    BatchOp("AutoContrast", _no_arguments, _auto_contrast),
    BatchOp("Brightness", _factor_arguments, _brightness),
    BatchOp("Color", _factor_arguments, _color),
    BatchOp("Contrast", _factor_arguments, _contrast),
    BatchOp("Equalize", _no_arguments, _equalize),
    BatchOp("Identity", _no_arguments, _identity),
    BatchOp("Posterize", _posterize_arguments, _posterize),
    BatchOp("Rotate", _rotate_arguments, _affine),
    BatchOp("Sharpness", _factor_arguments, _sharpness),
    BatchOp("ShearX", _shear_x_arguments, _affine),
    BatchOp("ShearY", _shear_y_arguments, _affine),
    BatchOp("Solarize", _solarize_arguments, _solarize),
    BatchOp("TranslateX", _translate_x_arguments, _shift),
    BatchOp("TranslateY", _translate_y_arguments, _shift),
)


# --- Cutout and normalisation ---

def cutout_bounds(box, width, height):
    """The inclusive ``(top, bottom, left, right)`` pixels PIL paints for a Cutout ``box``
    (``draw_cutout_box``'s; None: an empty range): its coordinates truncated to ints, the far
    edges clipped to the image."""
    if box is None:
        return (0, -1, 0, -1)
    left, top, right, bottom = (int(value) for value in box)
    return (top, min(bottom, height - 1), left, min(right, width - 1))


def paint_boxes(images, bounds, fill):
    """``images`` with each image's inclusive ``bounds`` ``[n, 4]`` int64 (top, bottom, left,
    right) painted in ``fill`` (``[3]`` uint8 on the images' device)."""
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device).view(1, height)
    columns = torch.arange(width, device=images.device).view(1, width)
    in_rows = (rows >= bounds[:, 0:1]) & (rows <= bounds[:, 1:2])
    in_columns = (columns >= bounds[:, 2:3]) & (columns <= bounds[:, 3:4])
    inside = (in_rows.view(-1, 1, height, 1) & in_columns.view(-1, 1, 1, width))
    return torch.where(inside, fill.view(1, 3, 1, 1), images)


def normalise(images, mean, std):
    """``ToTensor()`` then ``Normalize(mean, std)``'s float32 arithmetic: ``(v / 255 - mean) /
    std`` (``mean``, ``std``: ``[3]`` float32 on the images' device)."""
    return divide(images.float(), 255.0).sub(mean.view(1, 3, 1, 1)).div(std.view(1, 3, 1, 1))

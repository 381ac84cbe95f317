"""Two-view (weak / strong) data augmentation used by logit distillation with strong views.

MLKD and SLD train on two views of every image: a *weak* view (the usual crop and flip)
and a *strong* view (crop and flip drawn afresh, then a FixMatch-style RandAugment that
always ends in a Cutout). This module rebuilds that pipeline from torchvision and PIL alone,
without importing mdistiller, so it can be used, tested and pickled on its own.

Why not ``torchvision.transforms.RandAugment``? Its op names overlap, but it is a different
augmentation: it picks one global magnitude bin for every op and flips its sign at random
(enhance factors around 1.0, translations in pixels of a 331-pixel reference image), it draws
from torch's generator, and it has no Cutout. Here every op draws its own magnitude uniformly
from its own range (enhance factors in [0.05, 0.95], i.e. always weakening), randomness comes
from python's ``random`` and a Cutout always follows, as in the FixMatch code MLKD reuses.

Every random choice is *drawn* first and then *applied*: ``FixMatchRandAugment.draw`` and
``Cifar100TwoViews.draw`` return the parameters (crops, flips, op choices and magnitudes, the
Cutout box), ``apply`` makes the views from them. For CIFAR-100,
:mod:`slkd.host.device_views` makes the same views in batches on the training device from
the same ``Cifar100TwoViews.draw``, so the two paths use the same parameters by construction.
"""
import random
from collections import namedtuple

import torch

from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms
from torchvision.transforms import functional

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CUTOUT_FILL = (125, 123, 114)


# --- RandAugment operations: each takes a PIL image and a magnitude, returns a PIL image ---

def auto_contrast(img, _magnitude):
    return ImageOps.autocontrast(img)


def brightness(img, factor):
    return ImageEnhance.Brightness(img).enhance(factor)


def color(img, factor):
    return ImageEnhance.Color(img).enhance(factor)


def contrast(img, factor):
    return ImageEnhance.Contrast(img).enhance(factor)


def sharpness(img, factor):
    return ImageEnhance.Sharpness(img).enhance(factor)


def equalize(img, _magnitude):
    return ImageOps.equalize(img)


def identity(img, _magnitude):
    return img


def posterize(img, bits):
    """Keep ``int(bits)`` high bits per channel (truncated, never fewer than one)."""
    return ImageOps.posterize(img, max(1, int(bits)))


def rotate(img, degrees):
    """PIL's default rotation: nearest neighbour, same size, black corners."""
    return img.rotate(degrees)


def _affine(img, coefficients):
    return img.transform(img.size, Image.Transform.AFFINE, coefficients)


def shear_x(img, shear):
    return _affine(img, (1, shear, 0, 0, 1, 0))


def shear_y(img, shear):
    return _affine(img, (1, 0, 0, shear, 1, 0))


def solarize(img, threshold):
    return ImageOps.solarize(img, threshold)


def translate_x(img, width_fraction):
    """Shift by ``width_fraction`` of the width (positive moves the content left)."""
    return _affine(img, (1, 0, width_fraction * img.size[0], 0, 1, 0))


def translate_y(img, height_fraction):
    """Shift by ``height_fraction`` of the height (positive moves the content up)."""
    return _affine(img, (1, 0, 0, 0, 1, height_fraction * img.size[1]))


# (name, operation, lowest magnitude, highest magnitude); a magnitude is drawn uniformly in
# [low, high) for every application. Ops that ignore it keep the range (0, 1) so that the
# sequence of random draws is the same as in the original code.
RAND_AUGMENT_OPS = (
    ("AutoContrast", auto_contrast, 0, 1),
    ("Brightness", brightness, 0.05, 0.95),
    ("Color", color, 0.05, 0.95),
    ("Contrast", contrast, 0.05, 0.95),
    ("Equalize", equalize, 0, 1),
    ("Identity", identity, 0, 1),
    ("Posterize", posterize, 4, 8),
    ("Rotate", rotate, -30, 30),
    ("Sharpness", sharpness, 0.05, 0.95),
    ("ShearX", shear_x, -0.3, 0.3),
    ("ShearY", shear_y, -0.3, 0.3),
    ("Solarize", solarize, 0, 256),
    ("TranslateX", translate_x, -0.3, 0.3),
    ("TranslateY", translate_y, -0.3, 0.3),
)


# --- Cutout ---

def draw_cutout_centre(extent, rng):
    """One centre coordinate for a Cutout on an axis of ``extent`` pixels.

    The original calls ``np.random.uniform(extent)``, which is ``uniform(low=extent,
    high=1.0)``: ``extent + (1 - extent) * u``, a value in (1, extent]. ``random.uniform``
    computes the same expression, so the behaviour (including never centring below 1) is kept.
    """
    return rng.uniform(extent, 1.0)


def cutout_box(width, height, side, centre_x, centre_y):
    """The (left, top, right, bottom) box of a Cutout, with the original's arithmetic.

    The top-left corner is the centre minus half the side, clamped at 0 and truncated to int;
    the bottom-right corner is that corner plus the full side, clamped at the image size.
    PIL's rectangle includes its right and bottom edges, so the painted square is up to
    ``side + 1`` pixels wide.
    """
    left = int(max(0, centre_x - side / 2.0))
    top = int(max(0, centre_y - side / 2.0))
    return left, top, min(width, left + side), min(height, top + side)


def draw_cutout_box(width, height, side_fraction, rng):
    """The PIL box of a Cutout of side ``side_fraction * width`` (its centre drawn from
    ``rng``), or None for a side of 0 or less (no Cutout, and no centre drawn)."""
    side = side_fraction * width
    if side <= 0:
        return None
    centre_x = draw_cutout_centre(width, rng)
    centre_y = draw_cutout_centre(height, rng)
    return cutout_box(width, height, side, centre_x, centre_y)


def paint_cutout(img, box, fill):
    """A copy of ``img`` with ``box`` (from :func:`draw_cutout_box`) painted in ``fill``;
    ``img`` itself when ``box`` is None."""
    if box is None:
        return img
    painted = img.copy()
    ImageDraw.Draw(painted).rectangle(box, fill)
    return painted


#: One application's draws: ``operations``, ``((op_index, magnitude), ...)`` into
#: ``RAND_AUGMENT_OPS`` in the order they apply; ``cutout``, the Cutout's PIL box or None.
RandAugmentDraw = namedtuple("RandAugmentDraw", "operations cutout")


def _magnitude(index, rng):
    _name, _op, low, high = RAND_AUGMENT_OPS[index]
    return low + (high - low) * rng.random()


class FixMatchRandAugment:
    """FixMatch-style RandAugment, as MLKD applies it to its strong view (PIL in, PIL out).

    Draws ``num_ops`` operations uniformly *with replacement* from ``RAND_AUGMENT_OPS``,
    applies each with a magnitude drawn uniformly from that op's own range, then always
    applies a Cutout whose side is ``uniform[0, cutout_fraction)`` times the image width,
    filled with ``fill``. There is no global magnitude.

    ``rng``: an optional ``random.Random`` that supplies every random draw (tests seed one).
    With ``None`` (use this for training) the draws come from python's global ``random``,
    which torch's DataLoader seeds differently in each worker; a ``random.Random`` given here
    is copied into every worker with the same state, so workers would repeat each other.
    """

    def __init__(self, num_ops=2, cutout_fraction=0.5, fill=CUTOUT_FILL, rng=None):
        self.num_ops = num_ops
        self.cutout_fraction = cutout_fraction
        self.fill = tuple(fill)
        self.rng = rng

    def _random(self):
        return random if self.rng is None else self.rng

    def draw(self, width, height, rng=None):
        """The :class:`RandAugmentDraw` of the next application to a ``width`` x ``height``
        image, drawn from ``rng`` (default: this transform's own, see the class).

        The draws, in order: the op indices (``choices``, one ``random()`` each), one
        magnitude per op, the Cutout's side fraction, then its centre's x and y.
        """
        rng = self._random() if rng is None else rng
        chosen = rng.choices(range(len(RAND_AUGMENT_OPS)), k=self.num_ops)
        operations = tuple((index, _magnitude(index, rng)) for index in chosen)
        box = draw_cutout_box(width, height, self.cutout_fraction * rng.random(), rng)
        return RandAugmentDraw(operations, box)

    def apply(self, img, drawn):
        """``img`` with ``drawn``'s operations and Cutout applied."""
        for index, magnitude in drawn.operations:
            img = RAND_AUGMENT_OPS[index][1](img, magnitude)
        return paint_cutout(img, drawn.cutout, self.fill)

    def __call__(self, img):
        return self.apply(img, self.draw(*img.size))

    def __repr__(self):
        return (f"{type(self).__name__}(num_ops={self.num_ops}, "
                f"cutout_fraction={self.cutout_fraction}, fill={self.fill})")


class TwoViews:
    """Apply a weak and a strong transform to the same image: returns ``(weak, strong)``."""

    def __init__(self, weak, strong):
        self.weak = weak
        self.strong = strong

    def __call__(self, img):
        return self.weak(img), self.strong(img)

    def __repr__(self):
        return f"{type(self).__name__}(weak={self.weak!r}, strong={self.strong!r})"


# --- CIFAR-100 (32x32) ---

CIFAR100_SIDE = 32
CIFAR100_PADDING = 4

#: A random crop of the zero-padded image, then a flip: ``top`` and ``left`` offsets into the
#: padded image (0 .. 2 * padding), ``flip`` mirrors the crop left-right.
CropFlip = namedtuple("CropFlip", "top left flip")

#: The draws of one image's two views: a :class:`CropFlip` each, and the strong view's
#: :class:`RandAugmentDraw`.
TwoViewDraw = namedtuple("TwoViewDraw", "weak strong augment")


def draw_crop_flips(count, padding, generator=None):
    """``count`` (even) :class:`CropFlip` draws, each what torchvision's ``RandomCrop(side,
    padding=padding)`` then ``RandomHorizontalFlip()`` draw for an image of that side, one
    after the other, from ``generator`` (torch's default CPU generator when None).

    torchvision draws each from one 32-bit output of the generator's Mersenne Twister:
    ``randint(0, 2 * padding + 1)`` takes the output modulo the range (top, then left),
    ``rand() < 0.5`` compares its low 24 bits over 2^24 (the flip). Here one ``random_`` over
    int64's whole range reads all the outputs at once, two per element, the earlier one in
    the high half: the same values for a fraction of the cost of ``3 * count`` calls (tested
    against torchvision's own draws).
    """
    span = 2 * padding + 1
    words = torch.empty(3 * count // 2, dtype=torch.int64).random_(-(2**63), None, generator=generator)
    outputs = []
    for word in words.tolist():
        word &= 0xFFFFFFFFFFFFFFFF
        outputs += (word >> 32, word & 0xFFFFFFFF)
    return [CropFlip(top % span, left % span, (flip & 0xFFFFFF) < 2**23)
            for top, left, flip in zip(outputs[0::3], outputs[1::3], outputs[2::3])]


def crop_flip(img, drawn, padding):
    """``img`` zero-padded by ``padding`` pixels, cropped back to its size at ``drawn``'s
    offsets, and mirrored if ``drawn.flip``."""
    width, height = img.size
    cropped = functional.crop(functional.pad(img, padding), drawn.top, drawn.left, height, width)
    return functional.hflip(cropped) if drawn.flip else cropped


def _to_normalised_tensor(mean, std):
    return [transforms.ToTensor(), transforms.Normalize(mean, std)]


def cifar100_weak_transform():
    """Random 32-pixel crop of the 4-pixel zero-padded image, random flip, normalise."""
    return transforms.Compose(
        [transforms.RandomCrop(CIFAR100_SIDE, padding=CIFAR100_PADDING), transforms.RandomHorizontalFlip()]
        + _to_normalised_tensor(CIFAR100_MEAN, CIFAR100_STD))


class Cifar100TwoViews:
    """CIFAR-100's two views of a 32x32 image: ``(weak, strong)`` normalised tensors.

    Weak: a random 32-pixel crop of the 4-pixel zero-padded image, a random flip. Strong: its
    own crop and flip, then ``augment`` (``FixMatchRandAugment()`` by default). Pixels and
    random draws are those of ``TwoViews`` of torchvision's ``RandomCrop(32, padding=4)``,
    ``RandomHorizontalFlip()``, (``augment``,) ``ToTensor()``, ``Normalize``: the crops and flips
    from torch's generator, RandAugment from python's ``random``. ``draw`` makes all of an
    image's draws and ``apply`` the views from them, so :mod:`slkd.host.device_views` can make
    the same views from the same draws.
    """

    def __init__(self, augment=None):
        self.augment = FixMatchRandAugment() if augment is None else augment
        self.normalise = transforms.Compose(_to_normalised_tensor(CIFAR100_MEAN, CIFAR100_STD))

    def draw(self, generator=None, rng=None):
        """The image's :class:`TwoViewDraw`: crops and flips from ``generator`` (torch's
        default when None), RandAugment from ``rng`` (the augment's own when None)."""
        weak, strong = draw_crop_flips(2, CIFAR100_PADDING, generator)
        return TwoViewDraw(weak, strong, self.augment.draw(CIFAR100_SIDE, CIFAR100_SIDE, rng))

    def apply(self, img, drawn):
        """The two normalised views of ``img`` made with ``drawn`` (a :class:`TwoViewDraw`)."""
        weak = crop_flip(img, drawn.weak, CIFAR100_PADDING)
        strong = self.augment.apply(crop_flip(img, drawn.strong, CIFAR100_PADDING), drawn.augment)
        return self.normalise(weak), self.normalise(strong)

    def __call__(self, img):
        if img.size != (CIFAR100_SIDE, CIFAR100_SIDE):
            raise ValueError(f"CIFAR-100 views need a 32x32 image, got {img.size[0]}x{img.size[1]}")
        return self.apply(img, self.draw())

    def __repr__(self):
        return f"{type(self).__name__}(augment={self.augment!r})"


def cifar100_test_transform():
    """Normalise only."""
    return transforms.Compose(_to_normalised_tensor(CIFAR100_MEAN, CIFAR100_STD))


# --- ImageNet (224x224) ---

def _imagenet_crop_and_flip():
    return [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]


def imagenet_weak_transform():
    """Random resized 224-pixel crop, random flip, normalise."""
    return transforms.Compose(
        _imagenet_crop_and_flip() + _to_normalised_tensor(IMAGENET_MEAN, IMAGENET_STD))


def imagenet_strong_transform():
    """Its own resized crop and flip, then ``FixMatchRandAugment()``, then normalise."""
    return transforms.Compose(
        _imagenet_crop_and_flip() + [FixMatchRandAugment()]
        + _to_normalised_tensor(IMAGENET_MEAN, IMAGENET_STD))


def imagenet_test_transform():
    """Resize the short side to 256, centre-crop 224, normalise."""
    return transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224)]
        + _to_normalised_tensor(IMAGENET_MEAN, IMAGENET_STD))


def imagenet_two_views():
    """``TwoViews`` of the ImageNet weak and strong transforms."""
    return TwoViews(imagenet_weak_transform(), imagenet_strong_transform())


_TWO_VIEW_FACTORIES = {"cifar100": Cifar100TwoViews, "imagenet": imagenet_two_views}
SUPPORTED_DATASET_TYPES = tuple(_TWO_VIEW_FACTORIES)

#: The transforms that make two views (:func:`slkd.host.data.use_views` keeps them).
TWO_VIEW_TYPES = (TwoViews, Cifar100TwoViews)


def two_view_transform(dataset_type: str):
    """The two-view training transform for ``"cifar100"`` (:class:`Cifar100TwoViews`) or
    ``"imagenet"`` (``TwoViews(weak, strong)``)."""
    if dataset_type not in _TWO_VIEW_FACTORIES:
        raise ValueError(f"unsupported dataset_type {dataset_type!r}; "
                         f"supported: {', '.join(SUPPORTED_DATASET_TYPES)}")
    return _TWO_VIEW_FACTORIES[dataset_type]()

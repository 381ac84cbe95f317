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
"""
import random

from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms

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


def cutout(img, side_fraction, fill, rng):
    """Paint a square of side ``side_fraction * width`` in ``fill`` on a copy of ``img``.

    A side of 0 or less leaves the image as it is.
    """
    side = side_fraction * img.size[0]
    if side <= 0:
        return img
    width, height = img.size
    centre_x = draw_cutout_centre(width, rng)
    centre_y = draw_cutout_centre(height, rng)
    painted = img.copy()
    ImageDraw.Draw(painted).rectangle(cutout_box(width, height, side, centre_x, centre_y), fill)
    return painted


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

    def sample_operations(self):
        """The ``(name, operation, magnitude)`` triples that the next application would use."""
        rng = self._random()
        chosen = rng.choices(RAND_AUGMENT_OPS, k=self.num_ops)
        return [(name, op, low + (high - low) * rng.random()) for name, op, low, high in chosen]

    def __call__(self, img):
        for _name, op, magnitude in self.sample_operations():
            img = op(img, magnitude)
        rng = self._random()
        return cutout(img, self.cutout_fraction * rng.random(), self.fill, rng)

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

def _cifar100_crop_and_flip():
    return [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]


def _to_normalised_tensor(mean, std):
    return [transforms.ToTensor(), transforms.Normalize(mean, std)]


def cifar100_weak_transform():
    """Random 32-pixel crop of the 4-pixel zero-padded image, random flip, normalise."""
    return transforms.Compose(
        _cifar100_crop_and_flip() + _to_normalised_tensor(CIFAR100_MEAN, CIFAR100_STD))


def cifar100_strong_transform():
    """Its own crop and flip, then ``FixMatchRandAugment()``, then normalise."""
    return transforms.Compose(
        _cifar100_crop_and_flip() + [FixMatchRandAugment()]
        + _to_normalised_tensor(CIFAR100_MEAN, CIFAR100_STD))


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


_TWO_VIEW_FACTORIES = {
    "cifar100": (cifar100_weak_transform, cifar100_strong_transform),
    "imagenet": (imagenet_weak_transform, imagenet_strong_transform),
}
SUPPORTED_DATASET_TYPES = tuple(_TWO_VIEW_FACTORIES)


def two_view_transform(dataset_type: str) -> TwoViews:
    """The ``TwoViews(weak, strong)`` training transform for ``"cifar100"`` or ``"imagenet"``."""
    if dataset_type not in _TWO_VIEW_FACTORIES:
        raise ValueError(f"unsupported dataset_type {dataset_type!r}; "
                         f"supported: {', '.join(SUPPORTED_DATASET_TYPES)}")
    make_weak, make_strong = _TWO_VIEW_FACTORIES[dataset_type]
    return TwoViews(make_weak(), make_strong())

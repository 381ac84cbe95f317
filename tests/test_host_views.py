"""Tests for slkd.host.views: the weak / strong two-view augmentation (CPU, no mdistiller)."""
import inspect
import pickle
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from torchvision import transforms

from slkd.host import views

FILL = (125, 123, 114)
CIFAR_MEAN = torch.tensor([0.5071, 0.4867, 0.4408]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2675, 0.2565, 0.2761]).view(3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def noise_image(width=32, height=32, seed=0):
    """Random RGB image; values stop at 120 so it never contains the cutout fill colour."""
    pixels = np.random.RandomState(seed).randint(0, 121, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def position_image():
    """32x32 image whose every pixel is distinct, so a crop can be located exactly."""
    ys, xs = np.mgrid[0:32, 0:32]
    pixels = np.stack([xs * 8, ys * 8, np.full_like(xs, 200)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def constant_image(rgb, width=32, height=32):
    return Image.new("RGB", (width, height), rgb)


def pixels(img):
    return np.asarray(img, dtype=np.uint8)


def op(name):
    return {entry[0]: entry[1] for entry in views.RAND_AUGMENT_OPS}[name]


def fill_mask(img, fill=FILL):
    return (pixels(img) == np.array(fill, dtype=np.uint8)).all(axis=-1)


def bounding_box_size(mask):
    rows, cols = np.nonzero(mask)
    return np.ptp(rows) + 1, np.ptp(cols) + 1


# --- op table ---

def test_op_table_is_exactly_the_fourteen_fixmatch_ops_with_their_ranges():
    table = {name: (low, high) for name, _fn, low, high in views.RAND_AUGMENT_OPS}
    assert len(views.RAND_AUGMENT_OPS) == 14
    assert table == {
        "AutoContrast": (0, 1), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95),
        "Contrast": (0.05, 0.95), "Equalize": (0, 1), "Identity": (0, 1),
        "Posterize": (4, 8), "Rotate": (-30, 30), "Sharpness": (0.05, 0.95),
        "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0, 256),
        "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3),
    }
    assert all(callable(fn) for _name, fn, _low, _high in views.RAND_AUGMENT_OPS)


# --- single ops against computations written here ---

def test_identity_returns_the_image_unchanged():
    img = noise_image()
    assert np.array_equal(pixels(op("Identity")(img, 0.7)), pixels(img))


@pytest.mark.parametrize("magnitude, mask", [(4.0, 0xF0), (4.9, 0xF0), (7.99, 0xFE), (0.5, 0x80)])
def test_posterize_truncates_bits_and_keeps_at_least_one(magnitude, mask):
    img = noise_image()
    assert np.array_equal(pixels(op("Posterize")(img, magnitude)), pixels(img) & mask)


def test_solarize_inverts_values_at_or_above_the_threshold():
    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(3).reshape(16, 16, 3))
    original = pixels(img).astype(int)
    expected = np.where(original < 128, original, 255 - original)
    assert np.array_equal(pixels(op("Solarize")(img, 128)), expected)


def test_shear_x_is_the_pil_affine_with_the_shear_in_the_second_coefficient():
    img = noise_image()
    expected = img.transform(img.size, Image.AFFINE, (1, 0.3, 0, 0, 1, 0))
    assert np.array_equal(pixels(op("ShearX")(img, 0.3)), pixels(expected))
    assert not np.array_equal(pixels(expected), pixels(img))


def test_shear_y_is_the_pil_affine_with_the_shear_in_the_fourth_coefficient():
    img = noise_image()
    expected = img.transform(img.size, Image.AFFINE, (1, 0, 0, -0.2, 1, 0))
    assert np.array_equal(pixels(op("ShearY")(img, -0.2)), pixels(expected))


def test_rotate_is_pil_default_rotation():
    img = noise_image()
    assert np.array_equal(pixels(op("Rotate")(img, 30)), pixels(img.rotate(30)))


def test_translate_x_shifts_by_a_fraction_of_the_width():
    img = noise_image(width=40, height=20)
    shifted = pixels(op("TranslateX")(img, 0.25))  # 10 pixels
    assert np.array_equal(shifted[:, :30], pixels(img)[:, 10:])
    assert (shifted[:, 30:] == 0).all()


def test_translate_y_shifts_by_a_fraction_of_the_height():
    img = noise_image(width=40, height=20)
    shifted = pixels(op("TranslateY")(img, 0.25))  # 5 pixels
    assert np.array_equal(shifted[:15], pixels(img)[5:])
    assert (shifted[15:] == 0).all()


@pytest.mark.parametrize("name, enhancer", [("Brightness", ImageEnhance.Brightness),
                                            ("Contrast", ImageEnhance.Contrast),
                                            ("Color", ImageEnhance.Color),
                                            ("Sharpness", ImageEnhance.Sharpness)])
def test_enhance_ops_use_the_magnitude_as_the_enhance_factor(name, enhancer):
    img = noise_image()
    expected = enhancer(img).enhance(0.3)
    assert np.array_equal(pixels(op(name)(img, 0.3)), pixels(expected))


# --- cutout ---

def test_cutout_box_reproduces_the_original_arithmetic():
    # corner = int(max(0, centre - side / 2)); far corner = min(size, corner + side)
    assert views.cutout_box(32, 32, 8.0, 10.7, 20.2) == (6, 16, 14.0, 24.0)
    assert views.cutout_box(32, 32, 16.0, 3.0, 30.0) == (0, 22, 16.0, 32)
    assert views.cutout_box(40, 20, 9.6, 12.0, 5.0) == (7, 0, 16.6, 9.6)


def test_cutout_centre_matches_numpy_uniform_called_with_one_argument():
    # np.random.uniform(w) means uniform(low=w, high=1.0) = w + (1 - w) * u, in (1, w]
    u = random.Random(3).random()
    assert views.draw_cutout_centre(32, random.Random(3)) == pytest.approx(32 + (1 - 32) * u)
    centres = [views.draw_cutout_centre(32, random.Random(seed)) for seed in range(500)]
    assert 1 <= min(centres) < 2 and 31 < max(centres) <= 32


@pytest.mark.parametrize("seed", range(5))
def test_cutout_paints_a_fill_coloured_square_of_the_expected_size(seed):
    img = noise_image(seed=seed)
    assert not fill_mask(img).any()
    twin = random.Random(seed)
    centre_x, centre_y = twin.uniform(32, 1.0), twin.uniform(32, 1.0)
    left, top = int(max(0, centre_x - 4)), int(max(0, centre_y - 4))
    right, bottom = min(31, left + 8), min(31, top + 8)  # PIL includes both edges

    painted = views.paint_cutout(img, views.draw_cutout_box(32, 32, 0.25, random.Random(seed)), FILL)

    expected = np.zeros((32, 32), dtype=bool)
    expected[top:bottom + 1, left:right + 1] = True
    assert np.array_equal(fill_mask(painted), expected)
    assert np.array_equal(pixels(painted)[~expected], pixels(img)[~expected])
    assert not fill_mask(img).any(), "cutout must paint a copy, not the input"


def test_cutout_with_zero_side_is_a_no_op_that_draws_no_centre():
    rng = random.Random(0)
    assert views.draw_cutout_box(32, 32, 0.0, rng) is None
    assert rng.random() == random.Random(0).random()
    img = noise_image()
    assert views.paint_cutout(img, None, FILL) is img


def test_rand_augment_always_ends_with_a_cutout():
    augment = views.FixMatchRandAugment(num_ops=0, rng=random.Random(0))
    img = noise_image()
    for _ in range(20):
        mask = fill_mask(augment(img))
        assert mask.any()
        height, width = bounding_box_size(mask)
        assert mask.sum() == height * width  # one solid rectangle
        assert height <= 17 and width <= 17  # side < 0.5 * 32, plus PIL's inclusive edge


def test_rand_augment_uses_the_configured_fill_and_fraction():
    augment = views.FixMatchRandAugment(num_ops=0, cutout_fraction=0.1, fill=(1, 2, 3),
                                        rng=random.Random(1))
    img = noise_image()
    assert not fill_mask(img, (1, 2, 3)).any()
    for _ in range(20):
        mask = fill_mask(augment(img), (1, 2, 3))
        assert mask.any()
        height, width = bounding_box_size(mask)
        assert height <= 5 and width <= 5  # side < 0.1 * 32 = 3.2, plus PIL's inclusive edge


# --- RandAugment sampling ---

def test_seeded_rand_augment_is_reproducible_and_seeds_differ():
    images = [noise_image(seed=s) for s in range(5)]

    def run(seed):
        augment = views.FixMatchRandAugment(rng=random.Random(seed))
        return [pixels(augment(img)) for img in images]

    first, again, other = run(7), run(7), run(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_rand_augment_draws_ops_with_replacement_and_uniformly():
    augment = views.FixMatchRandAugment(rng=random.Random(0))
    draws = [augment.draw(32, 32).operations for _ in range(2800)]
    assert all(len(ops) == 2 for ops in draws)
    repeats = sum(first[0] == second[0] for first, second in draws)
    assert 120 < repeats < 280  # expected 2800 / 14 = 200 with replacement, 0 without
    counts = Counter(views.RAND_AUGMENT_OPS[index][0] for ops in draws for index, _magnitude in ops)
    assert set(counts) == {entry[0] for entry in views.RAND_AUGMENT_OPS}
    assert min(counts.values()) > 300 and max(counts.values()) < 500  # expected 400 each


def test_magnitudes_are_drawn_within_each_op_range():
    ranges = {name: (low, high) for name, _fn, low, high in views.RAND_AUGMENT_OPS}
    augment = views.FixMatchRandAugment(num_ops=3, rng=random.Random(1))
    magnitudes = [(views.RAND_AUGMENT_OPS[index][0], m) for _ in range(1000) for index, m in augment.draw(32, 32).operations]
    for name, (low, high) in ranges.items():
        drawn = [m for op_name, m in magnitudes if op_name == name]
        margin = 0.05 * (high - low)
        assert low <= min(drawn) < low + margin and high - margin < max(drawn) < high


def test_rand_augment_constructor_has_no_global_magnitude():
    parameters = inspect.signature(views.FixMatchRandAugment).parameters
    assert {name: p.default for name, p in parameters.items()} == {
        "num_ops": 2, "cutout_fraction": 0.5, "fill": FILL, "rng": None}


# --- CIFAR-100 views ---

def test_two_views_returns_the_weak_and_strong_result_of_the_same_image():
    two = views.TwoViews(lambda img: ("weak", img), lambda img: ("strong", img))
    img = noise_image()
    assert two(img) == (("weak", img), ("strong", img))


def test_cifar100_two_views_are_normalised_tensors_that_differ():
    torch.manual_seed(0)
    weak, strong = views.two_view_transform("cifar100")(noise_image())
    assert weak.shape == strong.shape == (3, 32, 32)
    assert weak.dtype == strong.dtype == torch.float32
    assert not torch.equal(weak, strong)


def test_cifar100_weak_view_of_a_constant_image_is_the_normalised_constant_plus_padding():
    rgb = (200, 100, 50)
    value = (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255 - CIFAR_MEAN) / CIFAR_STD
    padding = (0 - CIFAR_MEAN) / CIFAR_STD
    weak = views.cifar100_weak_transform()
    torch.manual_seed(0)
    for _ in range(10):
        out = weak(constant_image(rgb))
        assert torch.allclose(out[:, 4:28, 4:28], value.expand(3, 24, 24), atol=1e-5)
        is_value = torch.isclose(out, value.expand_as(out), atol=1e-5).all(dim=0)
        is_padding = torch.isclose(out, padding.expand_as(out), atol=1e-5).all(dim=0)
        assert (is_value | is_padding).all()


def _cifar_crop_candidates(img):
    """Every (offset, flip) output of the weak pipeline, computed directly."""
    tensor = (torch.from_numpy(pixels(img).copy()).permute(2, 0, 1).float() / 255 - CIFAR_MEAN) / CIFAR_STD
    padded = torch.nn.functional.pad(tensor, (4, 4, 4, 4))
    padded = padded + ((0 - CIFAR_MEAN) / CIFAR_STD) * (padded == 0)  # zero pixel, normalised
    candidates = {}
    for top in range(9):
        for left in range(9):
            crop = padded[:, top:top + 32, left:left + 32]
            candidates[(top, left, False)] = crop
            candidates[(top, left, True)] = crop.flip(-1)
    return candidates


def _locate(view, candidates):
    matches = [key for key, crop in candidates.items() if torch.allclose(view, crop, atol=1e-5)]
    assert len(matches) == 1
    return matches[0]


def test_strong_view_crops_and_flips_independently_of_the_weak_view():
    img = position_image()
    candidates = _cifar_crop_candidates(img)
    two = views.Cifar100TwoViews(views.FixMatchRandAugment(num_ops=0, cutout_fraction=0.0))
    torch.manual_seed(0)
    pairs = [tuple(_locate(view, candidates) for view in two(img)) for _ in range(30)]
    assert sum(weak != strong for weak, strong in pairs) >= 25
    assert len({strong for _weak, strong in pairs}) > 5


def _torchvision_two_views(augment):
    """The CIFAR-100 two views composed from torchvision's crop and flip (slkd's pipeline
    before ``Cifar100TwoViews`` drew its crops in one call)."""
    def crop_flip():
        return [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    normalise = [transforms.ToTensor(), transforms.Normalize(views.CIFAR100_MEAN, views.CIFAR100_STD)]
    return views.TwoViews(transforms.Compose(crop_flip() + normalise), transforms.Compose(crop_flip() + [augment] + normalise))


def test_cifar100_two_views_equal_torchvision_crops_and_flips_then_rand_augment():
    ours, theirs = views.Cifar100TwoViews(), _torchvision_two_views(views.FixMatchRandAugment())
    assert (ours.augment.num_ops, ours.augment.cutout_fraction, ours.augment.fill) == (2, 0.5, FILL)
    for seed in range(40):
        img = noise_image(seed=seed)
        outputs = []
        for transform in (ours, theirs):
            random.seed(seed)
            torch.manual_seed(seed)
            outputs.append(transform(img))
        assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_crop_flip_draws_are_torchvision_random_crop_and_flip_draws():
    generator = torch.Generator()
    for seed in (0, 1, 2**40 + 3, 2**64 - 1):
        generator.manual_seed(seed)
        drawn = views.draw_crop_flips(4, 4, generator)
        torch.manual_seed(seed)
        expected = []
        for _ in range(4):
            top, left, _h, _w = transforms.RandomCrop.get_params(Image.new("RGB", (40, 40)), (32, 32))
            expected.append(views.CropFlip(top, left, bool(torch.rand(1) < 0.5)))
        assert drawn == expected


def test_cifar100_two_views_refuse_other_sizes():
    with pytest.raises(ValueError, match="CIFAR-100 views need a 32x32 image, got 40x20"):
        views.Cifar100TwoViews()(noise_image(width=40, height=20))


def test_cifar100_test_transform_only_normalises():
    rgb = (10, 128, 250)
    expected = (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255 - CIFAR_MEAN) / CIFAR_STD
    out = views.cifar100_test_transform()(constant_image(rgb))
    assert torch.allclose(out, expected.expand(3, 32, 32), atol=1e-5)


# --- ImageNet views ---

def test_imagenet_two_views_are_224_pixel_tensors_that_differ():
    torch.manual_seed(0)
    weak, strong = views.two_view_transform("imagenet")(noise_image(width=300, height=260))
    assert weak.shape == strong.shape == (3, 224, 224)
    assert not torch.equal(weak, strong)


def test_imagenet_strong_transform_runs_rand_augment_between_flip_and_to_tensor():
    steps = views.imagenet_strong_transform().transforms
    assert [type(step).__name__ for step in steps] == [
        "RandomResizedCrop", "RandomHorizontalFlip", "FixMatchRandAugment", "ToTensor", "Normalize"]


def test_imagenet_weak_view_of_a_constant_image_is_the_normalised_constant():
    rgb = (30, 160, 220)
    expected = (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    out = views.imagenet_weak_transform()(constant_image(rgb, width=300, height=260))
    assert torch.allclose(out, expected.expand(3, 224, 224), atol=1e-5)


def test_imagenet_test_transform_resizes_centre_crops_and_normalises():
    img = noise_image(width=300, height=260)
    out = views.imagenet_test_transform()(img)
    assert out.shape == (3, 224, 224)
    resized = img.resize((295, 256), Image.BILINEAR)
    left, top = round((295 - 224) / 2), round((256 - 224) / 2)
    crop = pixels(resized.crop((left, top, left + 224, top + 224)))
    expected = (torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(out, expected, atol=1e-5)


# --- selection and pickling ---

def test_two_view_transform_rejects_unknown_dataset_types_naming_the_supported_ones():
    with pytest.raises(ValueError, match="cifar100") as error:
        views.two_view_transform("mnist")
    assert "imagenet" in str(error.value) and "mnist" in str(error.value)


@pytest.mark.parametrize("dataset_type, image_size, side", [("cifar100", (32, 32), 32),
                                                            ("imagenet", (300, 260), 224)])
def test_two_view_transforms_survive_a_pickle_round_trip(dataset_type, image_size, side):
    transform = pickle.loads(pickle.dumps(views.two_view_transform(dataset_type)))
    weak, strong = transform(noise_image(*image_size))
    assert weak.shape == strong.shape == (3, side, side)


@pytest.mark.parametrize("make, image_size, side", [(views.cifar100_test_transform, (32, 32), 32),
                                                    (views.imagenet_test_transform, (300, 260), 224)])
def test_test_transforms_survive_a_pickle_round_trip(make, image_size, side):
    transform = pickle.loads(pickle.dumps(make()))
    assert transform(noise_image(*image_size)).shape == (3, side, side)


def test_seeded_rand_augment_pickles_with_its_generator_state():
    augment = views.FixMatchRandAugment(rng=random.Random(5))
    copy = pickle.loads(pickle.dumps(augment))
    img = noise_image()
    for _ in range(5):
        assert np.array_equal(pixels(augment(img)), pixels(copy(img)))

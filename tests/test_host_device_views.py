"""slkd.host.device_views: CIFAR-100's two views made a batch at a time on a device (here CPU
tensors) are the PIL path's, parameters and pixels, for the same (seed, epoch, index)."""

import math
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slkd.host import views
from slkd.host.config import ConfigError
from slkd.host.data import SeededItems, SyntheticCIFAR100, key_loader, train_loader
from slkd.host.device_views import DeviceViews, DrawBatch, draw_batch, draw_items, training_feed, training_views
from tests.helpers.tiny import tiny_cfg, tiny_trainer


def pil_views(dataset, seed, epoch, indices):
    """The PIL path's ``(weak, strong)`` of ``indices``, stacked, as a loader worker makes them."""
    items = SeededItems(dataset, seed)
    pairs = [items[(epoch, index)][0] for index in indices]
    return torch.stack([weak for weak, _ in pairs]), torch.stack([strong for _, strong in pairs])


@pytest.fixture(scope="module")
def dataset():
    return SyntheticCIFAR100(240, views.Cifar100TwoViews(), seed=4)


def test_each_item_draws_what_the_pil_path_applies(dataset, monkeypatch):
    applied = []
    apply = views.Cifar100TwoViews.apply
    monkeypatch.setattr(views.Cifar100TwoViews, "apply", lambda self, img, drawn: applied.append(drawn) or apply(self, img, drawn))
    keys = [(seed, epoch, index) for seed in (0, 7) for epoch in (0, 3) for index in range(0, 240, 4)]
    for seed, epoch, index in keys:
        SeededItems(dataset, seed)[(epoch, index)]
    drawn = [draw_items(dataset.transform, seed, epoch, [index])[0] for seed, epoch, index in keys]
    assert drawn == applied
    assert len({item.augment.operations for item in drawn}) == len(keys)  # every key its own draws


@pytest.mark.parametrize("seed, epoch", [(0, 0), (5, 11)])
def test_views_equal_the_pil_path_to_the_bit(dataset, seed, epoch):
    indices = random.Random(seed).sample(range(len(dataset)), 160)
    weak, strong = DeviceViews(dataset.data, seed, "cpu").views_of(epoch, indices)
    expected_weak, expected_strong = pil_views(dataset, seed, epoch, indices)
    assert weak.dtype == strong.dtype == torch.float32 and weak.shape == (160, 3, 32, 32)
    assert torch.equal(weak, expected_weak)
    assert torch.equal(strong, expected_strong)


def test_views_follow_the_transform_settings():
    augment = views.FixMatchRandAugment(num_ops=3, cutout_fraction=0.2, fill=(9, 8, 7))
    dataset = SyntheticCIFAR100(40, views.Cifar100TwoViews(augment), seed=1)
    made = DeviceViews(dataset.data, 2, "cpu", views=dataset.transform).views_of(1, range(40))
    expected = pil_views(dataset, 2, 1, range(40))
    assert torch.equal(made[0], expected[0]) and torch.equal(made[1], expected[1])


def test_a_batch_split_between_processes_gives_the_same_views(dataset):
    device_views = DeviceViews(dataset.data, 3, "cpu")
    indices = list(range(100, 164))
    whole = device_views.views_of(2, indices)
    halves = [device_views.views_of(2, indices[rank::2]) for rank in (0, 1)]
    for view in (0, 1):
        joined = torch.empty_like(whole[view])
        joined[0::2], joined[1::2] = halves[0][view], halves[1][view]
        assert torch.equal(joined, whole[view])


def test_views_change_with_epoch_and_seed(dataset):
    indices = list(range(32))
    first = DeviceViews(dataset.data, 0, "cpu").views_of(1, indices)[1]
    for seed, epoch in ((0, 2), (1, 1)):
        other = DeviceViews(dataset.data, seed, "cpu").views_of(epoch, indices)[1]
        assert sum(not torch.equal(a, b) for a, b in zip(first, other)) >= 31


class DeviceTraffic(TorchDispatchMode):
    """Records copies from host tensors to the meta device and values read back."""

    def __init__(self):
        super().__init__()
        self.copies, self.reads = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sources = [arg for arg in args if isinstance(arg, torch.Tensor)]
        if any(t.device.type == "cpu" for t in sources) and isinstance(out, torch.Tensor) and out.device.type == "meta":
            self.copies.append(tuple(out.shape))
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            self.reads.append(func)
        return out


def test_making_views_reads_nothing_back_and_copies_only_the_draws(monkeypatch):
    """No host-device synchronisation: on the meta device (where reading a value raises), the
    views of a batch copy the batch's two draw tensors to the device and nothing else, and
    build no tensor from host data there."""
    device_views = DeviceViews(SyntheticCIFAR100(128, None, seed=0).data, 0, "meta")
    draws = draw_batch(device_views.views, 0, 1, range(64))
    built = []
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, _original=original, **kwargs: built.append(kwargs.get("device")) or _original(*args, **kwargs))
    with DeviceTraffic() as traffic:
        weak, strong = device_views.make(draws)
    assert weak.device.type == strong.device.type == "meta" and strong.shape == (64, 3, 32, 32)
    assert sorted(traffic.copies) == sorted([tuple(draws.ints.shape), tuple(draws.factors.shape)])
    assert traffic.reads == [] and built == []


@pytest.mark.parametrize("world_size", [1, 2])
def test_the_key_loader_feeds_the_batches_of_the_pil_loader(dataset, world_size):
    """slkd's training loader (PIL views in the workers) and the key loader whose workers draw
    for the device views yield, per process and step, the same images, labels and views."""
    cfg = tiny_cfg("unused", batch=32, seed=6)
    device = torch.device("cpu")
    device_views = training_views(dataset, 6, device)
    for rank in range(world_size):
        cfg.SLKD.LOADER.WORKERS = 0
        pil = train_loader(dataset, cfg, device=device, world_size=world_size, rank=rank)
        cfg.SLKD.LOADER.WORKERS = 2
        keys = key_loader(len(dataset), DrawBatch(device_views.views, 6, dataset.targets), cfg, device=device, world_size=world_size, rank=rank)
        for loader in (pil, keys):
            loader.sampler.set_epoch(4)
        steps = 0
        for ((weak, strong), labels, _index), (draws, key_labels) in zip(pil, keys):
            made = device_views.make(draws)
            assert torch.equal(labels, key_labels) and torch.equal(made[0], weak) and torch.equal(made[1], strong)
            steps += 1
        assert steps == len(pil) == len(keys) == -(-len(dataset) // 32)  # a global batch of 32 per step


def test_training_views_need_cifar_shaped_data():
    class Folder:
        transform = None
        targets = [0]

    with pytest.raises(ConfigError) as caught:
        training_views(Folder(), 0, "cpu")
    assert str(caught.value) == (
        "SLKD.DEVICE_VIEWS needs CIFAR-100's training set as an array of N x 32 x 32 x 3 pixels (data) and labels "
        "(targets); Folder has no such data: set SLKD.DEVICE_VIEWS False"
    )
    augment = views.FixMatchRandAugment(num_ops=1)
    assert training_views(SyntheticCIFAR100(4, views.Cifar100TwoViews(augment)), 0, "cpu").views.augment is augment


def count_batches_made(monkeypatch) -> list:
    """Every batch of views made on the device from now on, as its size."""
    made = []
    make = DeviceViews.make
    monkeypatch.setattr(DeviceViews, "make", lambda self, draws: made.append(draws.size) or make(self, draws))
    return made


def test_two_epochs_with_device_views_train_what_the_pil_path_trains(tmp_path, monkeypatch):
    """SLKD.DEVICE_VIEWS in slkd's trainer: the loss is finite and falls, and the run ends with
    the PIL run's metrics and weights to the bit (the same views, in the same batches)."""
    made = count_batches_made(monkeypatch)
    runs = {}
    for name, device_views in (("pil", False), ("device", True)):
        cfg = tiny_cfg(tmp_path / name, epochs=2, batch=8)
        cfg.SLD.GAMMA = 150  # the pseudo-teacher term stays off: a falling loss is learning
        cfg.SLKD.DEVICE_VIEWS = device_views
        trainer = tiny_trainer(cfg, random_views=True)
        trainer.train()
        runs[name] = ([row["train_loss"] for row in trainer.record.read_metrics()], trainer.student.state_dict())
        assert made == [8] * 3 * 2 * device_views  # 24 images: 3 batches an epoch
    losses, weights = runs["device"]
    assert all(math.isfinite(loss) for loss in losses) and losses[1] < losses[0]
    assert losses == runs["pil"][0]
    assert weights.keys() == runs["pil"][1].keys() and all(torch.equal(weights[key], runs["pil"][1][key]) for key in weights)


def test_device_views_refuse_one_view_methods_in_one_line(dataset):
    cfg = tiny_cfg("unused")
    cfg.DISTILLER.TYPE = "KD"
    with pytest.raises(ConfigError) as caught:
        training_feed(dataset, cfg, 1, device=torch.device("cpu"))
    assert str(caught.value) == (
        "SLKD.DEVICE_VIEWS makes the weak and strong views of two-view methods (SLD, MLKD); KD trains on one view: "
        "set SLKD.DEVICE_VIEWS False"
    )

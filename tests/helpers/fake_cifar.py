"""A CIFAR-100-shaped dataset of random pixels in torchvision's on-disk format."""

import pickle
from pathlib import Path

import numpy as np


def write_fake_cifar100(root, train_images=16, test_images=16, seed=0, max_label=99):
    """Write ``root/cifar-100-python/{train,test,meta}`` as torchvision reads them (str keys,
    as the released Python 2 pickles load with latin1); returns that folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train_images), ("test", test_images)):
        entry = {
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "fine_labels": rng.integers(0, max_label + 1, size=count).tolist(),
            "coarse_labels": [0] * count,
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(entry, stream)
    with open(folder / "meta", "wb") as stream:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, stream)
    return folder

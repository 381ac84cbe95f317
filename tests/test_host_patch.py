"""mdistiller's own tools/train.py trains SLD after the plugin patch, on both hosts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.fake_cifar import write_fake_cifar100
from tests.helpers.hosts import MDISTILLER, missing, writable_copy

ROOT = Path(__file__).resolve().parents[1]
PATCH = ROOT / "patches" / "mdistiller-plugins.patch"
CONFIG = ROOT / "mdistiller_configs" / "cifar100" / "sld" / "res32x4_res8x4.yaml"


@pytest.fixture
def patched_checkout(host, tmp_path):
    """A copy of the host checkout with the patch applied, fake CIFAR-100 and a teacher."""
    source = Path(host.package.__file__).resolve().parents[1]
    if not (source / "tools" / "train.py").is_file():
        pytest.skip(missing(MDISTILLER, f"{source} is an installed mdistiller without tools/train.py"))
    copy = tmp_path / "mdistiller"
    writable_copy(source, copy)
    subprocess.run(["git", "apply", str(PATCH)], cwd=copy, check=True)
    write_fake_cifar100(copy / "data", train_images=16, test_images=16)
    teacher_class, checkpoint = host.cifar_model_dict["resnet32x4"]
    relative = Path(checkpoint).resolve().relative_to(source.resolve())
    target = copy / relative
    target.parent.mkdir(parents=True)
    torch.save({"model": teacher_class(num_classes=100).state_dict()}, target)
    return copy


def test_patch_is_small_and_generic():
    text = PATCH.read_text()
    assert "slkd" not in text.lower(), "the patch must load any plugin, not name slkd"
    assert "mdistiller.plugins" in text
    assert sum(1 for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")) < 40


def test_mdistiller_tools_train_runs_sld_after_patch(patched_checkout, tmp_path):
    output = tmp_path / "runs"
    env = dict(os.environ)
    env.pop("SLKD_MDISTILLER_PATH", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "helpers"), str(patched_checkout), str(ROOT)])
    command = [
        sys.executable, "tools/train.py", "--cfg", str(CONFIG),
        "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "8", "DATASET.TEST.BATCH_SIZE", "8",
        "SLKD.LOADER.WORKERS", "0", "LOG.PREFIX", str(output),
    ]
    result = subprocess.run(command, cwd=patched_checkout, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = list(output.rglob("metrics.jsonl"))
    assert len(runs) == 1, f"expected one run folder under {output}"
    line = runs[0].read_text().splitlines()[0]
    for key in ('"loss_ce"', '"loss_kd"', '"teacher_swap_rate"', '"test_acc"'):
        assert key in line
    assert (runs[0].parent / "latest").is_file()


def test_unpatched_tools_train_does_not_know_sld(host, tmp_path):
    """Without the patch the host never loads slkd: its config merge rejects the SLD node."""
    source = Path(host.package.__file__).resolve().parents[1]
    if not (source / "tools" / "train.py").is_file():
        pytest.skip(missing(MDISTILLER, f"{source} is an installed mdistiller without tools/train.py"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "helpers"), str(source)])
    result = subprocess.run(
        [sys.executable, str(source / "tools" / "train.py"), "--cfg", str(CONFIG)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "SLD" in result.stderr

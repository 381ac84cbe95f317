"""mdistiller's own tools/train.py trains SLD after the plugin patch, on both hosts."""

import json
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


def _tools_train(checkout, output, config, *opts):
    """Run the patched checkout's tools/train.py for one epoch of 8-image batches."""
    env = dict(os.environ)
    env.pop("SLKD_MDISTILLER_PATH", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "helpers"), str(checkout), str(ROOT)])
    command = [
        sys.executable, "tools/train.py", "--cfg", str(config),
        "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "8", "DATASET.TEST.BATCH_SIZE", "8",
        "SLKD.LOADER.WORKERS", "0", "LOG.PREFIX", str(output), *opts,
    ]
    return subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=600)


def test_mdistiller_tools_train_runs_sld_after_patch(patched_checkout, tmp_path):
    output = tmp_path / "runs"
    result = _tools_train(patched_checkout, output, CONFIG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = list(output.rglob("metrics.jsonl"))
    assert len(runs) == 1, f"expected one run folder under {output}"
    line = runs[0].read_text().splitlines()[0]
    for key in ('"loss_ce"', '"loss_kd"', '"teacher_swap_rate"', '"test_acc"'):
        assert key in line
    assert (runs[0].parent / "latest").is_file()


def test_tools_train_runs_the_hosts_kd_on_two_views_with_standardized_logits(patched_checkout, tmp_path):
    """PROTOCOL and LOGITS under mdistiller's own tools/train.py: the host's KD config, run
    by slkd's trainer on two views, its loss through the host's kd_loss on z-scored logits."""
    output = tmp_path / "runs"
    config = patched_checkout / "configs" / "cifar100" / "kd.yaml"
    result = _tools_train(patched_checkout, output, config, "LOG.WANDB", "False", "SOLVER.TRAINER", "slkd", "PROTOCOL.VIEWS", "2", "LOGITS.STANDARDIZE", "True")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(output.rglob("summary.json")).read_text())
    assert summary["views"] == 2
    assert '"loss_kd"' in next(output.rglob("metrics.jsonl")).read_text()


def test_tools_train_stops_on_a_moved_sld_key_naming_the_new_one(patched_checkout, tmp_path):
    result = _tools_train(patched_checkout, tmp_path / "runs", CONFIG, "SLD.STRONG_VIEW", "False")
    assert result.returncode != 0
    assert "SLD.STRONG_VIEW is now PROTOCOL.VIEWS" in result.stderr


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

"""slkd's trainer on a CPU: seeds, records, resume after SIGKILL, damaged checkpoints,
non-finite losses. Runs without mdistiller (tests/helpers/tiny.py stands in for it)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slkd.host.trainer import NonFiniteLoss
from slkd.utils.checkpoint import CheckpointError, load
from tests.helpers.tiny import tiny_cfg, tiny_trainer

HELPER = Path(__file__).parent / "helpers" / "tiny_run.py"
LOSS_KEYS = ("train_loss", "loss_ce", "loss_kd")


def metrics(prefix):
    path = Path(prefix) / "tiny" / "run" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def student_weights(prefix):
    return load(Path(prefix) / "tiny" / "run" / "student_latest")["model"]


def test_same_seed_same_losses_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        tiny_trainer(tiny_cfg(tmp_path / name, epochs=2, seed=seed)).train()
        runs[name] = [[line[key] for key in LOSS_KEYS] for line in metrics(tmp_path / name)]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_run_folder_records_everything(tmp_path):
    tiny_trainer(tiny_cfg(tmp_path, epochs=2)).train()
    folder = tmp_path / "tiny" / "run"
    for name in ("config.yaml", "command.txt", "environment.json", "metrics.jsonl", "summary.json", "latest", "best", "student_latest", "student_best", "student_2"):
        assert (folder / name).is_file(), name
    env = json.loads((folder / "environment.json").read_text())
    assert {"python", "torch", "gpus", "slkd"} <= set(env)
    lines = metrics(tmp_path)
    assert [line["epoch"] for line in lines] == [1, 2]
    assert lines[0]["lr"] == pytest.approx(0.1) and lines[1]["lr"] == pytest.approx(0.1)
    for key in LOSS_KEYS + ("train_acc", "test_acc", "test_acc_top5", "test_loss", "train_seconds", "teacher_swap_rate"):
        assert key in lines[0]
    assert 0 <= lines[0]["train_acc"] <= 100 and 0 <= lines[0]["test_acc"] <= 100
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_acc"] == max(line["test_acc"] for line in lines)
    assert summary["last_acc"] == lines[-1]["test_acc"] and summary["seed"] == 0
    # what the benchmark reads instead of re-deriving it: the tiny sets are 24 synthetic images
    assert (summary["views"], summary["data"], summary["smoke"], summary["device"]) == (2, "synthetic 24", False, "cpu")
    state = load(folder / "latest")
    assert {"epoch", "model", "optimizer", "best_acc", "rng", "scaler", "config"} <= set(state)


def test_learning_rate_follows_mdistiller_steps(tmp_path):
    tiny_trainer(tiny_cfg(tmp_path, epochs=3)).train()
    assert [round(line["lr"], 6) for line in metrics(tmp_path)] == [0.1, 0.1, 0.01]


@pytest.mark.parametrize(
    "loading",
    [[], ["--workers", "2", "--random-views"]],
    ids=["fixed-views-no-workers", "random-views-persistent-workers"],
)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, loading):
    """Also with random views loaded by persistent workers: the resumed process's new workers
    must draw epoch 2's augmentations as the uninterrupted run's workers did in their second epoch."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, str(HELPER), str(whole), "3", *loading], check=True, capture_output=True)
    died = subprocess.run([sys.executable, str(HELPER), str(killed), "3", "--kill-at", "2:5", *loading], capture_output=True)
    assert died.returncode == -9, died.stderr.decode()[-2000:]
    assert [line["epoch"] for line in metrics(killed)] == [1]
    resumed = subprocess.run([sys.executable, str(HELPER), str(killed), "3", "--resume", *loading], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    expected, got = metrics(whole), metrics(killed)
    assert [line["epoch"] for line in got] == [1, 2, 3]
    for a, b in zip(expected, got):
        for key in LOSS_KEYS + ("test_acc", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    for name, tensor in student_weights(whole).items():
        torch.testing.assert_close(student_weights(killed)[name], tensor)


@pytest.mark.parametrize(
    "kill",
    ["latest:1:after", "latest:2:before", "best:4:before", "student_best:4:before"],
)
def test_a_kill_around_the_checkpoints_loses_no_metrics_and_no_best(tmp_path, kill):
    """Killed just after epoch 1's ``latest`` (its metrics line must already be written),
    just before epoch 2's (the line is written, and the resume must drop and redo it), or
    while the best checkpoint of the last epoch is written (``latest`` must not be ahead of
    it): the resumed run ends with the uninterrupted run's metrics, summary and best."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, str(HELPER), str(whole), "4"], check=True, capture_output=True)
    assert [line["best_acc"] for line in metrics(whole)][-2:] == [18.75, 25.0]  # epoch 4 improves on the best
    died = subprocess.run([sys.executable, str(HELPER), str(killed), "4", "--kill-saving", kill], capture_output=True)
    assert died.returncode == -9, died.stderr.decode()[-2000:]
    resumed = subprocess.run([sys.executable, str(HELPER), str(killed), "4", "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = metrics(whole), metrics(killed)
    assert [line["epoch"] for line in got] == [1, 2, 3, 4]
    for a, b in zip(expected, got):
        for key in LOSS_KEYS + ("test_acc", "best_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    summary = lambda prefix: json.loads((Path(prefix) / "tiny" / "run" / "summary.json").read_text())
    assert summary(killed)["best_acc"] == summary(whole)["best_acc"] and summary(killed)["epochs_done"] == 4
    best = lambda prefix, name: load(Path(prefix) / "tiny" / "run" / name)
    assert best(killed, "best")["epoch"] == best(whole, "best")["epoch"] == 4
    for name, tensor in best(whole, "student_best")["model"].items():
        torch.testing.assert_close(best(killed, "student_best")["model"][name], tensor)


def test_a_fresh_start_refuses_to_write_over_an_earlier_run(tmp_path):
    from slkd.host.config import ConfigError

    tiny_trainer(tiny_cfg(tmp_path, epochs=1)).train()
    before = metrics(tmp_path)
    with pytest.raises(ConfigError, match=r"holds the checkpoints of an earlier run: continue it with --resume"):
        tiny_trainer(tiny_cfg(tmp_path, epochs=1)).train()
    assert metrics(tmp_path) == before  # nothing of the earlier run was touched


def test_resume_refuses_changed_settings_and_names_them(tmp_path):
    from slkd.host.config import ConfigError

    tiny_trainer(tiny_cfg(tmp_path, epochs=1)).train()
    changed = tiny_cfg(tmp_path, epochs=2, seed=3)
    changed.SLKD.AMP = "bf16"
    with pytest.raises(ConfigError, match=r"other settings: SLKD.AMP none \(now bf16\); SLKD.SEED 0 \(now 3\)\. Resume it with the command that started it \(in .*command.txt\) plus --resume"):
        tiny_trainer(changed).train(resume=True)
    assert [line["epoch"] for line in metrics(tmp_path)] == [1]
    # how the run is executed, and its length, may change
    longer = tiny_cfg(tmp_path, epochs=2)
    longer.SLKD.LOADER.WORKERS = 1
    longer.LOG.SAVE_CHECKPOINT_FREQ = 1
    tiny_trainer(longer).train(resume=True)
    assert [line["epoch"] for line in metrics(tmp_path)] == [1, 2]


def test_truncated_latest_falls_back_to_previous_and_says_so(tmp_path):
    tiny_trainer(tiny_cfg(tmp_path, epochs=2)).train()
    latest = tmp_path / "tiny" / "run" / "latest"
    latest.write_bytes(latest.read_bytes()[:100])
    trainer = tiny_trainer(tiny_cfg(tmp_path, epochs=3))
    with pytest.warns(UserWarning, match="latest is damaged"):
        trainer.train(resume=True)
    assert [line["epoch"] for line in metrics(tmp_path)] == [1, 2, 3]
    assert [line["epoch"] for line in metrics(tmp_path)].count(2) == 1


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no usable checkpoint.*Start without --resume"):
        tiny_trainer(tiny_cfg(tmp_path)).train(resume=True)


def test_non_finite_loss_stops_with_epoch_iteration_terms_and_keeps_last_good_checkpoint(tmp_path):
    trainer = tiny_trainer(tiny_cfg(tmp_path, epochs=3), nan_at=(2, 5))
    with pytest.raises(NonFiniteLoss, match=r"epoch 2 at iteration 2 of 3 \(loss_ce=[0-9.]+, loss_kd=nan\)"):
        trainer.train()
    assert load(tmp_path / "tiny" / "run" / "latest")["epoch"] == 1
    assert [line["epoch"] for line in metrics(tmp_path)] == [1]


def test_epoch_metrics_are_per_image_means_over_unequal_batches(tmp_path):
    """24 images in batches of 10, 10 and 4: every term is weighted by its batch size and the
    accuracies count hits over all images (checked against the steps' own outputs)."""
    trainer = tiny_trainer(tiny_cfg(tmp_path, epochs=1, batch=10))
    seen = []
    step = trainer.step

    def recording_step(images, target, extras, epoch):
        result = step(images, target, extras, epoch)
        seen.append((float(result.loss), {k: float(v) for k, v in result.losses.items()}, result.logits.clone(), target.clone()))
        return result

    trainer.step = recording_step
    result = trainer.run_epoch(1)
    assert [len(target) for *_, target in seen] == [10, 10, 4]
    sizes = torch.tensor([len(target) for *_, target in seen], dtype=torch.float64)
    expected_loss = float(sum(size * loss for size, (loss, *_rest) in zip(sizes, seen)) / sizes.sum())
    assert result["train_loss"] == pytest.approx(expected_loss, rel=1e-6)
    for name in ("loss_ce", "loss_kd"):
        expected = float(sum(size * losses[name] for size, (_, losses, *_rest) in zip(sizes, seen)) / sizes.sum())
        assert result[name] == pytest.approx(expected, rel=1e-6)
    logits = torch.cat([entry[2] for entry in seen])
    target = torch.cat([entry[3] for entry in seen])
    ranks = (logits > logits.gather(1, target.view(-1, 1))).sum(dim=1)  # labels' rank, 0 = top
    assert result["train_acc"] == pytest.approx(100.0 * float((ranks == 0).double().mean()))
    assert result["train_acc_top5"] == pytest.approx(100.0 * float((ranks < 5).double().mean()))
    assert result["train_images"] == 24


def test_an_empty_training_loader_is_a_clear_error(tmp_path):
    from slkd.host.config import ConfigError

    trainer = tiny_trainer(tiny_cfg(tmp_path, epochs=1))
    trainer.train_loader = []
    with pytest.raises(ConfigError, match="the training loader of epoch 1 yielded no batches"):
        trainer.train_epoch(1)


def test_the_trainer_applies_deterministic_mode_itself(tmp_path, monkeypatch):
    """Under mdistiller's tools/train.py the host builds the trainer: SLKD.DETERMINISTIC must
    not depend on slkd-train having set the backends."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # restored after the test
    before = torch.are_deterministic_algorithms_enabled()
    cfg = tiny_cfg(tmp_path, epochs=1)
    cfg.SLKD.DETERMINISTIC = True
    try:
        tiny_trainer(cfg)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before)


def test_a_run_records_the_imported_host_when_none_is_given(tmp_path, monkeypatch):
    """mdistiller's tools/train.py builds the trainer without naming its package."""
    import types

    fake = types.ModuleType("mdistiller")
    fake.__file__ = str(tmp_path / "checkout" / "mdistiller" / "__init__.py")
    monkeypatch.setitem(sys.modules, "mdistiller", fake)
    tiny_trainer(tiny_cfg(tmp_path, epochs=1)).train()
    record = json.loads((tmp_path / "tiny" / "run" / "environment.json").read_text())
    assert record["host"]["package"] == "mdistiller"
